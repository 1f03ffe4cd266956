"""Fusing the rankings of several retrievers into one.

- Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): score(d) = sum_r w_r / (k + rank_r(d)), ranks
  from 1; needs no score calibration, which is why it is the default.
- Weighted score fusion: each retriever's scores min-max normalized to [0, 1] per question, then a weighted sum;
  a document missing from a list contributes 0 from that list.

Ties are broken by the smaller key so fused rankings are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ordered(scores: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    items = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return (
        np.array([k for k, _ in items], dtype=np.int64),
        np.array([v for _, v in items], dtype=np.float64),
    )


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int] | np.ndarray], k: float = 60.0, weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fuses ranked key lists (best first) into (keys, fused scores), best first.

    Args:
        rankings: One list of keys per retriever, best first; a key appears at most once per list.
        k: The RRF constant (60 in the paper); larger k flattens the gap between top and lower ranks.
        weights: One weight per list (default 1 each).
    """
    if k < 0:
        raise ValueError(f"rrf k must be >= 0, got {k}")
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[int, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, key in enumerate(ranking, start=1):
            scores[int(key)] = scores.get(int(key), 0.0) + w / (k + rank)
    return _ordered(scores)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [0, 1]; a list whose scores are all equal maps to 1 (all equally the best)."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return s
    lo, hi = float(s.min()), float(s.max())
    return np.ones_like(s) if hi == lo else (s - lo) / (hi - lo)


def weighted_score_fusion(
    results: Sequence[tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Fuses (keys, scores) lists by a weighted sum of min-max normalized scores; returns (keys, scores), best first."""
    if len(weights) != len(results):
        raise ValueError(f"{len(weights)} weights for {len(results)} result lists")
    fused: dict[int, float] = {}
    for (keys, scores), w in zip(results, weights, strict=True):
        for key, s in zip(keys, minmax(np.asarray(scores)), strict=True):
            fused[int(key)] = fused.get(int(key), 0.0) + w * float(s)
    return _ordered(fused)
