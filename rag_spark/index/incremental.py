"""Incremental index updates: a new build made from the published one plus the embeddings that changed since.

The published manifest records the `embeddings` table version it was built from, so the change set is the
difference between that version (Delta time travel) and the current one, by (chunk_key, text_hash): rows only in
the new version are added, rows only in the old one are removed (a changed chunk is both). Shards are copied into a
new build folder and updated there, so the published build stays complete until the manifest switch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from rag_spark.config import IndexConfig
from rag_spark.index.manifest import Manifest, ShardInfo, sha256_file
from rag_spark.index.shards import add_staged, write_shard

log = logging.getLogger(__name__)


def supports_remove(factory: str) -> bool:
    """HNSW graphs cannot drop vectors; Flat (IDMap2) and IVF indexes can."""
    return "HNSW" not in factory.upper()


def rebuild_reason(prev: Manifest | None, cfg: IndexConfig, model: str, dim: int) -> str | None:
    """Why the published build cannot be updated in place (None: it can)."""
    if not cfg.incremental:
        return "index.incremental is false"
    if prev is None:
        return "no published build"
    wanted = {"factory": cfg.factory, "metric": cfg.metric, "shards": cfg.shards, "model_id": model, "dim": dim}
    have = {
        "factory": prev.factory,
        "metric": prev.metric,
        "shards": len(prev.shards),
        "model_id": prev.model_id,
        "dim": prev.dim,
    }
    diff = [f"{k} {have[k]!r} -> {wanted[k]!r}" for k in wanted if have[k] != wanted[k]]
    return "; ".join(diff) or None


def update_shard(old_file: str, old_sha256: str, added_dir: str, remove_ids: np.ndarray, out_file: str) -> ShardInfo:
    """Loads a published shard (checksum verified), removes `remove_ids`, adds the staged vectors, writes it to a
    new file. Runs as a Ray task, one per shard."""
    if sha256_file(Path(old_file)) != old_sha256:
        raise RuntimeError(f"{old_file}: checksum differs from its manifest; refusing to update it")
    index = faiss.read_index(old_file)
    before = index.ntotal
    if len(remove_ids):
        removed = index.remove_ids(np.ascontiguousarray(remove_ids, dtype=np.int64))  # type: ignore[arg-type]
        if removed != len(remove_ids):
            raise RuntimeError(f"{old_file}: asked to remove {len(remove_ids)} ids, {removed} were present")
    added = add_staged(index, added_dir)
    log.info("%s: %d -> %d vectors (-%d +%d)", Path(out_file).name, before, index.ntotal, len(remove_ids), added)
    return write_shard(index, out_file)
