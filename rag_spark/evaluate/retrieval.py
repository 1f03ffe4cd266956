"""Retrieval metrics with ir-measures (pytrec_eval underneath), per question and averaged over ALL questions
that have relevance judgments: a question with nothing retrieved scores 0 instead of being skipped."""

from __future__ import annotations

from typing import Any

import ir_measures
import numpy as np
import pandas as pd
from ir_measures import RR, P, R, Success, nDCG


def measure_names(ks: list[int], ndcg_k: int) -> dict[str, Any]:
    """Our metric names -> ir-measures measures (hit_rate@k is `Success@k`: a relevant document in the top k)."""
    names: dict[str, Any] = {f"mrr@{max(ks)}": RR @ max(ks), f"ndcg@{ndcg_k}": nDCG @ ndcg_k}
    for k in ks:
        names[f"recall@{k}"] = R @ k
        names[f"precision@{k}"] = P @ k
        names[f"hit_rate@{k}"] = Success @ k
    return names


def per_query_metrics(qrels: pd.DataFrame, run: pd.DataFrame, ks: list[int], ndcg_k: int) -> pd.DataFrame:
    """One row per judged question, one column per metric (see `measure_names`).

    Args:
        qrels: query_id, doc_id, score (relevance > 0 is relevant).
        run: query_id, doc_id, rank (1 = best).
    """
    return _calc(qrels, run, measure_names(ks, ndcg_k))


def _calc(qrels: pd.DataFrame, run: pd.DataFrame, names: dict[str, Any]) -> pd.DataFrame:
    q = qrels.rename(columns={"score": "relevance"})[["query_id", "doc_id", "relevance"]].astype(
        {"query_id": str, "doc_id": str, "relevance": int}
    )
    r = run[["query_id", "doc_id", "rank"]].copy()
    # pytrec_eval orders by score; 1/rank reproduces our ranking exactly.
    r["score"] = 1.0 / r["rank"].astype(float)
    r = r[["query_id", "doc_id", "score"]].astype({"query_id": str, "doc_id": str})
    by_measure = {str(m): name for name, m in names.items()}
    # One row per question in query-id order, whatever order the tables were read in: a bootstrap over the rows
    # (evaluate.stats) then gives the same interval on every rerun.
    rows: dict[str, dict[str, float]] = {qid: {} for qid in sorted(q["query_id"].unique())}
    if len(r) and len(q):
        for m in ir_measures.iter_calc(list(names.values()), q, r):
            if m.query_id in rows:
                rows[m.query_id][by_measure[str(m.measure)]] = float(m.value)
    df = pd.DataFrame.from_dict(rows, orient="index", columns=list(names)).fillna(0.0)
    df.index.name = "query_id"
    return df.reset_index()


def at_k_curve(qrels: pd.DataFrame, run: pd.DataFrame, max_k: int) -> pd.DataFrame:
    """Mean recall@k, precision@k and nDCG@k over all judged questions, for k = 1..max_k."""
    ks = list(range(1, max_k + 1))
    names: dict[str, Any] = {}
    for k in ks:
        names.update({f"recall@{k}": R @ k, f"precision@{k}": P @ k, f"ndcg@{k}": nDCG @ k})
    per_q = _calc(qrels, run, names)
    mean = per_q.drop(columns="query_id").mean() if len(per_q) else pd.Series(0.0, index=list(names))
    return pd.DataFrame(
        {
            "k": ks,
            "recall": [float(mean[f"recall@{k}"]) for k in ks],
            "precision": [float(mean[f"precision@{k}"]) for k in ks],
            "ndcg": [float(mean[f"ndcg@{k}"]) for k in ks],
        }
    )


def latency_percentiles(latencies_ms: np.ndarray) -> dict[str, float]:
    if len(latencies_ms) == 0:
        return {"latency_ms_p50": float("nan"), "latency_ms_p95": float("nan"), "latency_ms_p99": float("nan")}
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {"latency_ms_p50": float(p50), "latency_ms_p95": float(p95), "latency_ms_p99": float(p99)}
