"""Uncertainty of the headline numbers: percentile-bootstrap 95% intervals over questions, and paired comparisons.

The questions are the sampling unit: every metric of the report is a mean over questions, and a different draw of
123 FAQ questions would move it. `scipy.stats.bootstrap` (percentile method, seeded) gives the interval of one
mean; two configurations answered the *same* questions, so they are compared on per-question differences: a
paired bootstrap interval of the mean difference and a paired sign-flip permutation test
(`scipy.stats.permutation_test`, `permutation_type="samples"`) for the p-value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


def _finite(values: np.ndarray | list[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_ci(
    values: np.ndarray | list[float],
    *,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    statistic: Callable[..., Any] = _mean,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean (or another `statistic`) of `values` (NaN values are ignored).

    Args:
        values: One value per question.
        statistic: Vectorized statistic `f(x, axis=-1)`; default the mean (e.g. a percentile for latencies).
        samples: Bootstrap resamples.
        seed: Seed of the resampling (the same inputs always give the same interval).
        level: Confidence level.

    Returns:
        (low, high); (nan, nan) with no values, (v, v) with a single one (nothing to resample).
    """
    a = _finite(values)
    if a.size == 0:
        return (math.nan, math.nan)
    if a.size == 1 or np.all(a == a[0]):
        return (float(a[0]), float(a[0]))
    res = stats.bootstrap(
        (a,),
        statistic,
        n_resamples=samples,
        method="percentile",
        confidence_level=level,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


@dataclass(frozen=True)
class PairedComparison:
    """Configuration A minus configuration B on the same questions.

    Attributes:
        diff: Mean of the per-question differences A - B.
        ci95: Percentile-bootstrap interval of that mean (resampling questions, pairs kept together).
        p: Two-sided p-value of a sign-flip permutation test (H0: A and B are exchangeable per question).
        n: Questions with a finite value under both configurations.
        wins: Questions where A > B; losses where A < B.
    """

    diff: float
    ci95: tuple[float, float]
    p: float
    n: int
    wins: int
    losses: int

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {
            "diff": self.diff,
            "ci95": [self.ci95[0], self.ci95[1]],
            "p": self.p,
            "n": self.n,
            "wins": self.wins,
            "losses": self.losses,
        }


def paired_comparison(
    a: np.ndarray | list[float], b: np.ndarray | list[float], *, samples: int = 1000, seed: int = 0
) -> PairedComparison:
    """Compares two configurations on the same questions (aligned arrays; pairs with a NaN are dropped).

    Args:
        a: Per-question metric of configuration A.
        b: Per-question metric of configuration B, same order.
        samples: Bootstrap resamples and permutations.
        seed: Seed of both.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired comparison needs aligned arrays, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    n = int(d.size)
    if n == 0:
        return PairedComparison(math.nan, (math.nan, math.nan), math.nan, 0, 0, 0)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    if np.all(d == 0):
        return PairedComparison(0.0, (0.0, 0.0), 1.0, n, 0, 0)
    ci = bootstrap_ci(d, samples=samples, seed=seed)
    test = stats.permutation_test(
        (x[keep], y[keep]),
        lambda u, v, axis=-1: np.mean(u - v, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=samples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return PairedComparison(float(d.mean()), ci, float(test.pvalue), n, wins, losses)
