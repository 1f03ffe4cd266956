"""Searching a published build: every shard is searched and the top-k merged (faiss.IndexShards)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from rag_spark.config import IndexConfig
from rag_spark.index.manifest import Manifest, current_manifest, sha256_file

log = logging.getLogger(__name__)


class IndexIntegrityError(RuntimeError):
    """A shard file does not match the checksum its manifest recorded."""


@dataclass(frozen=True)
class SearchResult:
    """Top-k ids and scores per query, and the wall time of the whole search."""

    ids: np.ndarray
    scores: np.ndarray
    seconds: float


def set_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    ps = faiss.ParameterSpace()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = cfg.nprobe
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        ps.set_index_parameter(inner, "efSearch", cfg.ef_search)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ShardedIndex:
    """The published build of an index folder, loaded after verifying every shard's checksum."""

    def __init__(self, index_root: str | Path, cfg: IndexConfig) -> None:
        self.manifest, build_dir = current_manifest(Path(index_root))
        self.shards: list[faiss.Index] = []
        for shard in self.manifest.shards:
            path = build_dir / shard.file
            if sha256_file(path) != shard.sha256:
                raise IndexIntegrityError(f"{path}: checksum differs from manifest {self.manifest.build_id}")
            index = faiss.read_index(str(path))
            set_search_params(index, cfg)
            self.shards.append(index)
        self.index = faiss.IndexShards(self.manifest.dim, True, False)  # type: ignore[call-arg]
        self._gpu_resources = None
        if cfg.use_gpu != "never" and gpu_available():
            self._gpu_resources = faiss.StandardGpuResources()
            self.shards = [faiss.index_cpu_to_gpu(self._gpu_resources, 0, s) for s in self.shards]
            log.info("searching %d shards on the GPU", len(self.shards))
        elif cfg.use_gpu == "always":
            raise RuntimeError("index.use_gpu=always but FAISS sees no GPU (install faiss-gpu on a CUDA machine)")
        for s in self.shards:
            self.index.add_shard(s)

    @property
    def ntotal(self) -> int:
        return int(sum(s.ntotal for s in self.shards))

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k over all shards; ids are the chunk keys given at build time (-1 pads a short result)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        t0 = time.perf_counter()
        scores, ids = self.index.search(q, k)
        return SearchResult(ids=ids, scores=scores, seconds=time.perf_counter() - t0)


def manifest_of(index_root: str | Path) -> Manifest:
    return current_manifest(Path(index_root))[0]
