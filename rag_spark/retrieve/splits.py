"""The fixed train / held-out split of the questions (see `SplitConfig`).

A question's side depends only on (seed, its id): sha256 of "seed:id" read as a number in [0, 1) is compared to
`eval_fraction`. Adding or removing questions never moves another one, and any tool (training, the benchmark,
the evaluate stage) recomputes the same split without a shared file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from rag_spark.config import SplitConfig

HELDOUT, TRAIN = "heldout", "train"


def split_of(query_id: str, cfg: SplitConfig) -> str:
    digest = hashlib.sha256(f"{cfg.seed}:{query_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return HELDOUT if u < cfg.eval_fraction else TRAIN


def split_ids(query_ids: Iterable[str], cfg: SplitConfig) -> dict[str, list[str]]:
    """{"train": [...], "heldout": [...]}, each sorted."""
    out: dict[str, list[str]] = {TRAIN: [], HELDOUT: []}
    for q in sorted(set(query_ids)):
        out[split_of(q, cfg)].append(q)
    return out
