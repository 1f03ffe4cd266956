"""Builds the report's inputs from the lake alone: the `runs` row of a run (its configuration and metrics
summary), its retrievals, answers and per-question details, and those of the runs it is compared with (the other
variants of its sweep, and its no-retrieval baseline)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.config import PipelineConfig, load_config_dict
from rag_spark.evaluate.answers import is_abstention, strip_citations, token_f1
from rag_spark.evaluate.retrieval import at_k_curve
from rag_spark.evaluate.run import lake_qrels, to_pandas
from rag_spark.evaluate.stats import paired_comparison
from rag_spark.lake import Lake
from rag_spark.report.inputs import CaseStudy, ReportInputs

if TYPE_CHECKING:
    from rag_spark.pipeline import Pipeline, StageResult

NO_RETRIEVAL = "no retrieval (LLM alone)"
CONTRAST_CASES = 3
"""Biggest wins and as many biggest losses shown between two configurations."""


def verdict(f1: float, answer: str, language: str) -> str:
    """A coarse label for a case study, from token F1 against the gold answer."""
    if not answer.strip() or is_abstention(answer, language):
        return "no answer"
    if f1 >= 0.5:
        return "correct"
    return "partial" if f1 >= 0.2 else "wrong"


@dataclass(frozen=True)
class RunRecord:
    """One evaluated run as the `runs` table holds it."""

    run_id: str
    cfg: PipelineConfig
    summary: dict[str, Any]
    sweep_id: str | None
    variant: str | None
    finished_at: Any

    @property
    def name(self) -> str:
        return self.variant or "this run"

    @property
    def mrr_key(self) -> str:
        return f"mrr@{max(self.cfg.evaluate.ks)}"


def _record(row: Any) -> RunRecord:
    cfg = load_config_dict(yaml.safe_load(row["config_yaml"]), source=f"runs table, run {row['run_id']}")
    return RunRecord(
        row["run_id"], cfg, json.loads(row["summary_json"]), row["sweep_id"], row["variant"], row["finished_at"]
    )


def load_run(lake: Lake, run_id: str) -> RunRecord:
    """The `runs` row of `run_id`.

    Raises:
        FileNotFoundError: naming the run and the lake when there is no such run.
    """
    rows = lake.read(S.RUNS).where(F.col("run_id") == run_id).collect() if lake.exists(S.RUNS) else []
    if not rows:
        raise FileNotFoundError(f"run {run_id!r} is not in the runs table of {lake.root}: run its evaluate stage")
    return _record(rows[0])


def _compared_runs(lake: Lake, main: RunRecord) -> list[RunRecord]:
    """The main run first, then the latest run of every other variant of its sweep (in run order)."""
    if main.sweep_id is None:
        return [main]
    rows = lake.read(S.RUNS).where(F.col("sweep_id") == main.sweep_id).orderBy("finished_at").collect()
    latest: dict[str, RunRecord] = {}
    for row in rows:
        rec = _record(row)
        latest[rec.name] = rec
    latest.pop(main.name, None)
    return [main, *latest.values()]


def _lineage(lake: Lake, cfg: PipelineConfig) -> pd.DataFrame:
    """The latest lineage row of each stage under the given configuration."""
    df = to_pandas(lake.read(S.LINEAGE))
    rows = []
    for stage in ("ingest", "clean", "chunk", "embed", "index", "retrieve", "generate", "evaluate"):
        mine = df[(df["stage"] == stage) & (df["config_hash"] == cfg.stage_hash(stage))]
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


def _details(lake: Lake, run_id: str) -> pd.DataFrame:
    """Per-question metrics of a run (eval_details pivoted: one row per question, one column per metric)."""
    d = to_pandas(lake.read(S.EVAL_DETAILS).where(F.col("run_id") == run_id).select("query_id", "metric", "value"))
    if d.empty:
        return pd.DataFrame(columns=["query_id"])
    return d.pivot_table(index="query_id", columns="metric", values="value", dropna=False).reset_index()


def _configuration_row(rec: RunRecord) -> dict[str, Any]:
    r, a = rec.summary.get("retrieval", {}), rec.summary.get("answers", {})
    idx = rec.summary.get("index") or {}

    def ci(section: dict[str, Any], key: str, i: int) -> float:
        v = section.get(f"{key}_ci95")
        return float(v[i]) if isinstance(v, list) and v[i] is not None else float("nan")

    def num(section: dict[str, Any], key: str) -> float:
        v = section.get(key)
        return float(v) if v is not None else float("nan")

    return {
        "variant": rec.name,
        "run_id": rec.run_id,
        "config_hash": rec.cfg.config_hash,
        "mrr": num(r, rec.mrr_key),
        "mrr_low": ci(r, rec.mrr_key, 0),
        "mrr_high": ci(r, rec.mrr_key, 1),
        "recall@1": num(r, "recall@1"),
        "recall@10": num(r, "recall@10"),
        "ndcg@10": num(r, "ndcg@10"),
        "f1": num(a, "f1"),
        "f1_low": ci(a, "f1", 0),
        "f1_high": ci(a, "f1", 1),
        "rouge_l": num(a, "rouge_l"),
        "groundedness": num(a, "groundedness"),
        "latency_ms_p50": num(r, "latency_ms_p50"),
        "latency_ms_p95": num(r, "latency_ms_p95"),
        "index_backend": idx.get("backend", rec.cfg.index.backend),
        "index_mb": idx["bytes"] / 1e6 if idx.get("bytes") is not None else float("nan"),
        "index_s": num(rec.summary.get("timings_s", {}), "index"),
    }


def top_k_overlap(ret: pd.DataFrame, reference: pd.DataFrame, k: int) -> float:
    """Mean over the reference's questions of |top-k documents ∩ the reference's top-k| / |the reference's top-k|:
    with an exact index (FAISS Flat) as the reference, the recall@k of an approximate index or another engine
    against the exact results. NaN when the reference retrieved nothing."""
    if reference.empty:
        return float("nan")

    def top(df: pd.DataFrame) -> pd.Series:
        return df[df["rank"] <= k].groupby("query_id")["doc_id"].apply(set)

    ref, got = top(reference), top(ret)
    shares = [len(docs & got.get(q, set())) / len(docs) for q, docs in ref.items() if docs]
    return float(np.mean(shares)) if shares else float("nan")


def analysis_sentences(
    summary: dict[str, Any], configurations: pd.DataFrame, comparisons: pd.DataFrame, k: int
) -> list[str]:
    """Short statements read off the numbers (no other claims): retrieval, answers, what retrieval adds, the
    sweep's best and fastest configurations, and what could not be measured."""
    out: list[str] = []
    r, a = summary.get("retrieval", {}), summary.get("answers", {})

    def pct(v: Any) -> str:
        return f"{100 * float(v):.0f}%"

    def interval(section: dict[str, Any], key: str, fmt: str = "{:.3f}") -> str:
        v = section.get(f"{key}_ci95")
        if isinstance(v, list) and None not in v:
            return f" (95% CI {fmt.format(v[0])}–{fmt.format(v[1])})"
        return ""

    mrr_key = next((key for key in r if key.startswith("mrr@") and not key.endswith("_ci95")), None)
    if mrr_key and r.get(mrr_key) is not None:
        out.append(
            f"Retrieval: {mrr_key.upper()} {r[mrr_key]:.3f}{interval(r, mrr_key)}; a relevant document is ranked "
            f"first for {pct(r.get('recall@1', 0) or 0)} of the questions and is in the top {k} for "
            f"{pct(r.get(f'hit_rate@{k}', r.get(f'recall@{k}', 0)) or 0)}."
        )
        missed = 1 - float(r.get(f"hit_rate@{k}", r.get(f"recall@{k}", 0)) or 0)
        if missed > 0:
            out.append(
                f"Limitation: for {pct(missed)} of the questions no relevant document is retrieved in the top {k}; "
                "the generator cannot answer those from the context."
            )
    if r.get("latency_ms_p50") is not None:
        out.append(
            f"Retrieval latency per question: p50 {r['latency_ms_p50']:.1f} ms, "
            f"p95 {r.get('latency_ms_p95') or 0:.1f} ms, p99 {r.get('latency_ms_p99') or 0:.1f} ms."
        )
    if a.get("f1") is not None:
        out.append(
            f"Answers: token F1 {a['f1']:.3f}{interval(a, 'f1')}, ROUGE-L {a.get('rouge_l') or 0:.3f}, exact match "
            f"{a.get('em') or 0:.3f} over {a.get('scored', 0)} questions with a gold answer."
        )
        if a.get("abstention_rate") is not None:
            out.append(
                f"The generator said it does not know for {pct(a['abstention_rate'])} of the answerable questions "
                f"and cited a chunk in {pct(a.get('citation_rate') or 0)} of its answers."
            )
        if a.get("citation_accuracy") is not None:
            out.append(
                f"Of the answers that cite, {pct(a['citation_accuracy'])} cite only retrieved chunks including a "
                "chunk of a relevant document."
            )
        if a.get("groundedness") is not None:
            out.append(
                f"Groundedness: on average {pct(a['groundedness'])} of an answer's words occur in the context it "
                "was given (a lexical measure of support)."
            )
    else:
        out.append("No answers were generated for this configuration (generate.backend none): no answer metrics.")
    if a.get("f1_no_retrieval") is not None:
        row = (
            comparisons[(comparisons["metric"] == "f1") & (comparisons["b"] == NO_RETRIEVAL)]
            if len(comparisons)
            else None
        )
        if row is not None and len(row):
            c = row.iloc[0]
            verdict_text = (
                "a difference unlikely under chance (p < 0.05)"
                if c["p"] < 0.05
                else "a difference not distinguishable from chance at the 5% level"
            )
            out.append(
                f"Without retrieval the same generator scores F1 {a['f1_no_retrieval']:.3f}"
                f"{interval(a, 'f1_no_retrieval')}: retrieval changes F1 by {c['diff']:+.3f} (95% CI {c['low']:+.3f}"
                f" to {c['high']:+.3f}, p = {c['p']:.3g}), {verdict_text}."
            )
        else:
            out.append(f"Without retrieval the same generator scores F1 {a['f1_no_retrieval']:.3f}.")
    if int(a.get("unanswerable", 0) or 0) == 0:
        out.append(
            "Every question has a relevant document or a gold answer (n = 0 unanswerable), so the rate of "
            '"I don\'t know" on unanswerable questions is not measured.'
        )
    elif a.get("idk_rate_unanswerable") is not None:
        out.append(
            f"On {a['unanswerable']} unanswerable questions the generator said it does not know "
            f"{pct(a['idk_rate_unanswerable'])} of the time."
        )
    if len(configurations) > 1:
        best = configurations.sort_values("mrr", ascending=False).iloc[0]
        fastest = configurations.sort_values("latency_ms_p50").iloc[0]
        out.append(
            f"Of {len(configurations)} configurations, {best['variant']} retrieves best (MRR {best['mrr']:.3f}, 95% "
            f"CI {best['mrr_low']:.3f}–{best['mrr_high']:.3f}); {fastest['variant']} is fastest (p50 "
            f"{fastest['latency_ms_p50']:.1f} ms)."
        )
        sweep = comparisons[comparisons["b"] != NO_RETRIEVAL] if len(comparisons) else comparisons
        significant = sweep[sweep["p"] < 0.05] if len(sweep) else sweep
        out.append(
            f"{len(significant)} of {len(sweep)} paired comparisons with the reference configuration differ at the "
            "5% level (permutation test; no correction for multiple comparisons)."
        )
    return out


def assemble_run(lake: Lake, run_id: str, read: dict[str, int] | None = None) -> ReportInputs:
    """Everything the report of `run_id` shows, read from the lake (no metrics.json, no config file).

    Args:
        lake: The lake holding the run.
        run_id: A run with a `runs` row (written by its evaluate stage).
        read: Filled with the versions of the tables read (the report stage's lineage inputs).
    """
    read = read if read is not None else {}
    for t in (S.RUNS, S.RETRIEVALS, S.ANSWERS, S.QRELS, S.QUERIES, S.EVAL_DETAILS, S.CHUNKS):
        v = lake.version(t)
        if v is not None:
            read[t.name] = v
    main = load_run(lake, run_id)
    cfg, headline = main.cfg, main.summary
    lang = cfg.generate.language
    boot: dict[str, Any] = {"samples": cfg.evaluate.bootstrap_samples, "seed": cfg.evaluate.seed}
    runs = _compared_runs(lake, main)

    queries = to_pandas(lake.read(S.QUERIES))
    qrels = lake_qrels(lake)
    relevant = qrels[qrels["score"] > 0].groupby("query_id")["doc_id"].apply(set).to_dict()
    gold = to_pandas(lake.read(S.GOLD_ANSWERS))
    hashes = {rec.run_id: (rec.cfg.stage_hash("retrieve"), rec.cfg.stage_hash("generate")) for rec in runs}
    rhs = sorted({h[0] for h in hashes.values()})
    ghs = sorted({h[1] for h in hashes.values()} | {cfg.baseline_hash})
    retrievals_all = to_pandas(lake.read(S.RETRIEVALS).where(F.col("config_hash").isin(rhs)))
    answers_all = (
        to_pandas(lake.read(S.ANSWERS).where(F.col("config_hash").isin(ghs)))
        if lake.exists(S.ANSWERS)
        else pd.DataFrame(columns=["config_hash", "query_id", "answer", "cited_chunk_ids"])
    )

    def retrievals_of(rec: RunRecord) -> pd.DataFrame:
        return retrievals_all[retrievals_all["config_hash"] == hashes[rec.run_id][0]]

    def answers_of(h: str) -> pd.DataFrame:
        return answers_all[answers_all["config_hash"] == h]

    # Curves, latencies and the configuration table, one entry per run compared.
    curves, lats = [], []
    for rec in runs:
        ret = retrievals_of(rec)
        curve = at_k_curve(qrels, ret, rec.cfg.retrieve.k)
        if len(runs) > 1:
            curve["config"] = rec.name
        curves.append(curve)
        lat = ret.groupby("query_id", as_index=False)["latency_ms"].first()
        lats.append(lat.assign(config=rec.name))
    configurations = pd.DataFrame([_configuration_row(rec) for rec in runs])
    configurations["overlap@10"] = [top_k_overlap(retrievals_of(rec), retrievals_of(main), 10) for rec in runs]
    latencies_by_config = pd.concat(lats, ignore_index=True) if lats else pd.DataFrame()

    # Paired comparisons: the run vs its no-retrieval baseline, then every other variant vs the run.
    comp_rows = []
    for name, c in headline.get("comparisons", {}).items():
        metric = name.split(":")[0]
        if c.get("diff") is None:
            continue
        comp_rows.append(
            {
                "metric": metric,
                "a": main.name,
                "b": NO_RETRIEVAL,
                "diff": c["diff"],
                "low": c["ci95"][0],
                "high": c["ci95"][1],
                "p": c["p"],
                "n": c["n"],
                "wins": c["wins"],
                "losses": c["losses"],
            }
        )
    details = {rec.run_id: _details(lake, rec.run_id) for rec in runs}
    main_details = details[main.run_id].set_index("query_id")
    for rec in runs[1:]:
        other = details[rec.run_id].set_index("query_id")
        for metric in (main.mrr_key, "recall@10", "f1"):
            if metric not in main_details.columns or metric not in other.columns:
                continue
            both = main_details[[metric]].join(other[[metric]], rsuffix="_b", how="inner")
            c = paired_comparison(both[f"{metric}_b"].to_numpy(float), both[metric].to_numpy(float), **boot)
            if c.n:
                comp_rows.append(
                    {
                        "metric": metric,
                        "a": rec.name,
                        "b": main.name,
                        "diff": c.diff,
                        "low": c.ci95[0],
                        "high": c.ci95[1],
                        "p": c.p,
                        "n": c.n,
                        "wins": c.wins,
                        "losses": c.losses,
                    }
                )
    comparisons = pd.DataFrame(comp_rows)

    # Per-question table of the main run.
    wide = main_details.reset_index()
    per_query = queries.rename(columns={"text": "question"}).merge(wide, on="query_id", how="left")
    per_query["rr"] = per_query.get(main.mrr_key, 0.0)
    for col in ("recall@10", "f1", "em"):
        if col not in per_query:
            per_query[col] = float("nan")
    per_query = per_query[["query_id", "question", "rr", "recall@10", "f1", "em"]]

    c = headline["counts"]
    quarantine = to_pandas(lake.read(S.QUARANTINE).groupBy("stage", "reason").count())
    by_method = {r["method"]: int(r["count"]) for r in lake.read(S.DUPLICATES).groupBy("method").count().collect()}
    chunk_stats = (
        lake.read(S.CHUNKS)
        .agg(F.avg("n_tokens").alias("m"), F.max("n_tokens").alias("x"), F.sum("n_tokens").alias("s"))
        .first()
    )
    data_stats = pd.DataFrame(
        [
            ("bronze", "documents in", c["documents"]),
            ("duplicates", "duplicates removed", c["duplicates"]),
            ("duplicates", "exact duplicates", by_method.get("exact", 0)),
            ("duplicates", "near duplicates", by_method.get("near", 0)),
            ("quarantine", "quarantined", c["quarantined"]),
            ("silver", "silver docs", c["kept"]),
            ("chunks", "chunks", c["chunks"]),
            ("chunks", "tokens (all chunks)", int(chunk_stats["s"] or 0) if chunk_stats else 0),
            ("chunks", "tokens per chunk (mean)", round(float(chunk_stats["m"] or 0) if chunk_stats else 0.0, 1)),
            ("chunks", "tokens per chunk (max)", int(chunk_stats["x"] or 0) if chunk_stats else 0),
            ("queries", "questions", c["queries"]),
            *(
                ("silver", f"silver docs in language {r['language'] or 'unknown'}", int(r["count"]))
                for r in lake.read(S.SILVER).groupBy("language").count().orderBy(F.desc("count")).limit(8).collect()
            ),
        ],
        columns=["table", "metric", "value"],
        dtype=object,  # counts and means in one column: shown as written (10,102 and 104.4), not all as 0.000
    )
    a = headline["answers"]
    answer_quality = pd.DataFrame(
        [(k, v) for k, v in a.items() if not k.endswith("_ci95")], columns=["metric", "value"]
    )

    # Case studies (spread by F1) and contrasts (biggest per-question differences between two configurations).
    texts = _ChunkTexts(lake)
    main_ret, main_ans = retrievals_of(main), answers_of(hashes[main.run_id][1])
    # One Spark job for every chunk a case may show (top 5 of each question), instead of one per case.
    texts.fetch(retrievals_all[retrievals_all["rank"] <= 5]["chunk_id"].astype(str).tolist())
    cases = _spread_cases(main_ret, queries, relevant, gold, main_ans, texts, lang, cfg.report.case_studies)
    contrast: list[CaseStudy] = []
    if len(runs) > 1:
        best = max(runs[1:], key=lambda rec: configurations.set_index("run_id").loc[rec.run_id, "mrr"])
        contrast = _contrast_cases(
            (best.name, retrievals_of(best), answers_of(hashes[best.run_id][1])),
            (main.name, main_ans),
            queries,
            relevant,
            gold,
            texts,
            lang,
            # F1 when both configurations answered, else the retrieval's reciprocal rank.
            metric="f1" if len(main_ans) and len(answers_of(hashes[best.run_id][1])) else "rr",
            rr=(details[best.run_id], main_details.reset_index(), best.mrr_key),
        )
    elif len(answers_of(cfg.baseline_hash)) and len(main_ans):
        contrast = _contrast_cases(
            (main.name, main_ret, main_ans),
            (NO_RETRIEVAL, answers_of(cfg.baseline_hash)),
            queries,
            relevant,
            gold,
            texts,
            lang,
            metric="f1",
        )
    return ReportInputs(
        run_id=main.run_id,
        config_hash=cfg.config_hash,
        created_at=pd.Timestamp(main.finished_at).isoformat(timespec="seconds") if main.finished_at is not None else "",
        config_yaml=cfg.to_yaml(),
        lineage=_lineage(lake, cfg),
        headline=headline,
        retrieval_at_k=pd.concat(curves, ignore_index=True),
        latencies_ms=retrievals_of(main).groupby("query_id", as_index=False)["latency_ms"].first(),
        per_query=per_query,
        data_stats=data_stats,
        quarantine_reasons=quarantine[["stage", "reason", "count"]] if len(quarantine) else quarantine,
        answer_quality=answer_quality,
        cases=cases,
        title=cfg.report.title,
        configurations=configurations if len(runs) > 1 else pd.DataFrame(),
        comparisons=comparisons,
        contrast_cases=contrast,
        analysis=analysis_sentences(headline, configurations, comparisons, cfg.retrieve.k),
        latencies_by_config=latencies_by_config if len(runs) > 1 else pd.DataFrame(),
    )


class _ChunkTexts:
    """Chunk texts fetched once per id from the current `chunks` table (a chunk of another chunking
    configuration of a sweep may be gone: it shows as empty)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.cache: dict[str, str] = {}

    def fetch(self, ids: list[str]) -> dict[str, str]:
        missing = sorted(set(ids) - set(self.cache))
        if missing:
            rows = self.lake.read(S.CHUNKS).where(F.col("chunk_id").isin(missing)).select("chunk_id", "text").collect()
            self.cache.update({r["chunk_id"]: r["text"] for r in rows})
            self.cache.update({m: self.cache.get(m, "") for m in missing})
        return self.cache


def _as_list(value: Any) -> list[str]:
    return [str(c) for c in value] if isinstance(value, list | tuple | np.ndarray) else []


def _build_case(
    qid: str,
    question: str,
    gold_answer: str,
    answer_row: Any,
    hits: pd.DataFrame,
    texts: _ChunkTexts,
    relevant: dict[str, set[str]],
    lang: str,
    label: str = "",
    other: dict[str, Any] | None = None,
) -> CaseStudy:
    prediction = str(answer_row["answer"]) if answer_row is not None else ""
    cited = _as_list(answer_row["cited_chunk_ids"]) if answer_row is not None else []
    hits = hits.sort_values("rank").head(5)
    text_of = texts.fetch(hits["chunk_id"].tolist())
    f1 = token_f1(strip_citations(prediction), gold_answer, lang) if gold_answer else 0.0
    return CaseStudy(
        query_id=qid,
        question=question,
        gold_answer=gold_answer,
        answer=prediction,
        f1=float(f1),
        verdict=verdict(float(f1), prediction, lang),
        retrieved=[
            {
                "rank": int(h.rank),
                "doc_id": h.doc_id,
                "chunk_id": h.chunk_id,
                "score": float(h.score),
                "text": text_of.get(h.chunk_id, ""),
                "relevant": h.doc_id in relevant.get(qid, set()),
            }
            for h in hits.itertuples(index=False)
        ],
        cited_chunk_ids=cited,
        label=label,
        other=other,
    )


def _spread_cases(
    retrievals: pd.DataFrame,
    queries: pd.DataFrame,
    relevant: dict[str, set[str]],
    gold: pd.DataFrame,
    answers: pd.DataFrame,
    texts: _ChunkTexts,
    lang: str,
    n: int,
) -> list[CaseStudy]:
    """A spread of questions: the best, the worst and some in between by answer F1 (or by query id)."""
    if n == 0 or not len(queries):
        return []
    gold_of = dict(zip(gold["query_id"], gold["answer"], strict=True))
    ans_of = {r["query_id"]: r for _, r in answers.iterrows()}
    scored = []
    for qid, text in zip(queries["query_id"], queries["text"], strict=True):
        g, row = gold_of.get(qid, ""), ans_of.get(qid)
        f1 = token_f1(strip_citations(str(row["answer"])), g, lang) if (g and row is not None) else 0.0
        scored.append((qid, text, f1))
    scored.sort(key=lambda t: (-t[2], t[0]))
    picks = (
        sorted({round(i * (len(scored) - 1) / max(n - 1, 1)) for i in range(n)})
        if len(scored) > n
        else range(len(scored))
    )
    out = []
    for i in picks:
        qid, text, f1 = scored[i]
        label = "best F1" if i == 0 else ("worst F1" if i == len(scored) - 1 else f"F1 rank {i + 1} of {len(scored)}")
        out.append(
            _build_case(
                qid,
                text,
                gold_of.get(qid, ""),
                ans_of.get(qid),
                retrievals[retrievals["query_id"] == qid],
                texts,
                relevant,
                lang,
                label=label,
            )
        )
    return out


def _contrast_cases(
    a: tuple[str, pd.DataFrame, pd.DataFrame],
    b: tuple[str, pd.DataFrame],
    queries: pd.DataFrame,
    relevant: dict[str, set[str]],
    gold: pd.DataFrame,
    texts: _ChunkTexts,
    lang: str,
    *,
    metric: str,
    rr: tuple[pd.DataFrame, pd.DataFrame, str] | None = None,
) -> list[CaseStudy]:
    """Biggest per-question wins and losses of configuration a over b (answer F1, or reciprocal rank)."""
    a_name, a_ret, a_ans = a
    b_name, b_ans = b
    gold_of = dict(zip(gold["query_id"], gold["answer"], strict=True))
    a_of = {r["query_id"]: r for _, r in a_ans.iterrows()}
    b_of = {r["query_id"]: r for _, r in b_ans.iterrows()}
    text_of = dict(zip(queries["query_id"], queries["text"], strict=True))
    diffs: list[tuple[float, str, float, float]] = []
    if metric == "f1":
        for qid, g in gold_of.items():
            if qid in a_of and qid in b_of and qid in text_of:
                fa = token_f1(strip_citations(str(a_of[qid]["answer"])), g, lang)
                fb = token_f1(strip_citations(str(b_of[qid]["answer"])), g, lang)
                diffs.append((fa - fb, qid, fa, fb))
    elif rr is not None:
        da, db, key = rr
        both = da.set_index("query_id")[[key]].join(db.set_index("query_id")[[key]], rsuffix="_b", how="inner")
        diffs = [
            (float(x - y), str(q), float(x), float(y))
            for q, x, y in zip(both.index, both[key], both[f"{key}_b"], strict=True)
            if q in text_of
        ]
    diffs = [d for d in diffs if d[0] != 0]
    wins = sorted([d for d in diffs if d[0] > 0], key=lambda d: (-d[0], d[1]))[:CONTRAST_CASES]
    losses = sorted([d for d in diffs if d[0] < 0], key=lambda d: (d[0], d[1]))[:CONTRAST_CASES]
    out = []
    unit = "F1" if metric == "f1" else "reciprocal rank"
    for kind, picked in (("win", wins), ("loss", losses)):
        for d, qid, va, vb in picked:
            out.append(
                _build_case(
                    qid,
                    text_of[qid],
                    gold_of.get(qid, ""),
                    a_of.get(qid),
                    a_ret[a_ret["query_id"] == qid],
                    texts,
                    relevant,
                    lang,
                    label=f"{kind} of {a_name} over {b_name}: {unit} {va:.2f} vs {vb:.2f} ({d:+.2f})",
                    other={
                        "config": b_name,
                        "answer": str(b_of[qid]["answer"]) if qid in b_of else "",
                        "f1": token_f1(strip_citations(str(b_of[qid]["answer"])), gold_of.get(qid, ""), lang)
                        if qid in b_of and gold_of.get(qid)
                        else float("nan"),
                    },
                )
            )
    return out


def assemble_inputs(p: Pipeline, res: StageResult) -> ReportInputs:
    """The report of the pipeline's configuration: its run if it evaluated in this process, else the latest run
    with the same configuration in the `runs` table."""
    lake = p.lake
    run_id = p.run_id
    if not lake.exists(S.RUNS) or not lake.read(S.RUNS).where(F.col("run_id") == run_id).take(1):
        rows = (
            lake.read(S.RUNS)
            .where(F.col("config_hash") == p.cfg.config_hash)
            .orderBy(F.col("finished_at").desc())
            .take(1)
            if lake.exists(S.RUNS)
            else []
        )
        if not rows:
            raise FileNotFoundError(
                f"no evaluated run of configuration {p.cfg.config_hash} in {lake.root}: run the evaluate stage first"
            )
        run_id = rows[0]["run_id"]
    return assemble_run(lake, run_id, res.inputs)


def report_for_run(spark: SparkSession, lake_root: str, run_id: str, path: Path) -> Path:
    """Regenerates the report of `run_id` from the Delta tables alone and writes it to `path`."""
    from rag_spark.report.html import write_report

    return write_report(assemble_run(Lake(spark, lake_root), run_id), path)
