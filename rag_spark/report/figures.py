"""Charts of the report: frames -> Bokeh figures, each with a hover that names the run it came from.

Every function is pure: it reads its frame and returns a new model. When there is nothing to draw it returns a
`Div` saying so instead of an empty plot. All text drawn by these figures (titles, axis factors, legend
labels, hover values) is rendered by BokehJS as text, never as HTML; hover tooltips use the `(label, @field)`
form without the `{safe}` format.
"""

from __future__ import annotations

from itertools import cycle

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, HoverTool, Range, Range1d
from bokeh.models.annotations import Label, Span, Title
from bokeh.models.renderers import DataRenderer
from bokeh.models.widgets import Div
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from rag_spark.report.inputs import FUNNEL_METRICS, has_columns
from rag_spark.report.tables import format_number, note

TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
HEIGHT = 320
BLUE, ORANGE, RED, GREEN, GREY = "#4c78a8", "#f58518", "#e45756", "#54a24b", "#79706e"

# Metric column of retrieval_at_k -> (legend label, line dash, colour when only one configuration is drawn).
_CURVES = (
    ("recall", "recall@k", "solid", BLUE),
    ("precision", "precision@k", "dashed", ORANGE),
    ("ndcg", "nDCG@k", "dotted", GREEN),
)


def _figure(
    title: str,
    *,
    x_axis_label: str | None = None,
    y_axis_label: str | None = None,
    x_range: Range | None = None,
    y_range: Range | None = None,
    height: int = HEIGHT,
) -> figure:
    # y starts at 0 unless given: counts and scores are never negative.
    p = figure(
        title=Title(text=title, text_font_size="13px"),
        tools=TOOLS,
        toolbar_location="above",
        height=height,
        sizing_mode="stretch_width",
        x_axis_label=x_axis_label,
        y_axis_label=y_axis_label,
        x_range=x_range if x_range is not None else DataRange1d(),
        y_range=y_range if y_range is not None else DataRange1d(start=0),
    )
    p.toolbar.logo = None
    return p


def _numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    if column not in df.columns:
        return np.array([], dtype=float)
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values)]


def retrieval_curve(retrieval_at_k: pd.DataFrame, run_id: str) -> figure | Div:
    """Recall@k and precision@k (and nDCG@k when present) against k, one set of lines per configuration.

    Args:
        retrieval_at_k: k, recall, precision, ndcg; an optional "config" column splits the lines.
        run_id: Shown in the hover.

    Returns:
        A line chart; clicking a legend entry hides its line.
    """
    curves = [c for c in _CURVES if c[0] in retrieval_at_k.columns]
    if not has_columns(retrieval_at_k, ["k"]) or not curves:
        return note("No retrieval@k metrics were recorded for this run.")
    df = retrieval_at_k.copy()
    df["k"] = pd.to_numeric(df["k"], errors="coerce")
    df = df.dropna(subset=["k"]).sort_values("k")
    configs = df["config"].astype(str) if "config" in df.columns else pd.Series("", index=df.index)
    names = list(dict.fromkeys(configs))
    p = _figure(
        "Retrieval quality at k",
        x_axis_label="k (documents retrieved)",
        y_axis_label="score",
        y_range=Range1d(start=0, end=1.02),
    )
    p.xaxis.ticker = sorted({int(k) for k in df["k"]})
    markers: list[DataRenderer] = []
    # One configuration: a colour per metric. Several: a colour per configuration, a dash per metric.
    for name, config_color in zip(names, cycle(Category10_10), strict=False):
        part = df[configs == name]
        for column, label, dash, metric_color in curves:
            color = config_color if len(names) > 1 else metric_color
            source = ColumnDataSource(
                data={
                    "k": part["k"].astype(int).to_numpy(),
                    "value": pd.to_numeric(part[column], errors="coerce").to_numpy(dtype=float),
                    "metric": [label] * len(part),
                    "config": [name or "this run"] * len(part),
                    "run_id": [run_id] * len(part),
                }
            )
            legend = f"{label} · {name}" if len(names) > 1 else label
            p.line("k", "value", source=source, color=color, line_dash=dash, line_width=2, legend_label=legend)
            markers.append(p.scatter("k", "value", source=source, color=color, size=7, legend_label=legend))
    p.add_tools(
        HoverTool(
            renderers=markers,
            tooltips=[
                ("metric", "@metric"),
                ("k", "@k"),
                ("value", "@value{0.000}"),
                ("config", "@config"),
                ("run", "@run_id"),
            ],
        )
    )
    p.legend.location = "bottom_right"
    p.legend.click_policy = "hide"
    return p


def latency_histogram(latencies_ms: pd.DataFrame, run_id: str, *, bins: int = 30) -> figure | Div:
    """Histogram of per-question retrieval latency with p50 and p95 marked."""
    values = _numeric(latencies_ms, "latency_ms")
    if values.size == 0:
        return note("No retrieval latencies were recorded for this run.")
    n_bins = int(max(5, min(bins, np.sqrt(values.size) * 2)))
    counts, edges = np.histogram(values, bins=n_bins)
    p50, p95 = (float(v) for v in np.percentile(values, [50, 95]))
    source = ColumnDataSource(
        data={
            "left": edges[:-1],
            "right": edges[1:],
            "count": counts,
            "run_id": [run_id] * len(counts),
        }
    )
    p = _figure(
        f"Retrieval latency per question (n={values.size}, p50 {p50:.1f} ms, p95 {p95:.1f} ms)",
        x_axis_label="latency (ms)",
        y_axis_label="questions",
    )
    bars = p.quad(
        left="left", right="right", top="count", bottom=0, source=source, color=BLUE, alpha=0.8, line_color="white"
    )
    top = float(counts.max())
    for value, label, color, y in ((p50, "p50", GREEN, top), (p95, "p95", RED, top * 0.85)):
        p.add_layout(Span(location=value, dimension="height", line_color=color, line_dash="dashed", line_width=2))
        p.add_layout(
            Label(x=value, y=y, x_offset=4, text=f"{label} {value:.1f} ms", text_color=color, text_font_size="12px")
        )
    p.add_tools(
        HoverTool(
            renderers=[bars],
            tooltips=[("latency", "@left{0.0} – @right{0.0} ms"), ("questions", "@count"), ("run", "@run_id")],
        )
    )
    return p


def reciprocal_rank_bars(per_query: pd.DataFrame, run_id: str, *, max_rank: int = 10) -> figure | Div:
    """How many questions had their first relevant document at rank 1, 2, ..., or not at all."""
    rr = _numeric(per_query, "rr")
    if rr.size == 0:
        return note("No per-question reciprocal ranks were recorded for this run.")
    ranks = np.where(rr > 0, np.rint(1.0 / np.where(rr > 0, rr, 1.0)), 0).astype(int)
    factors = [str(r) for r in range(1, max_rank + 1)]
    labels = [str(r) if 0 < r <= max_rank else ("none" if r == 0 else f">{max_rank}") for r in ranks]
    if any(lbl == f">{max_rank}" for lbl in labels):
        factors.append(f">{max_rank}")
    factors.append("none")
    counts = [labels.count(f) for f in factors]
    source = ColumnDataSource(
        data={
            "rank": factors,
            "count": counts,
            "share": [c / rr.size for c in counts],
            "run_id": [run_id] * len(factors),
        }
    )
    p = _figure(
        f"Rank of the first relevant document (n={rr.size}, MRR {rr.mean():.3f})",
        x_range=FactorRange(factors=factors),
        x_axis_label="rank of first relevant document (reciprocal rank = 1/rank)",
        y_axis_label="questions",
    )
    colors = [GREEN if f == "1" else (GREY if f == "none" else BLUE) for f in factors]
    source.data["color"] = colors
    bars = p.vbar(x="rank", top="count", width=0.8, source=source, color="color", alpha=0.85)
    p.add_tools(
        HoverTool(
            renderers=[bars],
            tooltips=[("rank", "@rank"), ("questions", "@count"), ("share", "@share{0.0%}"), ("run", "@run_id")],
        )
    )
    return p


def funnel_bars(data_stats: pd.DataFrame, run_id: str) -> figure | Div:
    """Documents in, duplicates removed, quarantined and kept, as bars (names from `FUNNEL_METRICS`)."""
    if not has_columns(data_stats, ["metric", "value"]):
        return note("No document counts were recorded for this run.")
    by_name: dict[str, float] = {}
    values_in = pd.to_numeric(data_stats["value"], errors="coerce")
    for metric, value in zip(data_stats["metric"].astype(str), values_in, strict=True):
        by_name.setdefault(metric.strip().lower(), value)  # first table that reports a metric wins
    found = [(label, by_name[m]) for m, label in FUNNEL_METRICS if m in by_name and np.isfinite(by_name[m])]
    if not found:
        return note("No document counts were recorded for this run.")
    labels = [label for label, _ in found]
    values = [float(v) for _, v in found]
    total = values[0] if found[0][0] == FUNNEL_METRICS[0][1] and values[0] > 0 else None
    palette = dict(zip((label for _, label in FUNNEL_METRICS), (BLUE, ORANGE, RED, GREEN), strict=True))
    source = ColumnDataSource(
        data={
            "stage": labels,
            "count": values,
            "shown": [format_number(v) for v in values],
            "share": [v / total if total else float("nan") for v in values],
            "color": [palette[label] for label in labels],
            "run_id": [run_id] * len(labels),
        }
    )
    p = _figure(
        "Documents through ingest and cleaning",
        x_range=FactorRange(factors=labels),
        y_axis_label="documents",
        height=280,
    )
    bars = p.vbar(x="stage", top="count", width=0.7, source=source, color="color", alpha=0.85)
    p.add_tools(
        HoverTool(
            renderers=[bars],
            tooltips=[
                ("stage", "@stage"),
                ("documents", "@shown"),
                ("of documents in", "@share{0.0%}"),
                ("run", "@run_id"),
            ],
        )
    )
    return p


def quarantine_bars(quarantine_reasons: pd.DataFrame, run_id: str) -> figure | Div:
    """Quarantined records per stage and reason, largest first."""
    if not has_columns(quarantine_reasons, ["reason", "count"]):
        return note("No records were quarantined in this run.")
    df = quarantine_reasons.copy()
    df["stage"] = df["stage"].astype(str) if "stage" in df.columns else ""
    df["reason"] = df["reason"].astype(str)
    df["count"] = pd.to_numeric(df["count"], errors="coerce").fillna(0)
    df = df.groupby(["stage", "reason"], as_index=False)["count"].sum()
    df = df[df["count"] > 0].sort_values("count", ascending=True)
    if df.empty:
        return note("No records were quarantined in this run.")
    labels = [f"{s}: {r}" if s else r for s, r in zip(df["stage"], df["reason"], strict=True)]
    # Factors must be unique; a label can only repeat if stage/reason text contains ": ".
    labels = [f"{lbl} ({i})" if labels.count(lbl) > 1 else lbl for i, lbl in enumerate(labels)]
    source = ColumnDataSource(
        data={
            "label": labels,
            "stage": df["stage"].tolist(),
            "reason": df["reason"].tolist(),
            "count": df["count"].to_numpy(dtype=float),
            "run_id": [run_id] * len(df),
        }
    )
    p = _figure(
        "Quarantined records by reason",
        y_range=FactorRange(factors=labels),
        x_range=DataRange1d(start=0),
        x_axis_label="records",
        height=90 + 28 * len(df),
    )
    bars = p.hbar(y="label", right="count", height=0.7, source=source, color=RED, alpha=0.8)
    p.add_tools(
        HoverTool(
            renderers=[bars],
            tooltips=[("stage", "@stage"), ("reason", "@reason"), ("records", "@count{0,0}"), ("run", "@run_id")],
        )
    )
    return p


def f1_histogram(per_query: pd.DataFrame, run_id: str, *, bins: int = 10) -> figure | Div:
    """Distribution of per-question answer F1 on [0, 1], with the mean marked."""
    f1 = _numeric(per_query, "f1")
    if f1.size == 0:
        return note("No per-question answer F1 was recorded for this run.")
    counts, edges = np.histogram(np.clip(f1, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    source = ColumnDataSource(
        data={
            "left": edges[:-1],
            "right": edges[1:],
            "count": counts,
            "share": counts / f1.size,
            "run_id": [run_id] * len(counts),
        }
    )
    mean = float(f1.mean())
    p = _figure(
        f"Answer F1 per question (n={f1.size}, mean {mean:.3f})",
        x_axis_label="token F1",
        y_axis_label="questions",
        x_range=Range1d(start=0, end=1),
    )
    bars = p.quad(
        left="left", right="right", top="count", bottom=0, source=source, color=ORANGE, alpha=0.8, line_color="white"
    )
    p.add_layout(Span(location=mean, dimension="height", line_color=GREY, line_dash="dashed", line_width=2))
    p.add_layout(
        Label(
            x=mean, y=float(counts.max()), x_offset=4, text=f"mean {mean:.3f}", text_color=GREY, text_font_size="12px"
        )
    )
    p.add_tools(
        HoverTool(
            renderers=[bars],
            tooltips=[
                ("F1", "@left{0.0} – @right{0.0}"),
                ("questions", "@count"),
                ("share", "@share{0.0%}"),
                ("run", "@run_id"),
            ],
        )
    )
    return p


def latency_ecdf(latencies_ms: pd.DataFrame, run_id: str) -> figure | Div:
    """Cumulative distribution of per-question retrieval latency, one line per configuration ("config" column).

    Reads: the share of questions answered within x ms; a line further left is faster everywhere.
    """
    values = _numeric(latencies_ms, "latency_ms")
    if values.size == 0:
        return note("No retrieval latencies were recorded.")
    df = latencies_ms.copy()
    df["latency_ms"] = pd.to_numeric(df["latency_ms"], errors="coerce")
    df = df.dropna(subset=["latency_ms"])
    configs = df["config"].astype(str) if "config" in df.columns else pd.Series("this run", index=df.index)
    p = _figure(
        "Retrieval latency distribution per configuration (cumulative)",
        x_axis_label="latency (ms)",
        y_axis_label="share of questions",
        y_range=Range1d(start=0, end=1.02),
    )
    lines: list[DataRenderer] = []
    for name, color in zip(list(dict.fromkeys(configs)), cycle(Category10_10), strict=False):
        lat = np.sort(df.loc[configs == name, "latency_ms"].to_numpy(dtype=float))
        source = ColumnDataSource(
            data={
                "latency": lat,
                "share": np.arange(1, lat.size + 1) / lat.size,
                "config": [name] * lat.size,
                "run_id": [run_id] * lat.size,
            }
        )
        lines.append(
            p.step("latency", "share", source=source, mode="after", color=color, line_width=2, legend_label=name)
        )
    p.add_tools(
        HoverTool(
            renderers=lines,
            tooltips=[
                ("config", "@config"),
                ("latency", "@latency{0.0} ms"),
                ("share", "@share{0.0%}"),
                ("run", "@run_id"),
            ],
        )
    )
    p.legend.location = "bottom_right"
    p.legend.click_policy = "hide"
    return p


def quality_latency_scatter(configurations: pd.DataFrame, run_id: str, *, quality: str = "mrr") -> figure | Div:
    """One point per configuration: retrieval quality (with its 95% interval) against p50 latency.

    Args:
        configurations: variant, `quality`, `<quality>_low`, `<quality>_high`, latency_ms_p50, and whatever else
            the hover shows (f1, recall@10, run_id).
        run_id: The report's run (configurations carry their own run ids).
        quality: Column drawn on the y axis.
    """
    if not has_columns(configurations, ["variant", quality, "latency_ms_p50"]):
        return note("No configurations to compare.")
    df = configurations.copy()
    y = pd.to_numeric(df[quality], errors="coerce").to_numpy(dtype=float)
    x = pd.to_numeric(df["latency_ms_p50"], errors="coerce").to_numpy(dtype=float)
    low = pd.to_numeric(df.get(f"{quality}_low", pd.Series(y)), errors="coerce").to_numpy(dtype=float)
    high = pd.to_numeric(df.get(f"{quality}_high", pd.Series(y)), errors="coerce").to_numpy(dtype=float)
    f1 = pd.to_numeric(df.get("f1", pd.Series([np.nan] * len(df))), errors="coerce").to_numpy(dtype=float)
    source = ColumnDataSource(
        data={
            "x": x,
            "y": y,
            "low": low,
            "high": high,
            "f1": f1,
            "config": df["variant"].astype(str).tolist(),
            "run_id": df["run_id"].astype(str).tolist() if "run_id" in df.columns else [run_id] * len(df),
            "color": [c for c, _ in zip(cycle(Category10_10), range(len(df)), strict=False)],
        }
    )
    p = _figure(
        f"Quality vs latency per configuration ({quality.upper()} with 95% interval)",
        x_axis_label="retrieval latency p50 (ms)",
        y_axis_label=quality,
        y_range=Range1d(start=0, end=1.02),
    )
    p.segment(x0="x", x1="x", y0="low", y1="high", source=source, color="color", line_width=2)
    dots = p.scatter("x", "y", source=source, color="color", size=11)
    p.add_tools(
        HoverTool(
            renderers=[dots],
            tooltips=[
                ("config", "@config"),
                (quality, "@y{0.000} [@low{0.000}, @high{0.000}]"),
                ("answer F1", "@f1{0.000}"),
                ("p50 latency", "@x{0.0} ms"),
                ("run", "@run_id"),
            ],
        )
    )
    return p
