"""What the report is drawn from: one run's metrics, tables and case studies, already in memory.

The pipeline assembles a `ReportInputs` from the Delta tables and metrics.json; the report stage does no
I/O except writing its single HTML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

VERDICTS = ("correct", "partial", "wrong", "no answer")

# Metric names in `data_stats.metric` that the "document funnel" bar chart looks for, in the order drawn,
# with the label each bar gets. Missing ones are skipped; names are matched case-insensitively.
FUNNEL_METRICS: tuple[tuple[str, str], ...] = (
    ("documents in", "documents in"),
    ("duplicates removed", "duplicates removed"),
    ("quarantined", "quarantined"),
    ("silver docs", "kept (silver docs)"),
)

# Expected columns of each frame; an empty frame may lack them all.
LINEAGE_COLUMNS = ("stage", "config_hash", "inputs", "outputs", "rows", "seconds")
RETRIEVAL_AT_K_COLUMNS = ("k", "recall", "precision", "ndcg")
LATENCY_COLUMNS = ("query_id", "latency_ms")
PER_QUERY_COLUMNS = ("query_id", "question", "rr", "recall@10", "f1", "em")
DATA_STATS_COLUMNS = ("table", "metric", "value")
QUARANTINE_COLUMNS = ("stage", "reason", "count")
ANSWER_QUALITY_COLUMNS = ("metric", "value")
CONFIGURATION_COLUMNS = ("variant", "run_id", "config_hash", "mrr", "recall@10", "f1", "latency_ms_p50")
COMPARISON_COLUMNS = ("metric", "a", "b", "diff", "low", "high", "p", "n", "wins", "losses")


@dataclass(frozen=True)
class CaseStudy:
    """One question followed end to end: what was retrieved, what was cited, what was answered.

    `retrieved` holds one dict per retrieved chunk with keys rank (int), doc_id (str), chunk_id (str),
    score (float), text (str) and relevant (bool, the chunk's document is in the qrels).
    """

    query_id: str
    question: str
    gold_answer: str
    answer: str
    f1: float
    verdict: str
    retrieved: list[dict[str, Any]]
    cited_chunk_ids: list[str]
    label: str = ""
    """Why the case was picked, e.g. "best F1" or "biggest loss vs no retrieval (-0.80 F1)"."""
    other: dict[str, Any] | None = None
    """The same question under the configuration it is compared with: keys config, answer, f1 (optional)."""


@dataclass(frozen=True)
class ReportInputs:
    """Everything one report shows, for one run and one configuration.

    Attributes:
        run_id: Id of the run the numbers come from; printed under every section.
        config_hash: Hash of the configuration; printed under every section.
        created_at: ISO timestamp of the run.
        config_yaml: The run's configuration as YAML.
        lineage: stage, config_hash, inputs, outputs (e.g. "bronze@v3, silver@v2"), rows, seconds.
        headline: The metrics.json dict ("retrieval", "answers", "counts", "timings_s", ...).
        retrieval_at_k: k, recall, precision, ndcg; an optional "config" column holds several configurations.
        latencies_ms: query_id, latency_ms (retrieval latency per question).
        per_query: query_id, question, rr, recall@10, f1, em.
        data_stats: table, metric, value (see `FUNNEL_METRICS` for the names the funnel chart uses).
        quarantine_reasons: stage, reason, count.
        answer_quality: metric, value.
        cases: The case studies, in the order shown.
        title: Page title.
        configurations: One row per configuration compared (a sweep's variants, or the run and its
            no-retrieval baseline): variant, run_id, config_hash, headline metrics and their `_low`/`_high`
            interval bounds, latency_ms_p50/p95 (see `CONFIGURATION_COLUMNS`).
        comparisons: Paired comparisons, one row per (metric, a, b): diff = a - b, its 95% interval (low,
            high), permutation p, questions n, wins and losses of a.
        contrast_cases: Biggest wins and losses of one configuration against another, question by question.
        analysis: Sentences generated from the numbers above (no other claims).
        latencies_by_config: config, query_id, latency_ms of every configuration (empty: `latencies_ms` only).
    """

    run_id: str
    config_hash: str
    created_at: str
    config_yaml: str
    lineage: pd.DataFrame
    headline: dict[str, Any]
    retrieval_at_k: pd.DataFrame
    latencies_ms: pd.DataFrame
    per_query: pd.DataFrame
    data_stats: pd.DataFrame
    quarantine_reasons: pd.DataFrame
    answer_quality: pd.DataFrame
    cases: list[CaseStudy] = field(default_factory=list)
    title: str = "rag-spark report"
    configurations: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    contrast_cases: list[CaseStudy] = field(default_factory=list)
    analysis: list[str] = field(default_factory=list)
    latencies_by_config: pd.DataFrame = field(default_factory=pd.DataFrame)


def has_columns(df: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> bool:
    """True when `df` has rows and every one of `columns`."""
    return not df.empty and all(c in df.columns for c in columns)
