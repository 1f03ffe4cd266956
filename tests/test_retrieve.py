"""Retrievers: BM25 analysis and ranking, fusion math, rerankers, and one result shape for all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag_spark.config import BM25Config, GenerateConfig, IndexConfig, RerankConfig
from rag_spark.retrieve.fusion import minmax, reciprocal_rank_fusion, weighted_score_fusion
from rag_spark.retrieve.lexical import Analyzer, BM25Index, detect_language, load_or_build
from rag_spark.retrieve.rerank import yes_probability
from rag_spark.retrieve.retrievers import (
    BM25Retriever,
    ChunkTexts,
    DenseRetriever,
    HybridRetriever,
    RerankedRetriever,
    search_queries,
)

FR = [
    "Debian est un système d'exploitation libre, composé de logiciels libres.",
    "Pour installer un paquet, utilisez la commande apt install suivie du nom du paquet.",
    "Le noyau Linux a été créé par Linus Torvalds en 1991.",
    "Les installations de Debian se font depuis un CD, une clé USB ou le réseau.",
    "La tour Eiffel est un monument de Paris construit pour l'Exposition universelle de 1889.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
]
KEYS = [101, 102, 103, 104, 105, 106]


def test_french_analyzer_strips_accents_stopwords_and_stems() -> None:
    a = Analyzer("fr")
    assert a.terms("Les installations de Debian") == a.terms("installation debian")
    assert a.terms("Système") == a.terms("systeme")
    assert "les" not in a.terms("Les paquets") and a.terms("Les paquets") == a.terms("paquet")
    assert Analyzer("none").terms("Les Paquets") == ["les", "paquets"]
    with pytest.raises(ValueError, match=r"retrieve\.bm25\.language='xx'"):
        Analyzer("xx")


def test_language_detection_on_a_corpus() -> None:
    assert detect_language(FR) == "fr"
    assert detect_language(["The quick brown fox jumps over the lazy dog near the river bank."] * 5) == "en"


def test_bm25_ranks_the_exact_term_match_first() -> None:
    index = BM25Index.build(KEYS, FR, BM25Config())
    assert index.analyzer.language == "fr"
    keys, scores = index.search("Qui a créé le noyau Linux ?", 3)
    assert keys[0] == 103 and scores[0] > 0
    assert list(scores) == sorted(scores, reverse=True)
    keys, _ = index.search("Eiffel", 5)
    assert list(keys) == [105]  # only documents containing a query term are matches
    keys, _ = index.search("comment installer Debian", 2)
    assert set(keys) <= {101, 102, 104} and keys[0] in (102, 104)
    assert len(index.search("le la les", 5)[0]) == 0  # stopwords only: no match, no error
    assert len(index.search("zzzz inconnu", 5)[0]) == 0


def test_bm25_build_saved_with_checksums_and_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = BM25Config(language="fr")
    built = load_or_build(tmp_path, cfg, "chunks@v1", iter(zip(KEYS, FR, strict=True)))
    folder = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    meta = json.loads((folder / "bm25.json").read_text())
    assert meta["source"] == "chunks@v1" and meta["analyzer"]["language"] == "fr" and "chunk_keys.npy" in meta["sha256"]
    # Reused: the rows iterator is not consumed.
    again = load_or_build(tmp_path, cfg, "chunks@v1", iter(()))
    q = "paquet apt"
    assert list(again.search(q, 3)[0]) == list(built.search(q, 3)[0])
    # Another chunks version is another build.
    other = load_or_build(tmp_path, cfg, "chunks@v2", iter(zip(KEYS[:2], FR[:2], strict=True)))
    assert other.ntotal == 2
    keys = np.load(folder / "chunk_keys.npy")
    np.save(folder / "chunk_keys.npy", keys[::-1].copy())
    with pytest.raises(ValueError, match="does not match its checksum"):
        BM25Index.load(folder)


def test_reciprocal_rank_fusion_values() -> None:
    keys, scores = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    expected = {1: 1 / 61 + 1 / 62, 2: 1 / 62, 3: 1 / 63 + 1 / 61}
    assert list(keys) == [1, 3, 2]
    assert np.allclose(scores, [expected[1], expected[3], expected[2]])
    keys, scores = reciprocal_rank_fusion([[1, 2], [2, 1]], k=0, weights=[1.0, 0.0])
    assert list(keys) == [1, 2] and np.allclose(scores, [1.0, 0.5])
    keys, _ = reciprocal_rank_fusion([[5, 4], [4, 5]])  # a tie: the smaller key first
    assert list(keys) == [4, 5]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], weights=[1.0, 2.0])


def test_weighted_score_fusion_values() -> None:
    assert np.allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert np.allclose(minmax(np.array([7.0, 7.0])), [1.0, 1.0])
    keys, scores = weighted_score_fusion([([1, 2, 3], [0.9, 0.5, 0.1]), ([3, 4], [12.0, 2.0])], [0.5, 0.5])
    # 1: .5*1 ; 2: .5*.5 ; 3: .5*0 + .5*1 ; 4: .5*0
    assert list(keys) == [1, 3, 2, 4]
    assert np.allclose(scores, [0.5, 0.5, 0.25, 0.0])


def test_yes_probability() -> None:
    lp = {" Oui": np.log(0.6), "non": np.log(0.2), "peut": np.log(0.1)}
    assert yes_probability(lp, ("oui", "yes"), ("non", "no")) == pytest.approx(0.75)
    assert yes_probability({"maybe": 0.0}, ("yes",), ("no",)) == 0.5


class _Fixed:
    """A plumbing reranker: scores passages by their length (a fake used only to test the reordering logic)."""

    def scores(self, question: str, passages: list[str]) -> np.ndarray:
        return np.array([len(p) for p in passages], dtype=np.float32)


def test_every_retriever_returns_the_same_shape(encoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from test_index import build  # the index tests' real build path (train, shard, manifest, publish)

    from rag_spark.index.search import ShardedIndex

    index_root = build(tmp_path, "Flat", encoder.encode_passages(FR), np.array(KEYS, dtype=np.int64), 1)
    dense = DenseRetriever(encoder, ShardedIndex(index_root, IndexConfig()))
    bm25 = BM25Retriever(BM25Index.build(KEYS, FR, BM25Config()))
    texts = ChunkTexts(dict(zip(KEYS, FR, strict=True)))
    retrievers = [
        dense,
        bm25,
        HybridRetriever(dense, bm25, "rrf", 0.5, 60.0, 10),
        HybridRetriever(dense, bm25, "weighted", 0.3, 60.0, 10),
        RerankedRetriever(HybridRetriever(dense, bm25, "rrf", 0.5, 60.0, 10), _Fixed(), texts, top_n=3),
    ]
    for r in retrievers:
        keys, scores = r.search("Comment installer un paquet Debian ?", 4)
        assert keys.dtype == np.int64 and scores.dtype == np.float32, r.name
        assert 0 < len(keys) == len(scores) <= 4 and len(set(keys)) == len(keys), r.name
        assert set(keys) <= set(KEYS) and list(scores) == sorted(scores, reverse=True), r.name
        hits = list(search_queries([("q1", "Linus Torvalds Linux")], r, 3))
        assert [h.chunk_rank for h in hits] == list(range(len(hits))) and len({h.latency_ms for h in hits}) == 1
    # The reranked head is ordered by the reranker (longest passage first), the tail keeps hybrid order.
    hybrid = retrievers[2]
    first, _ = hybrid.search("Comment installer un paquet Debian ?", 5)
    reranked, _ = retrievers[4].search("Comment installer un paquet Debian ?", 5)
    head = sorted(first[:3], key=lambda k: -len(texts.texts[int(k)]))
    assert list(reranked[:3]) == head and list(reranked[3:]) == list(first[3:5])


def test_cross_encoder_reranker_follows_its_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A CrossEncoder built from the packaged MiniLM weights (its head is newly initialized, so only the plumbing is
    checked: the reranker returns the model's own scores, one per passage)."""
    from sentence_transformers import CrossEncoder

    from rag_spark.embed.models import resolve_encoder
    from rag_spark.retrieve.rerank import CrossEncoderReranker

    path = tmp_path / "ce"
    CrossEncoder(resolve_encoder("packaged:all-MiniLM-L6-v2"), num_labels=1).save(str(path))
    rr = CrossEncoderReranker(RerankConfig(method="cross-encoder", model=str(path)))
    pairs = ["Paris est la capitale de la France.", "Le chat dort."]
    got = rr.scores("Quelle est la capitale de la France ?", pairs)
    want = rr.model.predict([("Quelle est la capitale de la France ?", p) for p in pairs])
    assert got.shape == (2,) and np.allclose(got, np.asarray(want).reshape(-1))


@pytest.mark.slow
def test_llm_reranker_prefers_the_answering_passage() -> None:
    """The packaged Qwen (llama.cpp) judges a passage that answers the question above one that does not."""
    from rag_spark.retrieve.rerank import LLMReranker

    rr = LLMReranker(
        RerankConfig(method="llm"), GenerateConfig(backend="llamacpp", cpu_threads=2, parallel_slots=2), "en"
    )
    try:
        s = rr.scores(
            "Quelle est la capitale de la France ?",
            ["Paris est la capitale de la France.", "Le chat dort sur le canapé pendant que la pluie tombe."],
        )
    finally:
        rr.close()
    assert s.shape == (2,) and np.all((s >= 0) & (s <= 1))
    assert s[0] > s[1]


def test_evaluation_scope_never_scores_training_questions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from rag_spark.config import load_config_dict
    from rag_spark.evaluate.run import evaluation_scope
    from rag_spark.retrieve.splits import HELDOUT, TRAIN, split_ids
    from rag_spark.retrieve.train import METADATA

    qids = pd.Series([f"q{i}" for i in range(40)])
    base = load_config_dict({"embed": {"backend": "sentence-transformers", "model": "packaged:all-MiniLM-L6-v2"}})
    assert evaluation_scope(base, qids)[0] is None
    split = split_ids(qids, base.splits)
    assert 0 < len(split[TRAIN]) < 40 and not set(split[TRAIN]) & set(split[HELDOUT])
    held = load_config_dict({"evaluate": {"split": "heldout"}})
    assert evaluation_scope(held, qids)[0] == set(split[HELDOUT])
    model = tmp_path / "retriever-abc"
    model.mkdir()
    # A training record as train-retriever writes it (the model weights are not needed to decide the scope).
    (model / METADATA).write_text(json.dumps({"name": model.name, "train_query_ids": split[TRAIN][:5]}))
    ft = load_config_dict({"embed": {"backend": "sentence-transformers", "model": str(model)}})
    ids, info = evaluation_scope(ft, qids)
    assert ids == set(split[HELDOUT]) and info["split"] == HELDOUT and "fine-tuned" in info["reason"]
    with pytest.raises(ValueError, match="trained on those questions"):
        evaluation_scope(load_config_dict({**ft.model_dump(mode="json"), "evaluate": {"split": "train"}}), qids)


def test_synthetic_pool_follows_the_collections_users_ask_about() -> None:
    import pandas as pd

    from rag_spark.config import TrainConfig
    from rag_spark.retrieve.train import collection_of, synthetic_pool

    assert (collection_of("faq/apt.html"), collection_of("docs/fr/a.md"), collection_of("12")) == ("faq", "docs/fr", "")
    docs = ["faq/a.html", "faq/b.html", "faq/c.html", "wiki/1", "wiki/2", "manual/x.md"]
    chunks = pd.DataFrame({"chunk_id": [f"{d}#0" for d in reversed(docs)], "doc_id": list(reversed(docs))})
    # Gold of a train question in faq/ only; faq/c.html is gold for a held-out question.
    gold = TrainConfig(synthetic_from="gold_collections")
    pool = synthetic_pool(chunks, {"faq/a.html"}, {"faq/c.html"}, gold)
    assert list(pool["doc_id"]) == ["faq/a.html", "faq/b.html"]  # sorted, haystack and held-out gold left out
    everything = synthetic_pool(chunks, {"faq/a.html"}, {"faq/c.html"}, TrainConfig())  # default: all
    assert sorted(everything["doc_id"]) == sorted(set(docs) - {"faq/c.html"})
    with_heldout = synthetic_pool(
        chunks, {"faq/a.html"}, {"faq/c.html"}, gold.model_copy(update={"exclude_heldout_docs": False})
    )
    assert list(with_heldout["doc_id"]) == ["faq/a.html", "faq/b.html", "faq/c.html"]
    # No train question with a gold document, or ids without folders: every chunk.
    assert len(synthetic_pool(chunks, set(), set(), gold)) == len(docs)
    flat = pd.DataFrame({"chunk_id": ["1#0", "2#0", "3#0"], "doc_id": ["1", "2", "3"]})
    assert list(synthetic_pool(flat, {"1"}, {"3"}, gold)["doc_id"]) == ["1", "2"]


def test_auto_reranker_choice() -> None:
    from rag_spark.retrieve.rerank import resolve_method

    assert resolve_method(RerankConfig(method="auto", model="/my/cross-encoder"), GenerateConfig()) == "cross-encoder"
    assert resolve_method(RerankConfig(method="auto"), GenerateConfig(backend="vllm")) == "llm-likelihood"
    assert resolve_method(RerankConfig(method="auto"), GenerateConfig(backend="llamacpp")) == "llm"
    assert resolve_method(RerankConfig(method="llm"), GenerateConfig(backend="vllm")) == "llm"
    assert resolve_method(RerankConfig(), GenerateConfig()) == "none"
    # Answers switched off: the reranker still loads its own model, as `auto` would.
    none, auto = GenerateConfig(backend="none"), GenerateConfig(backend="auto")
    assert resolve_method(RerankConfig(method="auto"), none) == resolve_method(RerankConfig(method="auto"), auto)
    # An explicit llama.cpp cannot score prompt tokens: refused when the config is loaded, naming both fields.
    from rag_spark.config import ConfigError, load_config_dict

    with pytest.raises(ConfigError, match=r"rerank.method llm-likelihood needs generate.backend vllm.*'llamacpp'"):
        load_config_dict(
            {"retrieve": {"rerank": {"method": "llm-likelihood"}}, "generate": {"backend": "llamacpp"}}, source="t"
        )


def test_fit_bi_encoder_bf16_autocast_keeps_fp32_weights_and_learns() -> None:
    """The train-retriever loop (the GPU path's bf16 autocast, run here on the CPU): the weights stay fp32, the
    loss falls over epochs on a tiny set, the embeddings move; rows with unequal negatives are refused."""
    import torch
    from sentence_transformers import SentenceTransformer

    from rag_spark.config import PACKAGED_MINILM, TrainConfig
    from rag_spark.embed.models import resolve_encoder
    from rag_spark.retrieve.finetune import fit_bi_encoder, resolve_precision

    model = SentenceTransformer(resolve_encoder(PACKAGED_MINILM), device="cpu")
    rows = [
        ("comment installer un paquet", FR[1], [FR[2]]),
        ("qui a créé le noyau", FR[2], [FR[0]]),
        ("où est la tour Eiffel", FR[4], [FR[5]]),
        ("comment installer Debian", FR[3], [FR[1]]),
    ]
    before = model.encode([rows[0][0]], normalize_embeddings=True)[0]
    cfg = TrainConfig(epochs=4, batch_size=4, learning_rate=1e-4, warmup_fraction=0.0, precision="bf16")
    losses, precision = fit_bi_encoder(model, rows, cfg)
    assert precision == "bf16" and len(losses) == 4 and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    after = model.encode([rows[0][0]], normalize_embeddings=True)[0]
    assert float(before @ after) < 0.9999
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="same number of negatives"):
        fit_bi_encoder(model, [("a", "b", ["c"]), ("d", "e", [])], cfg)
