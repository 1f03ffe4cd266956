"""Training pairs from document structure: a section's heading as the query, the section's own text as the passage.

Documentation is written as headings over the text that answers them ("Configurer le réseau" over the paragraphs
that say how), which is the shape of a search question over its answer. `train-retriever` can read a folder of such
documents (`train.section_docs`: HTML, including DocBook and Sphinx output, and Markdown) and add (heading, section)
pairs to the user's questions: in-domain training data without labels, at the scale of the documentation.

What counts as a section: every heading (`h1`..`h6`, Markdown `#`..`######`) opens one, which holds the text up to
the next heading of any level (a chapter's introduction is the chapter heading's section; its subsections are their
own). Headings are cleaned of numbering ("3.2.1.", "Chapitre 3.", "B.2") and permalink signs. A section repeated
verbatim counts once; a heading over different texts in the folder ("Introduction", "Exemple") says nothing about
which section it heads and is dropped, as are sections with fewer than `min_chars` characters of text.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rag_spark.clean.text import BLOCK_TAGS
from rag_spark.ingest.decode import decode_bytes

log = logging.getLogger(__name__)

HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_SKIP = {"script", "style", "nav", "header", "footer", "head", "noscript", "template"}
_NUMBERING = re.compile(
    r"^(?:(?:chapitre|chapter|annexe|appendix|partie|part|section)\s+)?(?:[A-Z]|[IVXLC]+|\d+)?(?:\.\d+)*\.?\s+",
    re.IGNORECASE,
)
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


@dataclass(frozen=True)
class Section:
    section_id: str
    root: str
    """The folder read (absolute)."""
    source: str
    """The file, relative to `root`."""
    heading: str
    text: str


def clean_heading(text: str) -> str:
    """Heading text without numbering, permalink signs and extra whitespace."""
    text = re.sub(r"\s+", " ", text.replace("¶", " ").replace("\u00a0", " ")).strip(" #§")
    stripped = _NUMBERING.sub("", text, count=1)
    # Only numbering with a separator counts ("3.2 Titre", "B.2. Titre"); a heading that is one word stays.
    return stripped.strip() if stripped.strip() and stripped != text else text


def _html_sections(html: str) -> list[tuple[str, str]]:
    import lxml.html

    try:  # lxml refuses a str that still carries an XML encoding declaration: it was decoded already
        root = lxml.html.fromstring(_XML_DECLARATION.sub("", html, count=1))
    except Exception as exc:  # lxml raises ParserError / XMLSyntaxError for empty or broken documents
        raise ValueError(f"not parseable as HTML: {exc}") from exc
    out: list[tuple[str, str]] = []
    heading: str | None = None
    buf: list[str] = []

    def flush() -> None:
        if heading is not None:
            out.append((heading, re.sub(r"\s+", " ", " ".join(buf)).strip()))
        buf.clear()

    def walk(el: object) -> None:
        nonlocal heading
        tag = getattr(el, "tag", None)
        if not isinstance(tag, str):  # comments, processing instructions
            tail = getattr(el, "tail", None)
            if tail:
                buf.append(tail)
            return
        if tag in _SKIP:
            pass
        elif tag in _HEADINGS:
            flush()
            heading = clean_heading(el.text_content())  # type: ignore[attr-defined]
        else:
            if tag in BLOCK_TAGS:
                buf.append(" ")
            if el.text:  # type: ignore[attr-defined]
                buf.append(el.text)  # type: ignore[attr-defined]
            for child in el:  # type: ignore[attr-defined]
                walk(child)
            if tag in BLOCK_TAGS:
                buf.append(" ")
        if el.tail:  # type: ignore[attr-defined]
            buf.append(el.tail)  # type: ignore[attr-defined]

    walk(root)
    flush()
    return out


def _markdown_sections(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    heading: str | None = None
    buf: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _MD_FENCE.match(line):
            fenced = not fenced
        m = None if fenced else _MD_HEADING.match(line)
        if m:
            if heading is not None:
                out.append((heading, re.sub(r"\s+", " ", " ".join(buf)).strip()))
            heading, buf = clean_heading(m.group(2)), []
        else:
            buf.append(line)
    if heading is not None:
        out.append((heading, re.sub(r"\s+", " ", " ".join(buf)).strip()))
    return out


def read_sections(
    root: str | Path, min_chars: int = 80, max_chars: int = 4000, what: str = "train.section_docs"
) -> list[Section]:
    """Sections of every HTML / Markdown file under `root` (sorted by path), as described in the module docstring;
    `what` names the setting `root` came from in errors and logs.

    Raises:
        ValueError: `root` is not a folder, or holds no HTML / Markdown file.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"{what}: {root} is not a folder")
    files = sorted(f for f in base.rglob("*") if f.is_file() and f.suffix.lower() in HTML_SUFFIXES | MARKDOWN_SUFFIXES)
    if not files:
        raise ValueError(f"{what}: no HTML or Markdown file under {root}")
    raw: list[tuple[str, str, str]] = []
    unreadable = 0
    for f in files:
        rel = f.relative_to(base).as_posix()
        try:
            # The ingest stage's decoding: UTF-8 first, else the encoding charset-normalizer finds.
            decoded = decode_bytes(rel, f.read_bytes())
            if decoded.text is None:
                raise ValueError(decoded.error)
            is_html = f.suffix.lower() in HTML_SUFFIXES
            found = _html_sections(decoded.text) if is_html else _markdown_sections(decoded.text)
        except (OSError, ValueError) as exc:
            log.warning("%s: skipping %s: %s", what, rel, exc)
            unreadable += 1
            continue
        raw.extend((rel, h, t) for h, t in found)
    # A section repeated verbatim (a single-page edition beside the chaptered one) counts once; a heading over two
    # different texts is ambiguous.
    seen: set[tuple[str, str]] = set()
    unique = []
    for rel, heading, text in raw:
        if (heading.casefold(), text) not in seen:
            seen.add((heading.casefold(), text))
            unique.append((rel, heading, text))
    counts = Counter(h.casefold() for _, h, _ in unique)
    sections = []
    for i, (rel, heading, text) in enumerate(unique):
        if len(heading) < 3 or counts[heading.casefold()] > 1 or len(text) < min_chars:
            continue
        sid = "section:" + hashlib.sha256(f"{rel}\0{i}\0{heading}".encode()).hexdigest()[:16]
        sections.append(Section(sid, str(base.resolve()), rel, heading, text[:max_chars]))
    log.info(
        "%s: %d sections with a distinct heading from %d files under %s (%d headed blocks, %d files unreadable)",
        what,
        len(sections),
        len(files) - unreadable,
        root,
        len(raw),
        unreadable,
    )
    return sections


def shingles(text: str, n: int = 10) -> set[int]:
    """Hashes of the text's n-word sequences (lower-cased words), to find text a section shares with a document."""
    words = re.findall(r"\w+", text.casefold())
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}
