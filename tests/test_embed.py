from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rag_spark.config import EmbedConfig, PipelineConfig
from rag_spark.embed.ray_embed import EmbedBatch
from rag_spark.index.shards import vectors_from_arrow

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
    out = EmbedBatch(EmbedConfig(), "r1")(_batch())
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
    cfg = PipelineConfig(embed=EmbedConfig(batch_size=2, actors=2))
    embed_with_ray(str(staged_in), str(tmp_path / "out"), cfg, "r1")
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 4
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    ids, vecs = vectors_from_arrow(table)
    order = np.argsort(ids)
    _, direct = vectors_from_arrow(EmbedBatch(EmbedConfig(), "r1")(b))
    np.testing.assert_allclose(vecs[order], direct, atol=1e-5)
