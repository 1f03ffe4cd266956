"""The evaluate stage: reads this configuration's retrievals and answers, scores them, writes `metrics` and
`eval_details`, and returns the metrics.json summary."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.evaluate.answers import (
    citation_correct,
    exact_match,
    groundedness,
    is_abstention,
    rouge_l,
    strip_citations,
    token_f1,
)
from rag_spark.evaluate.retrieval import latency_percentiles, per_query_metrics
from rag_spark.evaluate.stats import bootstrap_ci, paired_comparison
from rag_spark.generate.prompts import context_text_column

if TYPE_CHECKING:
    from rag_spark.config import PipelineConfig
    from rag_spark.lake import Lake
    from rag_spark.pipeline import Pipeline, StageResult

log = logging.getLogger(__name__)


def to_pandas(df: DataFrame) -> pd.DataFrame:
    """A small Spark result as pandas (pyspark's stubs type `toPandas` loosely)."""
    return cast(pd.DataFrame, df.toPandas())


def effective_qrels(qrels: pd.DataFrame, duplicates: pd.DataFrame) -> pd.DataFrame:
    """Qrels where a judged document removed as a duplicate is also judged through its kept representative."""
    if len(duplicates) == 0 or len(qrels) == 0:
        return qrels
    moved = qrels.merge(duplicates[["doc_id", "duplicate_of"]], on="doc_id")
    moved = moved.drop(columns="doc_id").rename(columns={"duplicate_of": "doc_id"})
    return pd.concat([qrels, moved[qrels.columns]]).drop_duplicates(["query_id", "doc_id"])


def lake_qrels(lake: Lake, qrels: DataFrame | None = None) -> pd.DataFrame:
    """The lake's qrels (or `qrels`, a read of them pinned to a version) as pandas, through `effective_qrels` with
    the lake's `duplicates` table."""
    qrels = lake.read(S.QRELS) if qrels is None else qrels
    return effective_qrels(to_pandas(qrels), to_pandas(lake.read(S.DUPLICATES).select("doc_id", "duplicate_of")))


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
    lineage = to_pandas(p.lake.read(S.LINEAGE).select("stage", "config_hash", "seconds", "finished_at"))
    out: dict[str, float] = {}
    for stage, rows in lineage.groupby("stage"):
        rows = rows[rows["config_hash"] == p.cfg.stage_hash(str(stage))]
        if len(rows):
            out[str(stage)] = round(float(rows.sort_values("finished_at")["seconds"].iloc[-1]), 3)
    return out


def _index_summary(p: Pipeline) -> dict[str, Any]:
    """The vector index the run searched: backend, build, chunks and bytes on disk, so a sweep over backends can
    compare their cost beside their quality. The metrics stay valid without it: an index that is gone or an
    engine that does not answer is recorded as an error, not raised."""
    from rag_spark.embed.models import model_id
    from rag_spark.index.backends import FaissIndex, open_external

    icfg = p.cfg.index
    try:
        if icfg.backend == "faiss":
            index: Any = FaissIndex(p.index_root, icfg, p.cfg.embed)
        else:
            index = open_external(icfg, model_id(p.cfg.embed.model), p.cfg.index_base)
        try:
            st = index.stats()
        finally:
            index.close()
    except Exception as err:  # any client's error (pymilvus, opensearch-py, FAISS): statistics only
        log.warning("evaluate: no index statistics for %s: %s", icfg.backend, err)
        return {"backend": icfg.backend, "error": f"{type(err).__name__}: {err}"}
    return {"backend": st.backend, "build": st.physical or st.name, "chunks": st.count, "bytes": st.bytes}


def _json_number(v: float | int) -> float | int | None:
    """Rounded for metrics.json; NaN (nothing to measure) becomes null, which JSON can represent."""
    if isinstance(v, float):
        return None if np.isnan(v) else round(v, 6)
    return v


# Answer metrics that get a 95% interval (each a mean over questions of the eval_details column of that name).
ANSWER_HEADLINE = (
    "f1",
    "em",
    "rouge_l",
    "abstention_rate",
    "citation_rate",
    "citation_accuracy",
    "groundedness",
    "idk_rate_unanswerable",
    "f1_no_retrieval",
    "em_no_retrieval",
    "rouge_l_no_retrieval",
)


def score_answers(
    gold: pd.DataFrame,
    answers: pd.DataFrame,
    contexts: pd.DataFrame,
    relevant: dict[str, set[str]],
    retrieved: dict[str, list[str]],
    language: str,
) -> pd.DataFrame:
    """Per-question answer metrics of one configuration (one row per answered question).

    Args:
        gold: query_id, answer (gold answers; questions without one get NaN for f1/em/rouge_l).
        answers: query_id, answer, cited_chunk_ids, context_chunk_ids.
        contexts: query_id, chunk_id, doc_id, text: the chunks each question's prompt held.
        relevant: query_id -> judged relevant doc ids (duplicates resolved).
        retrieved: query_id -> chunk ids of its retrievals.
        language: Answer language (normalization, abstention phrase).

    F1, EM and ROUGE-L score the answer without its `[n]` citation marks (references, not content).

    Returns:
        query_id, f1, em, rouge_l, abstained, cited, citation_correct, groundedness (NaN where undefined).
    """
    cols = ["query_id", "f1", "em", "rouge_l", "abstained", "cited", "citation_correct", "groundedness"]
    if not len(answers):
        return pd.DataFrame(columns=cols)
    gold_of = dict(zip(gold["query_id"], gold["answer"], strict=True))
    by_q = {q: g for q, g in contexts.groupby("query_id")} if len(contexts) else {}
    rows = []
    for qid, answer, cited in zip(answers["query_id"], answers["answer"], answers["cited_chunk_ids"], strict=True):
        cited_ids = [str(c) for c in (cited if cited is not None else [])]
        ctx = by_q.get(qid)
        ctx_texts = list(ctx["text"]) if ctx is not None else []
        gold_chunks = (
            {c for c, d in zip(ctx["chunk_id"], ctx["doc_id"], strict=True) if d in relevant.get(qid, set())}
            if ctx is not None
            else set()
        )
        ref = gold_of.get(qid)
        has_gold = isinstance(ref, str) and bool(ref.strip())
        in_context = list(ctx["chunk_id"]) if ctx is not None else []
        text = strip_citations(answer)
        rows.append(
            (
                qid,
                token_f1(text, str(ref), language) if has_gold else np.nan,
                exact_match(text, str(ref), language) if has_gold else np.nan,
                rouge_l(text, str(ref), language) if has_gold else np.nan,
                float(is_abstention(answer, language)),
                float(bool(cited_ids)),
                citation_correct(cited_ids, retrieved.get(qid, []) + in_context, gold_chunks),
                groundedness(answer, ctx_texts, language),
            )
        )
    return pd.DataFrame(rows, columns=cols)


def _nanmean(values: pd.Series | np.ndarray) -> float:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _contexts(p: Pipeline, gh: str) -> pd.DataFrame:
    """query_id, chunk_id, doc_id, text of every chunk in the prompts of this configuration's answers."""
    if not p.lake.exists(S.ANSWERS):
        return pd.DataFrame(columns=["query_id", "chunk_id", "doc_id", "text"])
    used = (
        p.lake.read(S.ANSWERS)
        .where(F.col("config_hash") == gh)
        .select("query_id", F.explode("context_chunk_ids").alias("chunk_id"))
    )
    chunks = p.lake.read(S.CHUNKS).select("chunk_id", "doc_id", context_text_column().alias("text"))
    return to_pandas(used.join(chunks, "chunk_id").select("query_id", "chunk_id", "doc_id", "text"))


def evaluation_scope(cfg: PipelineConfig, query_ids: pd.Series) -> tuple[set[str] | None, dict[str, Any]]:
    """The question ids to score (None: all of them) and a description for metrics.json.

    `evaluate.split` picks a side of `splits`; an encoder folder written by train-retriever narrows `all` to the
    questions it was not trained on (its `rag_spark_training.json` lists them), and refuses `train`.
    """
    from rag_spark.retrieve.splits import HELDOUT, split_ids
    from rag_spark.retrieve.train import training_metadata

    split: str = cfg.evaluate.split
    trained = training_metadata(cfg.embed.model) if cfg.embed.backend == "sentence-transformers" else None
    reason = f"evaluate.split={split}"
    if trained is not None:
        if split == "train":
            raise ValueError(
                f"evaluate.split=train with embed.model={cfg.embed.model}: that model was trained on those questions"
            )
        if split == "all":
            split, reason = HELDOUT, f"embed.model is fine-tuned ({trained['name']}): training questions excluded"
    if split == "all":
        return None, {"split": "all", "questions": int(query_ids.nunique())}
    ids = set(split_ids(query_ids, cfg.splits)[split])
    if trained is not None:
        ids -= set(trained["train_query_ids"])
    info = {"split": split, "questions": len(ids), "seed": cfg.splits.seed, "reason": reason}
    log.info("evaluate: %d questions in scope (%s)", len(ids), reason)
    return ids, info


def evaluate_run(p: Pipeline, res: StageResult) -> dict[str, Any]:
    """Scores retrieval and answers of the current configuration, with 95% bootstrap intervals over questions;
    writes `metrics`, `eval_details` and a `runs` row, and returns the metrics.json summary."""
    cfg, lake = p.cfg, p.lake
    ecfg = cfg.evaluate
    boot: dict[str, Any] = {"samples": ecfg.bootstrap_samples, "seed": ecfg.seed}
    rh, gh, eh = cfg.stage_hash("retrieve"), cfg.stage_hash("generate"), cfg.stage_hash("evaluate")
    retrievals = to_pandas(p._read(S.RETRIEVALS, res.inputs).where(F.col("config_hash") == rh))
    qrels = lake_qrels(lake, p._read(S.QRELS, res.inputs))
    queries = to_pandas(p._read(S.QUERIES, res.inputs).select("query_id"))
    gold = to_pandas(lake.read(S.GOLD_ANSWERS))
    answer_cols = ["query_id", "answer", "cited_chunk_ids", "context_chunk_ids", "tokens_out", "config_hash"]
    all_answers = (
        to_pandas(lake.read(S.ANSWERS).where(F.col("config_hash").isin(gh, cfg.baseline_hash)).select(*answer_cols))
        if lake.exists(S.ANSWERS)
        else pd.DataFrame(columns=answer_cols)
    )
    answers = all_answers[all_answers["config_hash"] == gh]
    baseline = all_answers[all_answers["config_hash"] == cfg.baseline_hash]
    if lake.exists(S.ANSWERS):
        res.inputs["answers"] = lake.version(S.ANSWERS) or 0
    scope, scope_info = evaluation_scope(cfg, queries["query_id"])
    if scope is not None:
        retrievals = retrievals[retrievals["query_id"].isin(scope)]
        qrels = qrels[qrels["query_id"].isin(scope)]
        queries = queries[queries["query_id"].isin(scope)]
        gold = gold[gold["query_id"].isin(scope)]
        answers = answers[answers["query_id"].isin(scope)]
        baseline = baseline[baseline["query_id"].isin(scope)]

    # Retrieval, over every judged question (a question with nothing retrieved scores 0).
    per_q = per_query_metrics(qrels, retrievals, ecfg.ks, ecfg.ndcg_k)
    lat = (
        retrievals.groupby("query_id", as_index=False)["latency_ms"].first()
        if len(retrievals)
        else pd.DataFrame(columns=["query_id", "latency_ms"])
    )
    retrieval: dict[str, Any] = {}
    for name in per_q.columns.drop("query_id"):
        retrieval[name] = float(per_q[name].mean()) if len(per_q) else 0.0
        retrieval[f"{name}_ci95"] = list(bootstrap_ci(per_q[name].to_numpy(), **boot))
    lat_ms = lat["latency_ms"].to_numpy(dtype=float)
    retrieval.update(latency_percentiles(lat_ms))
    for q in (50, 95, 99):
        retrieval[f"latency_ms_p{q}_ci95"] = list(
            bootstrap_ci(lat_ms, statistic=lambda x, axis=-1, q=q: np.percentile(x, q, axis=axis), **boot)
        )

    # Answers.
    lang = cfg.generate.language
    relevant = qrels[qrels["score"] > 0].groupby("query_id")["doc_id"].apply(set).to_dict()
    retrieved = retrievals.groupby("query_id")["chunk_id"].apply(list).to_dict() if len(retrievals) else {}
    contexts = _contexts(p, gh) if len(answers) else pd.DataFrame(columns=["query_id", "chunk_id", "doc_id", "text"])
    scored = score_answers(gold, answers, contexts, relevant, retrieved, lang)
    base = score_answers(gold, baseline, pd.DataFrame(), relevant, {}, lang)
    has_gold = set(gold["query_id"])
    unanswerable = set(queries["query_id"]) - set(relevant) - has_gold
    answerable = scored[scored["query_id"].isin(has_gold)]
    per_answer = scored.set_index("query_id")
    details = pd.DataFrame({"query_id": sorted(set(scored["query_id"]) | set(base["query_id"]))}).set_index("query_id")
    for col in ("f1", "em", "rouge_l", "cited", "citation_correct", "groundedness"):
        details[col] = per_answer[col] if len(per_answer) else np.nan
    # Abstention is scored on answerable questions; "I don't know" on unanswerable ones is the right answer.
    details["abstained"] = per_answer["abstained"].where(per_answer.index.isin(has_gold)) if len(per_answer) else np.nan
    details["idk_unanswerable"] = (
        per_answer["abstained"].where(per_answer.index.isin(unanswerable)) if len(per_answer) else np.nan
    )
    b = base.set_index("query_id")
    for col in ("f1", "em", "rouge_l"):
        details[f"{col}_no_retrieval"] = b[col] if len(b) else np.nan
    details["abstained_no_retrieval"] = b["abstained"] if len(b) else np.nan
    details = details.reset_index()

    metric_of = {
        "f1": "f1",
        "em": "em",
        "rouge_l": "rouge_l",
        "abstention_rate": "abstained",
        "citation_rate": "cited",
        "citation_accuracy": "citation_correct",
        "groundedness": "groundedness",
        "idk_rate_unanswerable": "idk_unanswerable",
        "f1_no_retrieval": "f1_no_retrieval",
        "em_no_retrieval": "em_no_retrieval",
        "rouge_l_no_retrieval": "rouge_l_no_retrieval",
    }
    answer_m: dict[str, Any] = {}
    for name in ANSWER_HEADLINE:
        values = details[metric_of[name]].to_numpy(dtype=float) if len(details) else np.array([])
        answer_m[name] = _nanmean(values)
        answer_m[f"{name}_ci95"] = list(bootstrap_ci(values, **boot))
    answer_m |= {
        "answered": len(answers),
        "scored": len(answerable),
        "citing": int(scored["cited"].sum()) if len(scored) else 0,
        "unanswerable": len(unanswerable),
        "answered_no_retrieval": len(baseline),
        "abstention_rate_no_retrieval": _nanmean(details["abstained_no_retrieval"]) if len(details) else float("nan"),
        "tokens_out_mean": float(answers["tokens_out"].mean()) if len(answers) else float("nan"),
    }
    comparisons: dict[str, Any] = {}
    if len(baseline) and len(answers):
        for name in ("f1", "rouge_l"):
            comparisons[f"{name}: retrieval - no_retrieval"] = paired_comparison(
                details[name].to_numpy(dtype=float), details[f"{name}_no_retrieval"].to_numpy(dtype=float), **boot
            ).as_dict()

    counts = _counts(p, res.inputs)
    summary: dict[str, Any] = {
        "run_id": p.run_id,
        "config_hash": cfg.config_hash,
        "retrieval": {k: _json_value(v) for k, v in retrieval.items()},
        "answers": {k: _json_value(v) for k, v in answer_m.items()},
        "comparisons": {k: {m: _json_value(v) for m, v in c.items()} for k, c in comparisons.items()},
        "counts": counts,
        "timings_s": _timings(p),
        "index": _index_summary(p),
        "bootstrap": {"samples": ecfg.bootstrap_samples, "seed": ecfg.seed, "level": 0.95, "unit": "question"},
        "evaluated_on": scope_info,
    }
    if "ingest" in p.results:  # how this run read each database/API source (full / from a watermark / 304)
        summary["ingest_sources"] = p.results["ingest"].info.get("sources", [])

    detail = per_q.merge(lat, on="query_id", how="outer").merge(details, on="query_id", how="outer")
    detail = detail.melt(id_vars="query_id", var_name="metric", value_name="value")
    detail_rows = [
        (p.run_id, eh, str(q), str(m), None if pd.isna(v) else float(v)) for q, m, v in detail.itertuples(index=False)
    ]
    spark = p.spark
    meta = p._meta("evaluate", res.inputs)
    res.outputs["metrics"] = lake.merge(
        S.METRICS, spark.createDataFrame(metric_rows(p.run_id, eh, summary), S.METRICS.schema), meta=meta
    )
    res.outputs["eval_details"] = lake.merge(
        S.EVAL_DETAILS, spark.createDataFrame(detail_rows, S.EVAL_DETAILS.schema), meta=meta
    )
    summary["lineage"] = {
        "config_hashes": {
            s: cfg.stage_hash(s) for s in ("ingest", "clean", "chunk", "embed", "index", "retrieve", "generate")
        }
        | {"no_retrieval_baseline": cfg.baseline_hash},
        "inputs": res.inputs,
    }
    return summary


def record_run(p: Pipeline, summary: dict[str, Any], meta: dict[str, Any]) -> int:
    """Writes this run's `runs` row (configuration + summary), what `rag-spark report --run` reads back."""
    row = [
        (
            p.run_id,
            p.cfg.config_hash,
            p.cfg.to_yaml(),
            json.dumps(summary, sort_keys=True, allow_nan=False),
            p.sweep_id,
            p.variant,
            datetime.now(UTC).replace(tzinfo=None),
        )
    ]
    return p.lake.merge(S.RUNS, p.spark.createDataFrame(row, S.RUNS.schema), meta=meta)


def _json_value(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return [_json_number(float(x)) for x in v]
    return _json_number(v)


def metric_rows(run_id: str, eh: str, summary: dict[str, Any]) -> list[tuple[str, str, str, str, float | None]]:
    """metrics.json groups as rows of the `metrics` table; an interval `x_ci95` becomes x_ci95_low / x_ci95_high,
    a comparison `{diff, ci95, p, ...}` one row per field (`<comparison>:<field>`)."""
    rows: list[tuple[str, str, str, str, float | None]] = []

    def add(scope: str, name: str, v: Any) -> None:
        if isinstance(v, list):
            add(scope, f"{name}_low", v[0])
            add(scope, f"{name}_high", v[1])
        else:
            rows.append((run_id, eh, scope, name, None if v is None else float(v)))

    for scope in ("retrieval", "answers", "counts", "timings_s"):
        for name, v in summary[scope].items():
            add(scope, name, v)
    for name in ("chunks", "bytes"):  # the index's size; its backend and build name are in summary_json
        if isinstance(summary.get("index", {}).get(name), int):
            add("index", name, summary["index"][name])
    for comp, fields in summary.get("comparisons", {}).items():
        for f, v in fields.items():
            add("comparisons", f"{comp}:{f}", v)
    return rows
