"""Seeded, clustered test vectors for index benchmarks (not uniform noise: real embeddings are clustered).

Vectors are drawn around `n_clusters` random centres with a per-cluster spread, then L2-normalized, so inner
product = cosine as in the pipeline. Queries come from the same distribution (held-out draws), which is what makes
approximate indexes (IVF, HNSW, PQ) behave as they do on real data.
"""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int = 384, n_clusters: int = 1000, spread: float = 0.5, seed: int = 0) -> np.ndarray:
    """`n` unit vectors of `dim` float32 around `n_clusters` centres; generated in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Zipf-like cluster sizes: a few big topics, many small ones.
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    weights /= weights.sum()
    out = np.empty((n, dim), dtype=np.float32)
    block = 100_000
    for start in range(0, n, block):
        m = min(block, n - start)
        labels = rng.choice(n_clusters, size=m, p=weights)
        noise = rng.standard_normal((m, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        v = centres[labels] + noise
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[start : start + m] = v
    return out


def dataset(n: int, n_queries: int, dim: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) from one distribution; queries are independent draws, not database rows."""
    both = clustered(n + n_queries, dim=dim, seed=seed)
    return both[:n], both[n:]
