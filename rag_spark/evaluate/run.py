"""The evaluate stage: reads this configuration's retrievals and answers, scores them, writes `metrics` and
`eval_details`, and returns the metrics.json summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.evaluate.answers import exact_match, is_abstention, token_f1
from rag_spark.evaluate.retrieval import latency_percentiles, per_query_metrics

if TYPE_CHECKING:
    from rag_spark.pipeline import Pipeline, StageResult


def effective_qrels(qrels: pd.DataFrame, duplicates: pd.DataFrame) -> pd.DataFrame:
    """Qrels where a judged document removed as a duplicate is also judged through its kept representative."""
    if len(duplicates) == 0 or len(qrels) == 0:
        return qrels
    moved = qrels.merge(duplicates[["doc_id", "duplicate_of"]], on="doc_id")
    moved = moved.drop(columns="doc_id").rename(columns={"duplicate_of": "doc_id"})
    return pd.concat([qrels, moved[qrels.columns]]).drop_duplicates(["query_id", "doc_id"])


def _counts(p: Pipeline, inputs: dict[str, int]) -> dict[str, int]:
    lake = p.lake
    versions = {t.name: lake.version(t) for t in (S.BRONZE, S.SILVER, S.DUPLICATES, S.QUARANTINE, S.CHUNKS, S.QUERIES)}
    for name, v in versions.items():
        if v is not None:
            inputs.setdefault(name, v)
    count = {
        name: (lake.read(t, versions[name]).count() if versions[name] is not None else 0)
        for name, t in (
            ("bronze", S.BRONZE),
            ("silver", S.SILVER),
            ("duplicates", S.DUPLICATES),
            ("chunks", S.CHUNKS),
            ("queries", S.QUERIES),
        )
    }
    quarantined = lake.read(S.QUARANTINE, versions["quarantine"]).count() if versions["quarantine"] is not None else 0
    ingest_q = (
        lake.read(S.QUARANTINE, versions["quarantine"]).where("stage = 'ingest'").count()
        if versions["quarantine"] is not None
        else 0
    )
    return {
        "documents": count["bronze"] + ingest_q,
        "kept": count["silver"],
        "duplicates": count["duplicates"],
        "quarantined": quarantined,
        "chunks": count["chunks"],
        "queries": count["queries"],
    }


def _timings(p: Pipeline) -> dict[str, float]:
    """Seconds of each stage's latest run under the current configuration (from the lineage table)."""
    lineage = p.lake.read(S.LINEAGE).select("stage", "config_hash", "seconds", "finished_at").toPandas()
    out: dict[str, float] = {}
    for stage, rows in lineage.groupby("stage"):
        rows = rows[rows["config_hash"] == p.cfg.stage_hash(str(stage))]
        if len(rows):
            out[str(stage)] = round(float(rows.sort_values("finished_at")["seconds"].iloc[-1]), 3)
    return out


def _json_number(v: float | int) -> float | int | None:
    """Rounded for metrics.json; NaN (nothing to measure) becomes null, which JSON can represent."""
    if isinstance(v, float):
        return None if np.isnan(v) else round(v, 6)
    return v


def evaluate_run(p: Pipeline, res: StageResult) -> dict[str, Any]:
    """Scores retrieval and answers of the current configuration; writes metrics/eval_details."""
    cfg, lake = p.cfg, p.lake
    ecfg = cfg.evaluate
    rh, gh, eh = cfg.stage_hash("retrieve"), cfg.stage_hash("generate"), cfg.stage_hash("evaluate")
    retrievals = p._read(S.RETRIEVALS, res.inputs).where(F.col("config_hash") == rh).toPandas()
    qrels = p._read(S.QRELS, res.inputs).toPandas()
    dups = lake.read(S.DUPLICATES).select("doc_id", "duplicate_of").toPandas()
    gold = lake.read(S.GOLD_ANSWERS).toPandas()
    answers = (
        lake.read(S.ANSWERS).where(F.col("config_hash") == gh).toPandas()
        if lake.exists(S.ANSWERS)
        else pd.DataFrame(columns=["query_id", "answer", "cited_chunk_ids", "context_chunk_ids", "tokens_out"])
    )
    if lake.exists(S.ANSWERS):
        res.inputs["answers"] = lake.version(S.ANSWERS) or 0

    # Retrieval, over every judged question (a question with nothing retrieved scores 0).
    per_q = per_query_metrics(effective_qrels(qrels, dups), retrievals, ecfg.ks, ecfg.ndcg_k)
    lat = retrievals.groupby("query_id")["latency_ms"].first().to_numpy() if len(retrievals) else np.array([])
    retrieval: dict[str, float] = {
        name: float(per_q[name].mean()) if len(per_q) else 0.0 for name in per_q.columns if name != "query_id"
    }
    retrieval.update(latency_percentiles(lat))

    # Answers, over every question with a gold answer that was answered.
    lang = cfg.generate.language
    scored = gold.merge(answers[["query_id", "answer"]].rename(columns={"answer": "prediction"}), on="query_id")
    scored["f1"] = [token_f1(a, g, lang) for a, g in zip(scored["prediction"], scored["answer"], strict=True)]
    scored["em"] = [exact_match(a, g, lang) for a, g in zip(scored["prediction"], scored["answer"], strict=True)]
    scored["abstained"] = [float(is_abstention(a, lang)) for a in scored["prediction"]]
    cited = (
        answers["cited_chunk_ids"].map(lambda c: len(c) > 0).astype(float)
        if len(answers)
        else pd.Series([], dtype=float)
    )
    answer_m = {
        "f1": float(scored["f1"].mean()) if len(scored) else float("nan"),
        "em": float(scored["em"].mean()) if len(scored) else float("nan"),
        "answered": len(answers),
        "abstention_rate": float(scored["abstained"].mean()) if len(scored) else float("nan"),
        "citation_rate": float(cited.mean()) if len(cited) else float("nan"),
        "tokens_out_mean": float(answers["tokens_out"].mean()) if len(answers) else float("nan"),
    }

    counts = _counts(p, res.inputs)
    summary: dict[str, Any] = {
        "run_id": p.run_id,
        "config_hash": cfg.config_hash,
        "retrieval": {k: _json_number(v) for k, v in retrieval.items()},
        "answers": {k: _json_number(v) for k, v in answer_m.items()},
        "counts": counts,
        "timings_s": _timings(p),
    }

    metric_rows = [
        (p.run_id, eh, scope, name, None if v is None else float(v))
        for scope in ("retrieval", "answers", "counts", "timings_s")
        for name, v in summary[scope].items()
    ]
    detail = per_q.melt(id_vars="query_id", var_name="metric", value_name="value")
    if len(scored):
        detail = pd.concat(
            [detail, scored[["query_id", "f1", "em"]].melt(id_vars="query_id", var_name="metric", value_name="value")]
        )
    detail_rows = [(p.run_id, eh, str(q), str(m), float(v)) for q, m, v in detail.itertuples(index=False)]
    spark = p.spark
    meta = p._meta("evaluate", res.inputs)
    res.outputs["metrics"] = lake.merge(S.METRICS, spark.createDataFrame(metric_rows, S.METRICS.schema), meta=meta)
    res.outputs["eval_details"] = lake.merge(
        S.EVAL_DETAILS, spark.createDataFrame(detail_rows, S.EVAL_DETAILS.schema), meta=meta
    )
    summary["lineage"] = {
        "config_hashes": {
            s: cfg.stage_hash(s) for s in ("ingest", "clean", "chunk", "embed", "index", "retrieve", "generate")
        },
        "inputs": res.inputs,
    }
    return summary
