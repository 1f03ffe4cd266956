"""Assembles the report's sections and writes them as one self-contained HTML file (BokehJS inline).

The page is static HTML (title, section headings, a run/config caption under each heading) around one Bokeh
root per section. BokehJS and its CSS are inlined (`bokeh.resources.INLINE`), so the file opens offline and
loads nothing from a CDN. The Jinja template Bokeh renders with does not autoescape: every value passed to it
is escaped here first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bokeh
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import InlineStyleSheet, LayoutDOM
from bokeh.models.widgets import Div
from bokeh.resources import INLINE

from rag_spark.report.cases import case_study_divs, contrast_divs
from rag_spark.report.figures import (
    f1_histogram,
    funnel_bars,
    latency_ecdf,
    latency_histogram,
    quality_latency_scatter,
    quarantine_bars,
    reciprocal_rank_bars,
    retrieval_curve,
)
from rag_spark.report.inputs import ReportInputs
from rag_spark.report.tables import (
    CSS,
    analysis_div,
    answer_quality_table,
    comparisons_table,
    config_div,
    configurations_table,
    data_stats_table,
    esc,
    headline_div,
    html_div,
    lineage_table,
    per_query_table,
)

log = logging.getLogger(__name__)

# (slug, heading), in page order; the slug is the section's anchor and its Bokeh root's name.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("configurations", "Configurations"),
    ("retrieval", "Retrieval"),
    ("data", "Data statistics"),
    ("answers", "Answer quality"),
    ("cases", "Case studies"),
)

PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  max-width: 1200px; margin: 0 auto !important; padding: 16px 24px 48px 24px !important; height: auto !important; }
header h1 { margin: 8px 0 4px 0; font-size: 24px; }
nav a { margin-right: 14px; }
section { margin-top: 28px; }
section > h2 { border-bottom: 2px solid #4c78a8; padding-bottom: 4px; margin-bottom: 2px; font-size: 20px; }
.provenance { color: #666; font-size: 12px; margin: 2px 0 10px 0; }
.provenance code { background: #f3f3f3; padding: 0 4px; border-radius: 3px; }
footer { margin-top: 40px; color: #888; font-size: 12px; }
"""

# Extends Bokeh's file template; `roots` are this document's roots, looked up by name.
TEMPLATE = """
{% from macros import embed %}
{% block postamble %}<style>{{ page_css }}</style>{% endblock %}
{% block contents %}
<header>
<h1>{{ title_html }}</h1>
<p class="provenance">{{ provenance_html }} · created {{ created_html }}</p>
<nav>{% for s in sections %}<a href="#{{ s.slug }}">{{ s.heading }}</a>{% endfor %}</nav>
</header>
<main>
{% for s in sections %}
<section id="{{ s.slug }}">
<h2>{{ s.heading }}</h2>
<p class="provenance">{{ provenance_html }}</p>
{{ embed(roots[s.slug]) }}
</section>
{% endfor %}
</main>
<footer>Written by rag-spark with Bokeh {{ bokeh_version }}, inlined: this file loads nothing from the network.
</footer>
{% endblock %}
"""


def _subheading(text: str) -> Div:
    return html_div(f'<h3 style="margin:14px 0 4px 0;font-size:15px">{esc(text)}</h3>')


def build_sections(inputs: ReportInputs) -> dict[str, LayoutDOM]:
    """Builds one Bokeh layout per section from the inputs; nothing is written.

    Args:
        inputs: The run's metrics, tables and case studies.

    Returns:
        Section slug -> layout (named after the slug), in page order (see `SECTIONS`). Every `Div` shares one
        stylesheet created for this call, so separate calls never share models.
    """
    run_id = inputs.run_id
    children: dict[str, list[LayoutDOM]] = {
        "overview": [
            headline_div(inputs.headline, created_at=inputs.created_at),
            _subheading("Analysis"),
            analysis_div(inputs.analysis),
            config_div(inputs.config_yaml),
            _subheading("Data lineage"),
            lineage_table(inputs.lineage),
        ],
        "configurations": [
            configurations_table(inputs.configurations),
            row(
                quality_latency_scatter(inputs.configurations, run_id),
                latency_ecdf(
                    inputs.latencies_by_config if not inputs.latencies_by_config.empty else inputs.latencies_ms, run_id
                ),
                sizing_mode="stretch_width",
            ),
            _subheading("Paired comparisons (same questions)"),
            comparisons_table(inputs.comparisons),
            _subheading("Biggest wins and losses"),
            *contrast_divs(inputs.contrast_cases),
        ],
        "retrieval": [
            retrieval_curve(inputs.retrieval_at_k, run_id),
            row(
                latency_histogram(inputs.latencies_ms, run_id),
                reciprocal_rank_bars(inputs.per_query, run_id),
                sizing_mode="stretch_width",
            ),
        ],
        "data": [
            row(
                data_stats_table(inputs.data_stats), funnel_bars(inputs.data_stats, run_id), sizing_mode="stretch_width"
            ),
            quarantine_bars(inputs.quarantine_reasons, run_id),
        ],
        "answers": [
            row(
                answer_quality_table(inputs.answer_quality),
                f1_histogram(inputs.per_query, run_id),
                sizing_mode="stretch_width",
            ),
            _subheading("Per question"),
            per_query_table(inputs.per_query),
        ],
        "cases": list(case_study_divs(inputs.cases)),
    }
    sections: dict[str, LayoutDOM] = {
        slug: column(*children[slug], name=slug, sizing_mode="stretch_width") for slug, _ in SECTIONS
    }
    # Div content lives in a shadow root, which page CSS does not reach: give every Div the report's sheet.
    sheet = InlineStyleSheet(css=CSS)
    for layout in sections.values():
        for div in layout.select({"type": Div}):
            if isinstance(div, Div):
                div.stylesheets = [sheet]
    return sections


def render_report(inputs: ReportInputs) -> str:
    """Renders the report to a self-contained HTML string (BokehJS and CSS inline, no network)."""
    sections = build_sections(inputs)
    provenance = f"run <code>{esc(inputs.run_id)}</code> · config <code>{esc(inputs.config_hash)}</code>"
    return file_html(
        list(sections.values()),
        resources=INLINE,
        title=inputs.title,  # Bokeh's template escapes the <title>
        template=TEMPLATE,
        template_variables={
            "page_css": PAGE_CSS,
            "title_html": esc(inputs.title),
            "provenance_html": provenance,
            "created_html": esc(inputs.created_at),
            "sections": [{"slug": slug, "heading": esc(heading)} for slug, heading in SECTIONS],
            "bokeh_version": esc(bokeh.__version__),
        },
    )


def write_report(inputs: ReportInputs, path: Path) -> Path:
    """Writes the report as one HTML file that opens offline.

    Args:
        inputs: The run's metrics, tables and case studies.
        path: Where to write; parent folders are created.

    Returns:
        The path written.
    """
    page = render_report(inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    log.info("report for run %s written to %s (%.1f MB)", inputs.run_id, path, len(page.encode()) / 1e6)
    return path
