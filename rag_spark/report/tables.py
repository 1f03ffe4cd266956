"""Tables and text blocks of the report: pandas frames -> Bokeh `DataTable`s, headline numbers -> `Div`s.

Escaping rule, shared by every module of the report: a `Div` renders its `text` as HTML in the browser, so
any text that came from data (documents, questions, answers, config, metric names, ids) goes through
`esc()` before it is put into markup, and only `html_div()` turns markup into a `Div`. `DataTable` cells
are given the raw values: `StringFormatter` / `NumberFormatter` put them in the page as text nodes, never
as HTML (`HTMLTemplateFormatter` is not used anywhere).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource
from bokeh.models.widgets import CellFormatter, DataTable, Div, NumberFormatter, StringFormatter, TableColumn

ROW_HEIGHT = 25
MAX_VISIBLE_ROWS = 15

# Shown as the big numbers of the overview when present: (metrics.json group, key, label).
HEADLINE_CARDS: tuple[tuple[str, str, str], ...] = (
    ("retrieval", "mrr@10", "MRR@10"),
    ("retrieval", "recall@1", "Recall@1"),
    ("retrieval", "recall@10", "Recall@10"),
    ("retrieval", "ndcg@10", "nDCG@10"),
    ("retrieval", "latency_ms_p50", "p50 latency (ms)"),
    ("retrieval", "latency_ms_p95", "p95 latency (ms)"),
    ("retrieval", "hit_rate@10", "Hit rate@10"),
    ("answers", "f1", "Answer F1"),
    ("answers", "rouge_l", "ROUGE-L"),
    ("answers", "em", "Exact match"),
    ("answers", "f1_no_retrieval", "F1, no retrieval"),
    ("answers", "groundedness", "Groundedness"),
)

# Class names the report's stylesheet (see html.py) knows about.
CSS = """
:host { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 14px; color: #222; }
.note { color: #666; font-style: italic; margin: 4px 0; }
.ci { color: #555; font-size: 11px; }
.analysis li { margin: 3px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 10px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 110px; background: #fafafa; }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { font-size: 12px; color: #666; }
table.kv, table.chunks { border-collapse: collapse; margin: 4px 0 10px 0; }
table.kv td, table.kv th, table.chunks td, table.chunks th {
  border-bottom: 1px solid #eee; padding: 3px 8px; text-align: left; vertical-align: top; }
table.kv th, table.chunks th { background: #f3f3f3; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 8px; overflow: auto; max-height: 420px;
  font-size: 12px; white-space: pre; }
details > summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
.case { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
.case h3 { margin: 2px 0 6px 0; font-size: 16px; }
.case dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 4px 0; }
.case dt { font-weight: 600; color: #444; }
.case dd { margin: 0; white-space: pre-wrap; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff; }
.verdict.correct { background: #2e7d32; } .verdict.partial { background: #ef6c00; }
.verdict.wrong { background: #c62828; } .verdict.no-answer { background: #616161; }
tr.relevant td { background: #e8f5e9; }
tr.cited td:first-child { box-shadow: inset 3px 0 0 #1565c0; }
.mark { font-weight: 600; white-space: nowrap; }
.chunk-text { white-space: pre-wrap; max-width: 900px; font-size: 13px; }
"""


def esc(value: Any) -> str:
    """HTML-escapes any value's text (quotes included, so it is safe inside attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def format_number(value: Any) -> str:
    """Formats a metric value for display: integers with separators, floats with 3-4 significant digits."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "–"
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        if abs(v) >= 100:
            return f"{v:,.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={format_number(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(format_number(v) for v in value)
    return str(value)


def html_div(markup: str, *, name: str | None = None) -> Div:
    """Wraps already-escaped markup in a full-width `Div`.

    Args:
        markup: HTML built by this package, where every piece of data text went through `esc()`.
        name: Optional Bokeh model name.

    Returns:
        A `Div` with math rendering off (document text may contain `$$`).
    """
    return Div(text=markup, disable_math=True, sizing_mode="stretch_width", name=name)


def note(text: str) -> Div:
    """A short italic remark, e.g. why a chart is missing."""
    return html_div(f'<p class="note">{esc(text)}</p>')


def _formatter(series: pd.Series) -> tuple[CellFormatter, Any]:
    """Chooses a text-only formatter for a column and returns it with the column's values to ship."""
    if pd.api.types.is_bool_dtype(series):
        return StringFormatter(), ["yes" if v else "no" for v in series]
    if pd.api.types.is_numeric_dtype(series):
        values = pd.to_numeric(series, errors="coerce").astype(float)
        finite = values[np.isfinite(values)]
        integral = bool(len(finite)) and bool((finite == finite.round()).all())
        fmt = "0,0" if integral else "0.000"
        return NumberFormatter(format=fmt, text_align="right", nan_format="–"), values.to_numpy()
    # Mixed or text columns go through format_number so that numbers stored as objects still read well.
    return StringFormatter(), [format_number(v) for v in series]


def data_table(
    df: pd.DataFrame,
    columns: Sequence[tuple[str, str]],
    *,
    widths: Mapping[str, int] | None = None,
    max_rows: int = MAX_VISIBLE_ROWS,
    name: str | None = None,
) -> DataTable:
    """Builds a sortable, read-only `DataTable` from the given columns of a frame.

    Args:
        df: Source frame; columns it lacks are shown empty.
        columns: (column name, header title) pairs, in display order.
        widths: Optional relative widths per column name.
        max_rows: Rows visible before the table scrolls.
        name: Optional Bokeh model name.

    Returns:
        A `DataTable` whose cells are all rendered as text.
    """
    data: dict[str, Any] = {}
    table_columns = []
    for i, (col, title) in enumerate(columns):
        series = df[col] if col in df.columns else pd.Series([None] * len(df), dtype=object)
        formatter, values = _formatter(series.reset_index(drop=True))
        field = f"c{i}"  # column names like "recall@10" are not valid field references in every context
        data[field] = values
        table_columns.append(
            TableColumn(field=field, title=title, formatter=formatter, width=(widths or {}).get(col, 100))
        )
    n_visible = max(1, min(len(df), max_rows))
    return DataTable(
        source=ColumnDataSource(data=data),
        columns=table_columns,
        index_position=None,
        editable=False,
        sortable=True,
        row_height=ROW_HEIGHT,
        height=ROW_HEIGHT * (n_visible + 1) + 4,
        sizing_mode="stretch_width",
        name=name,
    )


def lineage_table(lineage: pd.DataFrame) -> DataTable | Div:
    """Stage by stage: which table versions went in, which came out, rows and time."""
    if lineage.empty:
        return note("No lineage was recorded for this run.")
    return data_table(
        lineage,
        [
            ("stage", "stage"),
            ("inputs", "inputs (table@version)"),
            ("outputs", "outputs (table@version)"),
            ("rows", "rows"),
            ("seconds", "seconds"),
            ("config_hash", "stage config"),
        ],
        widths={"stage": 80, "inputs": 200, "outputs": 200, "rows": 70, "seconds": 70, "config_hash": 110},
        name="lineage",
    )


def data_stats_table(data_stats: pd.DataFrame) -> DataTable | Div:
    """Counts and sizes per table: documents in, duplicates, quarantine, chunks, tokens per chunk, ..."""
    if data_stats.empty:
        return note("No data statistics were recorded for this run.")
    return data_table(
        data_stats,
        [("table", "table"), ("metric", "metric"), ("value", "value")],
        widths={"table": 90, "metric": 220, "value": 110},
        max_rows=25,
        name="data_stats",
    )


def answer_quality_table(answer_quality: pd.DataFrame) -> DataTable | Div:
    """Aggregate answer metrics: F1, EM, answered share, citation rate, tokens out, ..."""
    if answer_quality.empty:
        return note("No answer metrics were recorded for this run.")
    return data_table(
        answer_quality,
        [("metric", "metric"), ("value", "value")],
        widths={"metric": 220, "value": 110},
        name="answer_quality",
    )


def per_query_table(per_query: pd.DataFrame) -> DataTable | Div:
    """One row per question with its retrieval and answer scores, sortable to find the failures."""
    if per_query.empty:
        return note("No per-question results were recorded for this run.")
    return data_table(
        per_query,
        [
            ("query_id", "query"),
            ("question", "question"),
            ("rr", "reciprocal rank"),
            ("recall@10", "recall@10"),
            ("f1", "F1"),
            ("em", "EM"),
        ],
        widths={"query_id": 80, "question": 420, "rr": 90, "recall@10": 80, "f1": 60, "em": 50},
        name="per_query",
    )


def headline_div(headline: Mapping[str, Any], *, created_at: str) -> Div:
    """The overview's big numbers, then every group of metrics.json as a key/value table."""
    cards = []
    for group, key, label in HEADLINE_CARDS:
        section = headline.get(group)
        if isinstance(section, Mapping) and key in section and section[key] is not None:
            ci = section.get(f"{key}_ci95")
            interval = (
                f'<div class="ci">95% CI {esc(format_number(ci[0]))} – {esc(format_number(ci[1]))}</div>'
                if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci
                else ""
            )
            cards.append(
                f'<div class="card"><div class="v">{esc(format_number(section[key]))}</div>{interval}'
                f'<div class="k">{esc(label)}</div></div>'
            )
    parts = [f"<p>Run created at <b>{esc(created_at)}</b>.</p>"]
    if cards:
        parts.append(f'<div class="cards">{"".join(cards)}</div>')
    else:
        parts.append('<p class="note">metrics.json holds no headline metrics.</p>')
    groups = [(g, v) for g, v in headline.items() if isinstance(v, Mapping) and v]
    if groups:
        parts.append("<details><summary>All metrics (metrics.json)</summary>")
        for group, values in groups:
            rows = "".join(
                f'<tr><td>{esc(k)}</td><td class="num">{esc(format_number(v))}</td></tr>' for k, v in values.items()
            )
            parts.append(f'<table class="kv"><tr><th colspan="2">{esc(group)}</th></tr>{rows}</table>')
        parts.append("</details>")
    return html_div("".join(parts), name="headline")


def configurations_table(configurations: pd.DataFrame) -> DataTable | Div:
    """One row per configuration with its headline metrics and intervals; click a header to sort."""
    if configurations.empty:
        return note("Only one configuration was evaluated.")
    wanted = [
        ("variant", "configuration"),
        ("mrr", "MRR@10"),
        ("mrr_low", "MRR low"),
        ("mrr_high", "MRR high"),
        ("recall@1", "R@1"),
        ("recall@10", "R@10"),
        ("ndcg@10", "nDCG@10"),
        ("f1", "F1"),
        ("f1_low", "F1 low"),
        ("f1_high", "F1 high"),
        ("rouge_l", "ROUGE-L"),
        ("groundedness", "grounded"),
        ("latency_ms_p50", "p50 ms"),
        ("latency_ms_p95", "p95 ms"),
        ("overlap@10", "top-10 ∩ this run"),
        ("index_backend", "index"),
        ("index_mb", "index MB"),
        ("index_s", "index stage s"),
        ("run_id", "run"),
    ]
    return data_table(
        configurations,
        [(c, t) for c, t in wanted if c in configurations.columns],
        widths={"variant": 260, "run_id": 200},
        name="configurations",
    )


def comparisons_table(comparisons: pd.DataFrame) -> DataTable | Div:
    """Paired comparisons: a - b on the same questions, its 95% interval, the permutation p-value."""
    if comparisons.empty:
        return note("No paired comparison: a single configuration without a no-retrieval baseline.")
    return data_table(
        comparisons,
        [
            ("metric", "metric"),
            ("a", "configuration a"),
            ("b", "configuration b"),
            ("diff", "a - b"),
            ("low", "95% low"),
            ("high", "95% high"),
            ("p", "p (permutation)"),
            ("n", "questions"),
            ("wins", "a better"),
            ("losses", "b better"),
        ],
        widths={"metric": 90, "a": 220, "b": 220},
        name="comparisons",
    )


def analysis_div(sentences: Sequence[str]) -> Div:
    """The written analysis: sentences generated from the metrics (each escaped)."""
    if not sentences:
        return note("No analysis: nothing was measured.")
    items = "".join(f"<li>{esc(s)}</li>" for s in sentences)
    return html_div(f'<ul class="analysis">{items}</ul>', name="analysis")


def config_div(config_yaml: str) -> Div:
    """The run's configuration as YAML, folded by default."""
    body = esc(config_yaml) if config_yaml.strip() else "(no configuration recorded)"
    return html_div(f"<details><summary>Configuration (YAML)</summary><pre>{body}</pre></details>", name="config")
