"""The report stage: one self-contained HTML file, every section present, data text escaped, empty inputs OK.

The inputs are synthetic on purpose: the report is the unit under test, and its input is an in-memory
`ReportInputs`. Payloads like `<script>alert(1)</script>` are planted in every place where document, question or
answer text reaches the page.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
from bokeh.document import Document
from bokeh.model import Model
from bokeh.models import HoverTool
from bokeh.models.annotations import Label, Legend, Span
from bokeh.models.renderers import GlyphRenderer
from bokeh.models.widgets import DataTable, Div
from bokeh.plotting import figure

from rag_spark.report import CaseStudy, ReportInputs, build_sections, render_report, write_report
from rag_spark.report.cases import case_study_markup
from rag_spark.report.figures import funnel_bars, latency_histogram, retrieval_curve
from rag_spark.report.html import SECTIONS

RUN_ID = "run-20250107T101500-7f3a"
CONFIG_HASH = "c0ffee12ab34cd56"
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
HEADINGS = ["Overview", "Configurations", "Retrieval", "Data statistics", "Answer quality", "Case studies"]
OTHER_RUN = "run-20250107T111500-9b1c"


# ---------------------------------------------------------------- synthetic inputs


def _case(i: int, *, question: str, chunk_text: str, verdict: str, f1: float) -> CaseStudy:
    retrieved: list[dict[str, Any]] = [
        {
            "rank": r,
            "doc_id": f"faq-{(i * 7 + r) % 23:02d}",
            "chunk_id": f"faq-{(i * 7 + r) % 23:02d}#{r % 3}",
            "score": round(0.92 - 0.06 * r, 3),
            "text": chunk_text if r == 1 else f"Pour mettre à jour la liste des paquets, lancez apt update ({r}).",
            "relevant": r in (1, 3),
        }
        for r in range(1, 6)
    ]
    return CaseStudy(
        query_id=f"q{i:03d}",
        question=question,
        gold_answer="Lancez « apt update » puis « apt upgrade ».",
        answer=f"Il faut exécuter apt update puis apt upgrade [{retrieved[0]['chunk_id']}]."
        if verdict != "no answer"
        else "",
        f1=f1,
        verdict=verdict,
        retrieved=retrieved,
        cited_chunk_ids=[retrieved[0]["chunk_id"], "faq-99#0"],  # one cited chunk was never retrieved
    )


def make_inputs(**overrides: Any) -> ReportInputs:
    """A small run: 40 questions, 10 values of k, a few quarantined records, three case studies."""
    rng = np.random.default_rng(7)
    n = 40
    ranks = rng.choice([1, 1, 1, 2, 3, 5, 8, 0], size=n)
    per_query = pd.DataFrame(
        {
            "query_id": [f"q{i:03d}" for i in range(n)],
            "question": [f"Comment installer le paquet numéro {i} sous Debian ?" for i in range(n)],
            "rr": np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0),
            "recall@10": (ranks > 0).astype(float),
            "f1": rng.beta(2, 2, size=n).round(3),
            "em": rng.integers(0, 2, size=n),
        }
    )
    per_query.loc[1, "question"] = SCRIPT + " Comment purger un paquet ?"
    per_query.loc[2, "question"] = IMG
    ks = np.arange(1, 11)
    retrieval_at_k = pd.DataFrame(
        {"k": ks, "recall": 1 - 0.5 * np.exp(-ks / 3), "precision": 0.55 / np.sqrt(ks), "ndcg": 0.5 + 0.03 * ks}
    )
    cases = [
        _case(
            1,
            question=SCRIPT + " Comment purger un paquet ?",
            chunk_text=IMG + " dpkg --purge supprime aussi la configuration.",
            verdict="partial",
            f1=0.5,
        ),
        _case(
            4,
            question="Où sont les journaux d'apt ?",
            chunk_text="Les journaux sont dans /var/log/apt/ & $$x$$.",
            verdict="correct",
            f1=1.0,
        ),
        _case(
            9,
            question="Qu'est-ce que Debian stable ?",
            chunk_text="La version stable " * 80,
            verdict="no answer",
            f1=0.0,
        ),
    ]
    inputs = ReportInputs(
        run_id=RUN_ID,
        config_hash=CONFIG_HASH,
        created_at="2025-01-07T10:15:00+00:00",
        config_yaml=f"dataset: data/debian_faq\nchunk:\n  size: 256  # {SCRIPT}\nretrieve:\n  k: 10\n",
        lineage=pd.DataFrame(
            {
                "stage": ["ingest", "clean", "chunk", "embed"],
                "config_hash": ["a1", "b2", "c3", "d4"],
                "inputs": ["data/debian_faq", "bronze@v3", "silver@v2", "chunks@v2"],
                "outputs": ["bronze@v3, quarantine@v1", "silver@v2, duplicates@v1", "chunks@v2", "embeddings@v2"],
                "rows": [120, 108, 812, 812],
                "seconds": [3.2, 5.75, 2.1, 41.0],
            }
        ),
        headline={
            "retrieval": {
                "mrr@10": 0.612,
                "recall@1": 0.48,
                "recall@10": 0.88,
                "latency_ms_p50": 11.8,
                "latency_ms_p95": 37.5,
            },
            "answers": {"f1": 0.54, "em": 0.31, "f1_ci": {"low": 0.47, "high": 0.6}},
            "counts": {"documents": 120, "chunks": 812, "questions": n},
            "timings_s": {"ingest": 3.2, "embed": 41.0},
            "run_id": RUN_ID,
            "config_hash": CONFIG_HASH,
        },
        retrieval_at_k=retrieval_at_k,
        latencies_ms=pd.DataFrame({"query_id": per_query["query_id"], "latency_ms": rng.gamma(3.0, 4.0, size=n)}),
        per_query=per_query,
        data_stats=pd.DataFrame(
            {
                "table": ["bronze", "silver", "quarantine", "silver", "chunks", "chunks"],
                "metric": [
                    "documents in",
                    "duplicates removed",
                    "quarantined",
                    "silver docs",
                    "chunks",
                    "tokens per chunk mean",
                ],
                "value": [120, 7, 5, 108, 812, 231.4],
            }
        ),
        quarantine_reasons=pd.DataFrame(
            {"stage": ["ingest", "ingest", "clean"], "reason": ["empty text", IMG, "too short"], "count": [2, 1, 2]}
        ),
        answer_quality=pd.DataFrame(
            {
                "metric": ["f1", "em", "answered share", "citation rate", "mean tokens out"],
                "value": [0.54, 0.31, 0.95, 0.82, 64.2],
            }
        ),
        cases=cases,
        title="rag-spark report — Debian FAQ",
        configurations=pd.DataFrame(
            {
                "variant": ["retrieve.k=10", "retrieve.k=5," + SCRIPT],
                "run_id": [RUN_ID, OTHER_RUN],
                "config_hash": [CONFIG_HASH, "feedbeef00000000"],
                "mrr": [0.612, 0.598],
                "mrr_low": [0.52, 0.50],
                "mrr_high": [0.70, 0.69],
                "recall@10": [0.88, 0.80],
                "f1": [0.54, 0.51],
                "latency_ms_p50": [11.8, 9.1],
            }
        ),
        comparisons=pd.DataFrame(
            {
                "metric": ["f1", "mrr@10"],
                "a": ["retrieve.k=10", "retrieve.k=5," + SCRIPT],
                "b": ["no retrieval (LLM alone)", "retrieve.k=10"],
                "diff": [0.21, -0.014],
                "low": [0.15, -0.03],
                "high": [0.27, 0.0],
                "p": [0.001, 0.09],
                "n": [n, n],
                "wins": [25, 2],
                "losses": [3, 6],
            }
        ),
        contrast_cases=[
            replace(
                cases[1],
                label="win of a over b: F1 1.00 vs 0.00 (+1.00)",
                other={"config": "no retrieval (LLM alone)", "answer": IMG, "f1": 0.0},
            )
        ],
        analysis=["Retrieval: MRR@10 0.612 (95% CI 0.520–0.700).", "Payload " + SCRIPT],
        latencies_by_config=pd.DataFrame(
            {
                "query_id": list(per_query["query_id"]) * 2,
                "latency_ms": rng.gamma(3.0, 4.0, size=2 * n),
                "config": ["retrieve.k=10"] * n + ["retrieve.k=5"] * n,
            }
        ),
    )
    return replace(inputs, **overrides)


EMPTY = {
    "lineage": pd.DataFrame(columns=["stage", "config_hash", "inputs", "outputs", "rows", "seconds"]),
    "headline": {},
    "retrieval_at_k": pd.DataFrame(columns=["k", "recall", "precision", "ndcg"]),
    "latencies_ms": pd.DataFrame(columns=["query_id", "latency_ms"]),
    "per_query": pd.DataFrame(columns=["query_id", "question", "rr", "recall@10", "f1", "em"]),
    "data_stats": pd.DataFrame(columns=["table", "metric", "value"]),
    "quarantine_reasons": pd.DataFrame(columns=["stage", "reason", "count"]),
    "answer_quality": pd.DataFrame(columns=["metric", "value"]),
    "cases": [],
    "config_yaml": "",
    "configurations": pd.DataFrame(),
    "comparisons": pd.DataFrame(),
    "contrast_cases": [],
    "analysis": [],
    "latencies_by_config": pd.DataFrame(),
}


# ---------------------------------------------------------------- reading the page back


class _Page(HTMLParser):
    """Collects what a browser would see as elements (script bodies are raw text, as in a browser)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.h2: list[str] = []
        self.provenance: list[str] = []
        self.json_scripts: list[str] = []
        self._capture: str | None = None
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "h2":
            self._capture, self._buf = "h2", []
        elif tag == "p" and a.get("class") == "provenance":
            self._capture, self._buf = "provenance", []
        elif tag == "script" and a.get("type") == "application/json":
            self._capture, self._buf = "json", []

    def handle_endtag(self, tag: str) -> None:
        if self._capture and tag in ("h2", "p", "script"):
            text = "".join(self._buf)
            {"h2": self.h2, "provenance": self.provenance, "json": self.json_scripts}[self._capture].append(text)
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self._capture:
            self._buf.append(data)


def parse_page(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def docs_json(page: str) -> dict[str, Any]:
    """The embedded Bokeh document, decoded the way BokehJS does: JSON.parse(unescape(textContent))."""
    (raw,) = parse_page(page).json_scripts
    return json.loads(html.unescape(raw))


def bokeh_models(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every serialized model of the document by id (later references carry only the id)."""
    models: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "name" in node and "id" in node:
                models.setdefault(node["id"], node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return models


def model_counts(page: str) -> Counter[str]:
    (doc,) = docs_json(page).values()
    return Counter(m["name"] for m in bokeh_models(doc).values())


class _Markup(HTMLParser):
    """Elements and attributes that markup would create if a browser rendered it as HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(name for name, _ in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def live_markup(markup: str) -> _Markup:
    parser = _Markup()
    parser.feed(markup)
    parser.close()
    return parser


def assert_markup_is_inert(markup: str) -> None:
    parsed = live_markup(markup)
    assert not {"script", "img", "iframe", "object", "embed", "svg"} & set(parsed.tags), parsed.tags
    assert not [a for a in parsed.attrs if a.lower().startswith("on")], parsed.attrs


M = TypeVar("M", bound=Model)


def select(model: Model, cls: type[M]) -> list[M]:
    """The models of a type under `model`, typed."""
    return [m for m in model.select({"type": cls}) if isinstance(m, cls)]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def inputs() -> ReportInputs:
    return make_inputs()


@pytest.fixture(scope="module")
def report(inputs: ReportInputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(inputs, tmp_path_factory.mktemp("report") / "nested" / "report.html")


@pytest.fixture(scope="module")
def page(report: Path) -> str:
    return report.read_text(encoding="utf-8")


# ---------------------------------------------------------------- the file


def test_report_is_one_html_file_with_the_six_sections(report: Path, page: str) -> None:
    assert report.is_file() and report.name == "report.html"
    parsed = parse_page(page)
    assert parsed.tags[0][0] == "html"
    assert parsed.h2 == HEADINGS
    assert [a.get("id") for t, a in parsed.tags if t == "section"] == [slug for slug, _ in SECTIONS]
    # One caption per section plus the page header, each naming the run and the configuration.
    assert len(parsed.provenance) == len(HEADINGS) + 1
    for caption in parsed.provenance:
        assert RUN_ID in caption and CONFIG_HASH in caption
    # Each section holds the Bokeh root of the same name.
    (doc,) = docs_json(page).values()
    assert [r["attributes"]["name"] for r in doc["roots"]] == [slug for slug, _ in SECTIONS]
    root_ids = [a["data-root-id"] for t, a in parsed.tags if t == "div" and "data-root-id" in a]
    assert root_ids == [r["id"] for r in doc["roots"]]


def test_report_loads_nothing_from_the_network(page: str) -> None:
    assert "cdn.bokeh.org" not in page
    parsed = parse_page(page)
    for tag, attrs in parsed.tags:
        assert not (tag == "script" and attrs.get("src")), attrs
        assert not (tag == "link" and attrs.get("href")), attrs
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    # BokehJS itself is inlined: its bundles are script bodies, not references.
    inline_scripts = [a for t, a in parsed.tags if t == "script" and not a.get("type")]
    assert len(inline_scripts) >= 3
    assert "BEGIN bokeh.min.js" in page and "BEGIN bokeh-tables.min.js" in page


def test_report_size_is_bokehjs_plus_little_data(page: str) -> None:
    size = len(page.encode("utf-8"))
    (raw,) = parse_page(page).json_scripts
    assert size < 2.5e6
    assert len(raw.encode("utf-8")) < 150_000


def test_document_holds_the_expected_models(page: str) -> None:
    counts = model_counts(page)
    # recall/precision@k, latency, reciprocal rank, document funnel, quarantine reasons, F1, quality vs latency,
    # latency per configuration.
    assert counts["Figure"] == 8
    # lineage, data statistics, answer quality, per question, configurations, paired comparisons.
    assert counts["DataTable"] == 6
    # headline, analysis, config, five subheadings, the case summary, three cases, the contrast head and case.
    assert counts["Div"] == 14
    assert counts["HoverTool"] == 8
    assert counts["HTMLTemplateFormatter"] == 0
    assert counts["InlineStyleSheet"] == 1  # one sheet shared by every Div
    # The embedded JSON is a valid Bokeh document again on the Python side.
    (doc,) = docs_json(page).values()
    restored = Document.from_json(doc)
    assert len(restored.roots) == len(SECTIONS)


def test_every_hover_names_the_run(inputs: ReportInputs) -> None:
    sections = build_sections(inputs)
    hovers = [h for layout in sections.values() for h in select(layout, HoverTool)]
    assert len(hovers) == 8
    for hover in hovers:
        assert ("run", "@run_id") in hover.tooltips
        assert not any("{safe}" in value for _, value in hover.tooltips)
        assert isinstance(hover.renderers, list)
        for renderer in hover.renderers:
            assert isinstance(renderer, GlyphRenderer)
            runs = set(renderer.data_source.data["run_id"])
            # The quality-vs-latency scatter has one point per configuration, each with its own run.
            assert runs == {RUN_ID} or ("config" in renderer.data_source.data and runs == {RUN_ID, OTHER_RUN})


# ---------------------------------------------------------------- escaping


def test_payloads_never_appear_raw_in_the_file(page: str) -> None:
    for payload in (SCRIPT, IMG):
        assert payload not in page
    assert "<img src=x onerror" not in page
    assert "<script>alert" not in page
    # What a browser parses outside the JSON: no element made from data.
    parsed = parse_page(page)
    assert not [a for t, a in parsed.tags if t == "img"]
    assert all(not a.get("src") for t, a in parsed.tags if t == "script")
    assert html.escape("rag-spark report — Debian FAQ") in page


def test_div_text_is_escaped_before_it_reaches_bokeh(inputs: ReportInputs, page: str) -> None:
    # Straight from the models...
    divs = [d for layout in build_sections(inputs).values() for d in select(layout, Div)]
    texts = [d.text for d in divs]
    for text in texts:
        assert SCRIPT not in text and IMG not in text
        assert_markup_is_inert(text)
    joined = "\n".join(texts)
    assert html.escape(SCRIPT) in joined  # the case question and the config YAML
    assert html.escape(IMG) in joined  # the case's first chunk
    # ...and from the page, decoded as BokehJS decodes it.
    (doc,) = docs_json(page).values()
    page_divs = [m["attributes"]["text"] for m in bokeh_models(doc).values() if m["name"] == "Div"]
    assert len(page_divs) == len(divs)
    for text in page_divs:
        assert SCRIPT not in text and IMG not in text
        assert_markup_is_inert(text)
    assert any(html.escape(IMG) in text for text in page_divs)
    # In the file itself the Div text is escaped once more, as Bokeh makes its JSON HTML-safe.
    assert html.escape(html.escape(IMG), quote=False) in page
    assert html.escape(html.escape(SCRIPT), quote=False) in page


def test_escaped_text_still_reads_as_the_original(inputs: ReportInputs) -> None:
    markup = case_study_markup(inputs.cases[0])
    text = "".join(live_markup(markup).text)
    assert SCRIPT in text  # a reader sees the question as written
    assert IMG in text


def test_data_tables_render_cells_as_text(inputs: ReportInputs, page: str) -> None:
    tables = [t for layout in build_sections(inputs).values() for t in select(layout, DataTable)]
    assert len(tables) == 6
    for table in tables:
        for column in table.columns:
            assert type(column.formatter).__name__ in {"StringFormatter", "NumberFormatter"}, column.formatter
    # The question column carries the raw text: SlickGrid puts it in the page as a text node.
    per_query = next(t for t in tables if t.name == "per_query")
    question = next(c for c in per_query.columns if c.title == "question")
    assert SCRIPT + " Comment purger un paquet ?" in list(per_query.source.data[question.field])
    # In the file it sits inside the JSON script element, HTML-escaped by Bokeh.
    assert html.escape(SCRIPT, quote=False) in page


# ---------------------------------------------------------------- content


def test_case_study_marks_relevant_and_cited_chunks(inputs: ReportInputs) -> None:
    case = inputs.cases[1]
    markup = case_study_markup(case)
    rows = re.findall(r'<tr class="([^"]*)">', markup)
    assert len(rows) == len(case.retrieved)
    assert rows[0] == "relevant cited" and rows[2] == "relevant" and rows[1] == ""
    assert markup.count("★ cited") == 1 and markup.count("✓ relevant") == 2
    assert "Cited, not retrieved</dt><dd>faq-99#0" in markup
    assert 'class="verdict correct"' in markup and "F1 1.000" in markup
    long_case = case_study_markup(inputs.cases[2], max_chunk_chars=100)
    assert " …</td>" in long_case and "(no answer)" in long_case and "verdict no-answer" in long_case


def test_overview_shows_headline_config_and_lineage(inputs: ReportInputs) -> None:
    overview = build_sections(inputs)["overview"]
    divs = {d.name: d.text for d in select(overview, Div) if d.name}
    assert "0.612" in divs["headline"] and "MRR@10" in divs["headline"] and "low=0.470" in divs["headline"]
    assert (
        divs["config"].startswith("<details>")
        and "<pre>" in divs["config"]
        and "dataset: data/debian_faq" in (divs["config"])
    )
    (lineage,) = [t for t in select(overview, DataTable) if t.name == "lineage"]
    titles = [c.title for c in lineage.columns]
    assert titles[:3] == ["stage", "inputs (table@version)", "outputs (table@version)"]
    outputs = lineage.source.data[lineage.columns[2].field]
    assert "silver@v2, duplicates@v1" in list(outputs)


def test_retrieval_curve_draws_one_line_per_config_and_metric() -> None:
    ks = np.arange(1, 6)
    frame = pd.concat(
        [pd.DataFrame({"k": ks, "recall": ks / 5, "precision": 1 / ks, "config": name}) for name in ("dense", "hybrid")]
    )
    p = retrieval_curve(frame, RUN_ID)
    assert isinstance(p, figure)
    (legend,) = select(p, Legend)
    labels = [getattr(item.label, "value", item.label) for item in legend.items]
    assert labels == ["recall@k · dense", "precision@k · dense", "recall@k · hybrid", "precision@k · hybrid"]
    (hover,) = select(p, HoverTool)
    renderers = [r for r in hover.renderers if isinstance(r, GlyphRenderer)]
    assert len(renderers) == 4
    assert {c for r in renderers for c in r.data_source.data["config"]} == {"dense", "hybrid"}


def test_latency_histogram_marks_p50_and_p95() -> None:
    latencies = pd.DataFrame({"query_id": [f"q{i}" for i in range(101)], "latency_ms": np.arange(101, dtype=float)})
    p = latency_histogram(latencies, RUN_ID)
    assert isinstance(p, figure)
    spans = sorted(s.location for s in select(p, Span))
    assert spans == [50.0, 95.0]
    assert sorted(label.text for label in select(p, Label)) == ["p50 50.0 ms", "p95 95.0 ms"]
    (quad,) = [r for r in select(p, GlyphRenderer) if "count" in r.data_source.data]
    assert sum(quad.data_source.data["count"]) == 101


def test_funnel_reads_the_named_metrics() -> None:
    stats = pd.DataFrame(
        {
            "table": ["bronze", "silver", "silver"],
            "metric": ["Documents in", "silver docs", "chunks"],
            "value": [10, 8, 40],
        }
    )
    p = funnel_bars(stats, RUN_ID)
    assert isinstance(p, figure)
    (renderer,) = select(p, GlyphRenderer)
    assert list(renderer.data_source.data["stage"]) == ["documents in", "kept (silver docs)"]
    assert list(renderer.data_source.data["share"]) == [1.0, 0.8]


# ---------------------------------------------------------------- empty inputs


def test_no_cases_and_no_quarantine_still_make_a_report(tmp_path: Path) -> None:
    inputs = make_inputs(cases=[], quarantine_reasons=pd.DataFrame(columns=["stage", "reason", "count"]))
    page = write_report(inputs, tmp_path / "report.html").read_text(encoding="utf-8")
    assert parse_page(page).h2 == HEADINGS
    counts = model_counts(page)
    assert counts["Figure"] == 7 and counts["DataTable"] == 6
    assert "No case studies were selected for this run." in page
    assert "No records were quarantined in this run." in page


def test_empty_run_still_makes_a_valid_report(tmp_path: Path) -> None:
    page = write_report(make_inputs(**EMPTY), tmp_path / "empty.html").read_text(encoding="utf-8")
    parsed = parse_page(page)
    assert parsed.h2 == HEADINGS
    assert all(RUN_ID in c and CONFIG_HASH in c for c in parsed.provenance)
    counts = model_counts(page)
    assert counts["Figure"] == 0 and counts["DataTable"] == 0
    assert "cdn.bokeh.org" not in page
    (doc,) = docs_json(page).values()
    assert len(Document.from_json(doc).roots) == len(SECTIONS)


def test_reports_built_twice_share_no_models(inputs: ReportInputs) -> None:
    # Bokeh models belong to one document; each render must build its own.
    first, second = render_report(inputs), render_report(inputs)
    assert model_counts(first) == model_counts(second)


# ---------------------------------------------------------------- in a real browser

XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '<img src=x onerror="window.__xss=2">'
ARTIFACTS = Path(__file__).parent / "artifacts"

# Counts canvases through shadow roots (BokehJS renders into them) and the Figure models of the Bokeh documents.
_RENDERED = """(() => {
  let canvases = 0;
  const walk = (root) => root.querySelectorAll("*").forEach((el) => {
    if (el.tagName === "CANVAS") canvases++;
    if (el.shadowRoot) walk(el.shadowRoot);
  });
  walk(document);
  const docs = (window.Bokeh && window.Bokeh.documents) || [];
  let figures = 0, roots = 0;
  for (const d of docs) {
    roots += d.roots().length;
    for (const m of d._all_models.values()) if (m.type === "Figure") figures++;
  }
  return JSON.stringify({canvases, figures, roots, docs: docs.length, xss: typeof window.__xss});
})()"""


class DevTools:
    """A headless Debian Chromium driven over the Chrome DevTools protocol (one page, flat sessions)."""

    def __init__(self, chromium: str, profile: str) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers (zygote, renderer, crashpad) share the group: close() ends them all
        )
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port within 30 s")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, session=True, **params)

    def evaluate(self, expression: str) -> Any:
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails", {}).get("exception", {}).get("description", p)))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(str(p["entry"].get("text")))
        return out

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(timeout=10)
        # The helpers outlive the browser process by a moment and still write into the profile (a CI run once failed
        # removing it: "Directory not empty: 'Default'"): wait until the group is gone, then kill what is left.
        deadline = time.monotonic() + 10
        while self._signal_group(0) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> bool:
        """Send `sig` to chromium's process group; False when no process of it is left."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True


def _xss_inputs() -> ReportInputs:
    """The synthetic run with payloads that set window.__xss if they ever run, in every data text."""
    base = make_inputs()
    cases = [
        replace(
            c,
            question=XSS_SCRIPT + c.question,
            answer=XSS_IMG + c.answer,
            retrieved=[{**r, "text": XSS_SCRIPT + XSS_IMG + str(r["text"])} for r in c.retrieved],
            label=XSS_IMG,
            other={"config": XSS_SCRIPT, "answer": XSS_IMG, "f1": 0.5},
        )
        for c in base.cases
    ]
    per_query = base.per_query.copy()
    per_query.loc[0, "question"] = XSS_SCRIPT + XSS_IMG
    return replace(
        base,
        cases=cases,
        contrast_cases=cases[:1],
        per_query=per_query,
        config_yaml=base.config_yaml + f"# {XSS_SCRIPT}{XSS_IMG}\n",
        analysis=[f"Payload {XSS_SCRIPT} {XSS_IMG}"],
    )


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: `make browser` installs Debian's chromium (as root)")
    pytest.importorskip("websockets", reason="websockets drives chromium over DevTools: pip install websockets")
    report = write_report(_xss_inputs(), tmp_path / "report.html")
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(chromium, profile)
        try:
            for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                browser.page(domain)
            browser.page("Page.navigate", url=report.as_uri())
            state: dict[str, Any] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = json.loads(browser.evaluate(_RENDERED) or "{}")
                if state.get("docs") and state["canvases"] >= state["figures"] > 0:
                    break
                time.sleep(0.5)
            time.sleep(1.0)  # let late errors arrive
            state = json.loads(browser.evaluate(_RENDERED))
            shot = base64.b64decode(browser.page("Page.captureScreenshot", format="png")["data"])
            errors = browser.errors()
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.png").write_bytes(shot)
    print(f"screenshot: {ARTIFACTS / 'report.png'}")
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    assert errors == []
    assert state["docs"] == 1 and state["roots"] == len(SECTIONS)
    assert state["figures"] >= 8  # every chart became a Figure view with its canvas
    assert state["canvases"] >= state["figures"]
    assert state["xss"] == "undefined"  # neither payload ran


def test_configurations_section_compares_runs(inputs: ReportInputs) -> None:
    section = build_sections(inputs)["configurations"]
    (table,) = [t for t in select(section, DataTable) if t.name == "configurations"]
    assert table.sortable and [c.title for c in table.columns][:4] == ["configuration", "MRR@10", "MRR low", "MRR high"]
    (comparisons,) = [t for t in select(section, DataTable) if t.name == "comparisons"]
    assert "p (permutation)" in [c.title for c in comparisons.columns]
    scatter = next(f for f in select(section, figure) if "Quality vs latency" in f.title.text)
    (hover,) = select(scatter, HoverTool)
    assert ("config", "@config") in hover.tooltips
    (dots,) = hover.renderers
    assert list(dots.data_source.data["config"]) == ["retrieve.k=10", "retrieve.k=5," + SCRIPT]  # text, not HTML
    assert list(dots.data_source.data["low"]) == [0.52, 0.50]
    ecdf = next(f for f in select(section, figure) if "cumulative" in f.title.text)
    assert len(select(ecdf, HoverTool)[0].renderers) == 2  # one line per configuration
    contrast = [d.text for d in select(section, Div) if d.name and d.name.startswith("case:")]
    assert len(contrast) == 1 and "Answer under no retrieval (LLM alone)" in contrast[0]
    assert html.escape(IMG) in contrast[0] and "win of a over b" in contrast[0]
    analysis = next(d.text for d in select(build_sections(inputs)["overview"], Div) if d.name == "analysis")
    assert "MRR@10 0.612 (95% CI 0.520–0.700)" in analysis and html.escape(SCRIPT) in analysis


def test_headline_cards_show_intervals() -> None:
    inputs = make_inputs(
        headline={
            "retrieval": {"mrr@10": 0.5, "mrr@10_ci95": [0.41, 0.59]},
            "answers": {"f1": None, "f1_ci95": [None, None]},
        }
    )
    text = next(d.text for d in select(build_sections(inputs)["overview"], Div) if d.name == "headline")
    assert "95% CI 0.410 – 0.590" in text and "Answer F1" not in text  # no card for an unmeasured metric


def test_top_k_overlap_is_recall_against_the_reference_results() -> None:
    from rag_spark.report.assemble import top_k_overlap

    def ret(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
        return pd.DataFrame(rows, columns=["query_id", "rank", "doc_id"])

    exact = ret([("q1", 1, "a"), ("q1", 2, "b"), ("q2", 1, "c"), ("q2", 2, "d"), ("q2", 3, "z")])
    approx = ret([("q1", 1, "b"), ("q1", 2, "a"), ("q2", 1, "c"), ("q2", 2, "x"), ("q2", 3, "d")])
    assert top_k_overlap(exact, exact, 2) == 1.0
    # q1: both found (order does not matter); q2: top-2 {c, d} vs {c, x} -> 1 of 2
    assert top_k_overlap(approx, exact, 2) == pytest.approx(0.75)
    assert top_k_overlap(approx, exact, 3) == pytest.approx((1.0 + 2 / 3) / 2)
    assert top_k_overlap(ret([]), exact, 2) == 0.0  # nothing retrieved: nothing recalled
    assert np.isnan(top_k_overlap(approx, ret([]), 2))
