"""Searching a published build: every shard is searched and the top-k merged (faiss.IndexShards)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from rag_spark.config import EmbedConfig, IndexConfig
from rag_spark.index.manifest import Manifest, current_manifest, sha256_file

log = logging.getLogger(__name__)


class IndexIntegrityError(RuntimeError):
    """A shard file, or the query encoder's model files, do not match the checksum the manifest recorded."""


def verify_encoder(manifest: Manifest, embed: EmbedConfig) -> None:
    """Refuses to search a build with an encoder other than the one its vectors came from (another model, or
    the same path with altered files): query and document vectors would not be comparable.

    Raises:
        IndexIntegrityError: naming the model, the build and both checksums.
    """
    from rag_spark.embed.models import encoder_files, encoder_sha256, model_id

    if model_id(embed.model) != manifest.model_id:
        raise IndexIntegrityError(
            f"embed.model={embed.model!r} ({model_id(embed.model)}) is not the model of index build "
            f"{manifest.build_id} ({manifest.model_id})"
        )
    if not manifest.model_sha256:
        log.warning("index build %s has no model checksum (built before it was recorded)", manifest.build_id)
        return
    got = encoder_sha256(embed)
    if got != manifest.model_sha256:
        raise IndexIntegrityError(
            f"encoder model files {encoder_files(embed)}: sha256 {got[:16]}… differs from "
            f"{manifest.model_sha256[:16]}… recorded in the manifest of index build {manifest.build_id} "
            "(model changed or corrupted; rebuild the embeddings and the index)"
        )


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

    def __init__(self, index_root: str | Path, cfg: IndexConfig, embed: EmbedConfig | None = None) -> None:
        """Loads the published build of `index_root`.

        Args:
            embed: the query encoder's config; when given, its model files must match the manifest's checksum.

        Raises:
            FileNotFoundError: no build published; IndexIntegrityError: a checksum differs.
        """
        self.manifest, build_dir = current_manifest(Path(index_root))
        if embed is not None:
            verify_encoder(self.manifest, embed)
        self.shards: list[faiss.Index] = []
        for shard in self.manifest.shards:
            path = build_dir / shard.file
            if Path(shard.file).name != shard.file:  # only files of the build folder, never a path elsewhere
                raise IndexIntegrityError(f"manifest {self.manifest.build_id}: shard file {shard.file!r} is not a name")
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
