"""Reruns through the real stages (Spark + Delta, Ray actor pool, MiniLM, FAISS): an unchanged rerun embeds
nothing and reuses the index build; a changed corpus re-embeds only what changed and updates the index in place of a
rebuild, with the same search results as a full build."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rag_spark import schema as S
from rag_spark.config import IndexConfig, load_config
from rag_spark.index.manifest import current_manifest
from rag_spark.index.search import ShardedIndex
from rag_spark.index.shards import vectors_from_arrow
from rag_spark.pipeline import Pipeline

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
STAGES = ["ingest", "clean", "chunk", "embed", "index"]


def test_incremental_embed_and_index(spark, ray_local, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    shutil.copytree(ROOT / "tests" / "data" / "tiny", data)
    cfg = load_config(ROOT / "configs" / "tiny.yaml").with_overrides(dataset=str(data), out=str(tmp_path / "out"))

    first = Pipeline(cfg, spark=spark).run(STAGES)
    n_chunks = first["embed"].info["embedded"]
    assert n_chunks > 0 and first["index"].info["mode"] == "full"

    again = Pipeline(cfg, spark=spark).run(STAGES)
    assert again["embed"].info["embedded"] == 0
    assert again["index"].info == {"build_id": first["index"].info["build_id"], "reused": True}

    notes = data / "docs" / "notes.md"
    notes.write_text(
        notes.read_text() + "\n\nUne phrase ajoutée à la fin pour changer ce document.\n", encoding="utf-8"
    )
    sorted((data / "docs" / "faq").iterdir())[1].unlink()
    p = Pipeline(cfg, spark=spark)
    third = p.run(STAGES)
    info = third["index"].info
    assert 0 < third["embed"].info["embedded"] < n_chunks  # only the changed document's chunks
    assert info["mode"] == "incremental" and info["incremental_from"] == first["index"].info["build_id"]
    assert info["added"] >= 1 and info["removed"] >= 2
    manifest, _ = current_manifest(p.index_root)
    emb = p.lake.read(S.EMBEDDINGS)
    assert manifest.ntotal == emb.count() == p.lake.read(S.CHUNKS).count()
    assert manifest.source_version == p.lake.version(S.EMBEDDINGS)

    ids, vecs = vectors_from_arrow(emb.select("chunk_key", "vector").toArrow())
    updated = ShardedIndex(p.index_root, cfg.index).search(vecs, 5)
    full_cfg = cfg.with_overrides(index=IndexConfig(incremental=False).model_dump())
    full = Pipeline(full_cfg, spark=spark).run(["index"])["index"]
    assert full.info["mode"] == "full"
    rebuilt = ShardedIndex(p.index_root, full_cfg.index).search(vecs, 5)
    np.testing.assert_array_equal(updated.ids[:, 0], ids)  # every chunk finds itself first
    np.testing.assert_array_equal(np.sort(updated.ids, axis=1), np.sort(rebuilt.ids, axis=1))
