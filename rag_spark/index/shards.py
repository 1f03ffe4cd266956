"""Building shards: one trained (or trainless) empty index, then each shard adds its vectors with their ids."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rag_spark import storage
from rag_spark.index.manifest import ShardInfo, sha256_file

log = logging.getLogger(__name__)


def metric_of(name: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if name == "ip" else faiss.METRIC_L2


def empty_index(factory: str, dim: int, metric: str) -> faiss.Index:
    """An index from a factory string that accepts explicit int64 ids (Flat/HNSW are wrapped in IDMap2)."""
    try:
        index = faiss.index_factory(dim, factory, metric_of(metric))
    except RuntimeError as err:
        raise ValueError(f"index.factory={factory!r} is not a valid FAISS factory string: {err}") from None
    if faiss.try_extract_index_ivf(index) is None:
        index = faiss.IndexIDMap2(index)
    return index


def train_index(factory: str, dim: int, metric: str, sample: np.ndarray) -> bytes:
    """Trains an empty index on `sample` (no-op for trainless types) and returns it serialized."""
    index = empty_index(factory, dim, metric)
    ivf = faiss.try_extract_index_ivf(index)
    ivfpq = faiss.downcast_index(ivf) if ivf is not None else None
    if isinstance(ivfpq, faiss.IndexIVFPQ):
        # Polysemous codes only serve Hamming-filtered search, which we do not use; training them costs minutes.
        ivfpq.do_polysemous_training = False  # type: ignore[attr-defined]
    if not index.is_trained:
        if len(sample) == 0:
            raise ValueError(f"index.factory={factory!r} needs training vectors, got none")
        log.info("training %s on %d vectors", factory, len(sample))
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return bytes(faiss.serialize_index(index))


def vectors_from_arrow(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, vectors float32 [n, dim]) from a table with chunk_key and vector (list<float>) columns."""
    ids = table.column("chunk_key").to_numpy().astype(np.int64)
    col = table.column("vector").combine_chunks()
    if len(col) == 0:
        return ids, np.zeros((0, 0), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return ids, flat.reshape(len(col), -1)


def read_shard_vectors(shard_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one shard's staged parquet files (written by Spark, partitioned by shard)."""
    # A shard no chunk hashed to has no folder. A path or URI (file:, s3:, gs:...) through pyarrow's file systems.
    if not storage.exists(shard_dir):
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return vectors_from_arrow(pq.read_table(storage.arrow_location(shard_dir), columns=["chunk_key", "vector"]))


def add_staged(index: faiss.Index, shard_dir: str) -> int:
    """Adds a staged shard folder's vectors with their chunk keys as ids; returns how many were added."""
    ids, vecs = read_shard_vectors(shard_dir)
    if len(ids):
        if vecs.shape[1] != index.d:
            raise ValueError(f"{shard_dir}: vectors have dim {vecs.shape[1]}, the index expects {index.d}")
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    return len(ids)


def write_shard(index: faiss.Index, out_file: str) -> ShardInfo:
    faiss.write_index(index, out_file)
    return ShardInfo(file=Path(out_file).name, count=int(index.ntotal), sha256=sha256_file(Path(out_file)))


def build_shard(trained: bytes, shard_dir: str, out_file: str) -> ShardInfo:
    """Adds one shard's vectors to a copy of the trained index and writes it. Runs as a Ray task."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    add_staged(index, shard_dir)
    return write_shard(index, out_file)
