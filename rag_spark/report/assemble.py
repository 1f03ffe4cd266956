"""Builds the report's inputs from the lake: this configuration's metrics, per-question details and cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.evaluate.answers import is_abstention, token_f1
from rag_spark.evaluate.retrieval import at_k_curve
from rag_spark.evaluate.run import effective_qrels
from rag_spark.report.inputs import CaseStudy, ReportInputs

if TYPE_CHECKING:
    from rag_spark.pipeline import Pipeline, StageResult


def verdict(f1: float, answer: str, language: str) -> str:
    """A coarse label for a case study, from token F1 against the gold answer."""
    if not answer.strip() or is_abstention(answer, language):
        return "no answer"
    if f1 >= 0.5:
        return "correct"
    return "partial" if f1 >= 0.2 else "wrong"


def _lineage(p: Pipeline) -> pd.DataFrame:
    """The latest lineage row of each stage under the current configuration."""
    df = p.lake.read(S.LINEAGE).toPandas()
    rows = []
    for stage in ("ingest", "clean", "chunk", "embed", "index", "retrieve", "generate", "evaluate"):
        mine = df[(df["stage"] == stage) & (df["config_hash"] == p.cfg.stage_hash(stage))]
        if not len(mine):
            continue
        last = mine.sort_values("finished_at").iloc[-1]
        fmt = lambda m: ", ".join(f"{k}@v{v}" for k, v in sorted(dict(m).items()))  # noqa: E731
        rows.append(
            {
                "stage": stage,
                "config_hash": last["config_hash"],
                "inputs": fmt(last["inputs"]),
                "outputs": fmt(last["outputs"]),
                "rows": int(last["rows"]),
                "seconds": round(float(last["seconds"]), 2),
                "run_id": last["run_id"],
            }
        )
    return pd.DataFrame(rows)


def assemble_inputs(p: Pipeline, res: StageResult) -> ReportInputs:
    """Reads what the report shows; every table version read is recorded as a report input."""
    cfg, lake = p.cfg, p.lake
    metrics_path = Path(cfg.out) / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} is missing: run the evaluate stage before the report")
    headline = json.loads(metrics_path.read_text())
    rh, gh = cfg.stage_hash("retrieve"), cfg.stage_hash("generate")
    lang = cfg.generate.language

    retrievals = p._read(S.RETRIEVALS, res.inputs).where(F.col("config_hash") == rh).toPandas()
    queries = p._read(S.QUERIES, res.inputs).toPandas()
    qrels = effective_qrels(
        p._read(S.QRELS, res.inputs).toPandas(), lake.read(S.DUPLICATES).select("doc_id", "duplicate_of").toPandas()
    )
    gold = lake.read(S.GOLD_ANSWERS).toPandas()
    answers = lake.read(S.ANSWERS).where(F.col("config_hash") == gh).toPandas()
    eval_run = headline["run_id"]
    details = lake.read(S.EVAL_DETAILS).where(F.col("run_id") == eval_run).toPandas()

    curve = at_k_curve(qrels, retrievals, cfg.retrieve.k)
    latencies = retrievals.groupby("query_id", as_index=False)["latency_ms"].first()
    wide = details.pivot_table(index="query_id", columns="metric", values="value").reset_index()
    mrr_name = f"mrr@{max(cfg.evaluate.ks)}"
    per_query = queries.rename(columns={"text": "question"}).merge(wide, on="query_id", how="left")
    per_query["rr"] = per_query.get(mrr_name, 0.0)
    for col in ("recall@10", "f1", "em"):
        if col not in per_query:
            per_query[col] = float("nan")
    per_query = per_query[["query_id", "question", "rr", "recall@10", "f1", "em"]]

    c = headline["counts"]
    quarantine = lake.read(S.QUARANTINE).groupBy("stage", "reason").count().toPandas()
    chunk_stats = lake.read(S.CHUNKS).agg(F.avg("n_tokens").alias("m"), F.max("n_tokens").alias("x")).first()
    data_stats = pd.DataFrame(
        [
            ("bronze", "documents in", c["documents"]),
            ("duplicates", "duplicates removed", c["duplicates"]),
            ("quarantine", "quarantined", c["quarantined"]),
            ("silver", "silver docs", c["kept"]),
            ("chunks", "chunks", c["chunks"]),
            ("chunks", "tokens per chunk (mean)", round(float(chunk_stats["m"] or 0) if chunk_stats else 0.0, 1)),
            ("chunks", "tokens per chunk (max)", int(chunk_stats["x"] or 0) if chunk_stats else 0),
            ("queries", "questions", c["queries"]),
        ],
        columns=["table", "metric", "value"],
    )
    a = headline["answers"]
    answer_quality = pd.DataFrame(
        [(k, v) for k, v in a.items()],
        columns=["metric", "value"],
    )
    cases = _cases(retrievals, queries, qrels, gold, answers, p, lang)
    return ReportInputs(
        run_id=eval_run,
        config_hash=headline["config_hash"],
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        config_yaml=cfg.to_yaml(),
        lineage=_lineage(p),
        headline=headline,
        retrieval_at_k=curve,
        latencies_ms=latencies,
        per_query=per_query,
        data_stats=data_stats,
        quarantine_reasons=quarantine[["stage", "reason", "count"]] if len(quarantine) else quarantine,
        answer_quality=answer_quality,
        cases=cases,
        title=cfg.report.title,
    )


def _cases(
    retrievals: pd.DataFrame,
    queries: pd.DataFrame,
    qrels: pd.DataFrame,
    gold: pd.DataFrame,
    answers: pd.DataFrame,
    p: Pipeline,
    lang: str,
) -> list[CaseStudy]:
    """A spread of questions: the best, the worst and some in between by answer F1 (or by query id)."""
    n = p.cfg.report.case_studies
    if n == 0 or not len(queries):
        return []
    merged = queries.merge(gold, on="query_id", how="left").merge(
        answers[["query_id", "answer", "cited_chunk_ids"]].rename(columns={"answer": "prediction"}),
        on="query_id",
        how="left",
    )
    merged["prediction"] = merged["prediction"].fillna("")
    merged["answer"] = merged["answer"].fillna("")
    merged["f1"] = [
        token_f1(a, g, lang) if g else 0.0 for a, g in zip(merged["prediction"], merged["answer"], strict=True)
    ]
    merged = merged.sort_values(["f1", "query_id"], ascending=[False, True]).reset_index(drop=True)
    picks = (
        sorted({round(i * (len(merged) - 1) / max(n - 1, 1)) for i in range(n)})
        if len(merged) > n
        else list(range(len(merged)))
    )
    chosen = merged.iloc[picks]
    chunk_ids = retrievals[retrievals["query_id"].isin(chosen["query_id"])]["chunk_id"].unique().tolist()
    texts = (
        p.lake.read(S.CHUNKS).where(F.col("chunk_id").isin(chunk_ids)).select("chunk_id", "text").toPandas()
        if chunk_ids
        else pd.DataFrame(columns=["chunk_id", "text"])
    )
    text_of = dict(zip(texts["chunk_id"], texts["text"], strict=True))
    relevant = qrels.groupby("query_id")["doc_id"].apply(set).to_dict()
    out = []
    for row in chosen.itertuples(index=False):
        hits = retrievals[retrievals["query_id"] == row.query_id].sort_values("rank")
        # An array from Delta, or NaN where the question has no answer (left merge).
        cited = row.cited_chunk_ids if isinstance(row.cited_chunk_ids, list | tuple | np.ndarray) else []
        out.append(
            CaseStudy(
                query_id=row.query_id,
                question=row.text,
                gold_answer=row.answer,
                answer=row.prediction,
                f1=float(row.f1),
                verdict=verdict(float(row.f1), row.prediction, lang),
                retrieved=[
                    {
                        "rank": int(h.rank),
                        "doc_id": h.doc_id,
                        "chunk_id": h.chunk_id,
                        "score": float(h.score),
                        "text": text_of.get(h.chunk_id, ""),
                        "relevant": h.doc_id in relevant.get(row.query_id, set()),
                    }
                    for h in hits.head(5).itertuples(index=False)
                ],
                cited_chunk_ids=[str(c) for c in cited],
            )
        )
    return out
