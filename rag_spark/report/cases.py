"""Case studies: one question followed from retrieval to answer, as an escaped HTML block per question.

Every string of a case (question, answers, chunk text, ids) comes from data and goes through `esc()` before
it is placed in markup, because a `Div` renders its text as HTML in the browser.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from bokeh.models.widgets import Div

from rag_spark.report.inputs import CaseStudy
from rag_spark.report.tables import esc, html_div, note

MAX_CHUNK_CHARS = 600

# Verdict -> CSS class; verdicts outside the known set get no colour rather than a class made from data.
_VERDICT_CLASS = {"correct": "correct", "partial": "partial", "wrong": "wrong", "no answer": "no-answer"}


def _truncate(text: str, limit: int) -> str:
    # Cut before escaping so an entity like "&amp;" is never split.
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def _score(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(v) else f"{v:.3f}"


def _chunk_row(chunk: dict[str, Any], cited: set[str], max_chars: int) -> str:
    chunk_id = str(chunk.get("chunk_id", ""))
    relevant = bool(chunk.get("relevant", False))
    is_cited = chunk_id in cited
    classes = " ".join(c for c, on in (("relevant", relevant), ("cited", is_cited)) if on)
    text = str(chunk.get("text", "") or "")
    return (
        f'<tr class="{classes}">'
        f'<td class="num">{esc(chunk.get("rank", ""))}</td>'
        f'<td class="num">{_score(chunk.get("score"))}</td>'
        f"<td>{esc(chunk.get('doc_id', ''))}</td>"
        f"<td>{esc(chunk_id)}</td>"
        f'<td class="mark">{"✓ relevant" if relevant else ""}</td>'
        f'<td class="mark">{"★ cited" if is_cited else ""}</td>'
        f'<td class="chunk-text" title="{len(text)} characters">{esc(_truncate(text, max_chars))}</td>'
        "</tr>"
    )


def case_study_markup(case: CaseStudy, *, max_chunk_chars: int = MAX_CHUNK_CHARS) -> str:
    """The HTML of one case study, every data string escaped.

    Args:
        case: The case to show.
        max_chunk_chars: Chunk text longer than this is cut (the full length is given in a tooltip).

    Returns:
        A `<div class="case">` block: header with verdict and F1, question, gold and generated answers,
        then the retrieved chunks with the relevant and cited ones marked.
    """
    cited = {str(c) for c in case.cited_chunk_ids}
    retrieved = sorted(case.retrieved, key=lambda c: int(c.get("rank", 0) or 0))
    retrieved_ids = {str(c.get("chunk_id", "")) for c in retrieved}
    n_relevant = sum(bool(c.get("relevant", False)) for c in retrieved)
    n_cited = sum(str(c.get("chunk_id", "")) in cited for c in retrieved)
    verdict_class = _VERDICT_CLASS.get(case.verdict, "")
    answer = esc(case.answer) if case.answer.strip() else '<span class="note">(no answer)</span>'
    cited_ids = ", ".join(esc(c) for c in case.cited_chunk_ids) or '<span class="note">none</span>'
    not_retrieved = [c for c in case.cited_chunk_ids if str(c) not in retrieved_ids]
    parts = [
        '<div class="case">',
        f'<h3>{esc(case.query_id)} <span class="verdict {verdict_class}">{esc(case.verdict)}</span>',
        f" F1 {_score(case.f1)}</h3>",
        f'<p class="note">{esc(case.label)}</p>' if case.label else "",
        "<dl>",
        f"<dt>Question</dt><dd>{esc(case.question)}</dd>",
        f"<dt>Gold answer</dt><dd>{esc(case.gold_answer)}</dd>",
        f"<dt>Generated answer</dt><dd>{answer}</dd>",
        f"<dt>Cited chunks</dt><dd>{cited_ids}</dd>",
    ]
    if case.other:
        other_answer = str(case.other.get("answer", "") or "")
        shown = esc(other_answer) if other_answer.strip() else '<span class="note">(no answer)</span>'
        parts.append(
            f"<dt>Answer under {esc(case.other.get('config', 'the other configuration'))}</dt>"
            f"<dd>{shown} (F1 {_score(case.other.get('f1'))})</dd>"
        )
    if not_retrieved:
        parts.append("<dt>Cited, not retrieved</dt><dd>" + ", ".join(esc(c) for c in not_retrieved) + "</dd>")
    parts.append("</dl>")
    if retrieved:
        rows = "".join(_chunk_row(c, cited, max_chunk_chars) for c in retrieved)
        parts.append(
            f"<details open><summary>Retrieved chunks ({len(retrieved)}; {n_relevant} relevant, "
            f"{n_cited} cited)</summary>"
            '<table class="chunks"><tr><th>rank</th><th>score</th><th>doc</th><th>chunk</th>'
            f"<th>relevant</th><th>cited</th><th>text</th></tr>{rows}</table></details>"
        )
    else:
        parts.append('<p class="note">Nothing was retrieved for this question.</p>')
    parts.append("</div>")
    return "".join(parts)


def case_study_div(case: CaseStudy, *, max_chunk_chars: int = MAX_CHUNK_CHARS) -> Div:
    """One case study as a `Div` (see `case_study_markup`)."""
    return html_div(case_study_markup(case, max_chunk_chars=max_chunk_chars), name=f"case:{case.query_id}")


def contrast_divs(cases: list[CaseStudy], *, max_chunk_chars: int = MAX_CHUNK_CHARS) -> list[Div]:
    """The biggest wins and losses between two configurations, one `Div` each (see `case_study_markup`)."""
    if not cases:
        return [note("No second configuration to contrast with.")]
    head = html_div(
        "<p>Questions where the two configurations differ most, question by question: the answer above is the "
        "first configuration's, the one compared with follows it.</p>"
    )
    return [head] + [case_study_div(c, max_chunk_chars=max_chunk_chars) for c in cases]


def case_study_divs(cases: list[CaseStudy], *, max_chunk_chars: int = MAX_CHUNK_CHARS) -> list[Div]:
    """A summary line, then one `Div` per case study; a single note when there are none."""
    if not cases:
        return [note("No case studies were selected for this run.")]
    verdicts = Counter(c.verdict for c in cases)
    summary = ", ".join(f"{n} {esc(v)}" for v, n in verdicts.most_common())
    head = html_div(
        f"<p>{len(cases)} questions followed end to end: {summary}. Rows shaded green hold a chunk of a "
        "relevant document; <b>★ cited</b> marks the chunks the generated answer cites.</p>"
    )
    return [head] + [case_study_div(c, max_chunk_chars=max_chunk_chars) for c in cases]
