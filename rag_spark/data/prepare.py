"""Build the demo dataset (and the tiny test fixture) from offline sources, in a BEIR-like folder.

Layout of a dataset folder::

    docs/faq/<anchor>.html   one Debian FAQ section per file (its question heading left out)
    corpus.jsonl             the Wikipedia haystack: {"_id": "wiki/123", "title": ..., "text": ...}
    queries.jsonl            {"_id": "faq-q/<anchor>", "text": <question heading>}
    qrels/test.tsv           query-id, corpus-id (a file's path relative to docs/), score
    answers.jsonl            {"_id": "faq-q/<anchor>", "answer": <short answer>}
    LICENSE.md               license notices of both sources
    dataset.json             provenance: sources, counts, sha256 of every other file

Output is deterministic (same bytes on every run with the same sources) and replaces the folder atomically.

The demo is French (the FAQ's French translation and French Wikipedia); `--language en` builds the same dataset
from the English FAQ and English Wikipedia, to measure a configuration on a second language.

Regenerate::

    python -m rag_spark.data.prepare demo --out data/demo
    python -m rag_spark.data.prepare demo --language en --out data/demo-en
    python -m rag_spark.data.prepare tiny --out tests/data/tiny
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rag_spark.data.debian_faq import (
    EDITIONS,
    FRENCH,
    FaqEdition,
    FaqSection,
    ensure_faq_dir,
    faq_copyright_text,
    faq_package_version,
    parse_faq,
)
from rag_spark.data.wiki import DISTRIBUTION as WIKI_DISTRIBUTION
from rag_spark.data.wiki import (
    WikiDoc,
    load_wiki_summaries,
    wiki_package_version,
    wiki_summaries_path,
    wiki_summaries_sha256,
)

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
FAQ_DOCS_DIR = "faq"  # under docs/
QUERY_PREFIX = "faq-q/"

# The tiny fixture: the first six questions of chapter 1 ("Définitions et vue d'ensemble"), two sections that are
# not questions, and Wikipedia articles close to the FAQ's subject (hard negatives for retrieval).
TINY_QUESTION_ANCHORS = ("whatisfaq", "whatisdebian", "linux", "non-linux", "difference", "gnu")
TINY_OTHER_ANCHORS = ("SPI", "synaptic")
TINY_WIKI_TITLES = (
    "Linux", "Unix", "Système d'exploitation", "Linus Torvalds", "Microsoft Windows", "Android",
    "Open source", "Logiciel", "Compilateur", "Ordinateur", "Internet", "Wikipédia",
)  # fmt: skip
# Real text for the non-HTML edge-case files: FAQ sections left out of the tiny set.
TINY_LATIN1_ANCHOR = "source"
TINY_MARKDOWN_ANCHOR = "version"
TINY_MALFORMED_LINE = "{not json"
TINY_MALFORMED_AFTER = 6  # valid corpus lines before the malformed one

# Used only if the package's copyright file is missing: the same notice, from debian-faq-fr 11.1.
_FAQ_NOTICE_FALLBACK = """\
  Copyright (C) 1996-2003  Software in the Public Interest

  Permission is granted to make and distribute verbatim copies of
  this document provided the copyright notice and this permission notice
  are preserved on all copies.

  Permission is granted to copy and distribute modified versions of
  this document under the conditions for verbatim copying, provided that
  the entire resulting derived work is distributed under the terms of
  a permission notice identical to this one.

  Permission is granted to copy and distribute translations of this
  document into another language, under the above conditions for
  modified versions, except that this permission notice may be included
  in translations approved by the Free Software Foundation instead of
  in the original English.
"""

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _faq_link(language: str) -> re.Pattern[str]:
    return re.compile(rf'href="[A-Za-z0-9_-]+\.{language}\.html#([^"]+)"')


def faq_doc_id(section: FaqSection) -> str:
    """Return the document id of a FAQ section's file: its path relative to ``docs/``."""
    return f"{FAQ_DOCS_DIR}/{section.anchor}.html"


def faq_query_id(section: FaqSection) -> str:
    """Return the query id of a FAQ question section."""
    return f"{QUERY_PREFIX}{section.anchor}"


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _relink(body_html: str, anchors: set[str], language: str) -> str:
    # Cross-references point into the FAQ's chapter files; point them at the section files of this dataset.
    def repl(match: re.Match[str]) -> str:
        anchor = match.group(1)
        return f'href="{anchor}.html"' if anchor in anchors else match.group(0)

    return _faq_link(language).sub(repl, body_html)


def faq_document_html(section: FaqSection, anchors: set[str] | None = None, language: str = "fr") -> str:
    """Render one FAQ section as a small standalone HTML document, without its heading.

    Args:
        section: The section.
        anchors: Anchors that get their own document; links to them are rewritten to ``<anchor>.html``.
        language: The FAQ edition's language (the chapter files' infix, the document's ``lang``).

    Returns:
        ``<html>`` with the chapter as title and the section's own body.
    """
    body = _relink(section.body_html, anchors or set(), language)
    return (
        f'<html lang="{language}"><head><meta charset="utf-8"><title>{html.escape(section.chapter)}</title></head>'
        f"<body>{body}</body></html>\n"
    )


def _wiki_record(doc: WikiDoc, doc_id: str | None = None) -> dict[str, str]:
    return {"_id": doc_id or doc.doc_id, "title": doc.title, "text": doc.text}


def _faq_files(sections: Sequence[FaqSection], language: str = "fr") -> dict[str, bytes]:
    """Return docs/faq/*.html, queries.jsonl, qrels/test.tsv and answers.jsonl for the given sections."""
    anchors = {s.anchor for s in sections}
    lowered = {a.lower() for a in anchors}
    if len(lowered) != len(anchors):
        raise ValueError("two FAQ anchors differ only by case; their files would collide on some filesystems")
    files: dict[str, bytes] = {}
    for s in sections:
        if not _SAFE_NAME.fullmatch(s.anchor):
            raise ValueError(f"FAQ anchor {s.anchor!r} is not a safe file name")
        files[f"docs/{faq_doc_id(s)}"] = faq_document_html(s, anchors, language).encode("utf-8")
    questions = [s for s in sections if s.is_question]
    files["queries.jsonl"] = _jsonl({"_id": faq_query_id(s), "text": s.heading} for s in questions)
    files["qrels/test.tsv"] = (
        "query-id\tcorpus-id\tscore\n" + "".join(f"{faq_query_id(s)}\t{faq_doc_id(s)}\t1\n" for s in questions)
    ).encode("utf-8")
    files["answers.jsonl"] = _jsonl({"_id": faq_query_id(s), "answer": s.short_answer} for s in questions)
    return files


def _license_md(faq_dir: Path, edition: FaqEdition = FRENCH) -> bytes:
    notice = faq_copyright_text(faq_dir, edition)
    if notice is None:
        logger.warning("no copyright file next to %s; using the notice of debian-faq-fr 11.1", faq_dir)
        notice = _FAQ_NOTICE_FALLBACK
    language, lang = edition.name, edition.language
    package = edition.package
    translation = ", French translation" if lang == "fr" else ""
    selection = '("articles vitaux" level 4)' if lang == "fr" else "(vital articles)"
    text = f"""# Licenses of this dataset

This dataset has two sources with different licenses. Files under `docs/faq/`, `queries.jsonl`,
`qrels/test.tsv` and `answers.jsonl` come from the {language} Debian FAQ; `corpus.jsonl` comes from Wikipedia.
Other files under `docs/` (tiny fixture only) hold short excerpts of the Debian FAQ.

## {"La FAQ Debian GNU/Linux" if lang == "fr" else "The Debian GNU/Linux FAQ"} (Debian package `{package}`)

The Debian GNU/Linux FAQ{translation}, copyright Software in the Public Interest (SPI).
Split into one file per section, headings removed, cross-reference links rewritten; the text is unchanged.
The package's `copyright` file (`/usr/share/doc/{package}/copyright`) grants the following permission
notice (a verbatim-copying notice, not the GNU GPL), reproduced in full:

```
{notice.rstrip()}
```

## Wikipedia (via the PyPI package `{WIKI_DISTRIBUTION}`)

Lead sections of {language} Wikipedia articles {selection}, as collected by the package
`{WIKI_DISTRIBUTION}` (the package itself is GPL-3.0-or-later); titles and texts are used unchanged. Wikipedia text is available under the Creative Commons Attribution-ShareAlike license
(CC BY-SA 4.0; contributions before June 2023 under CC BY-SA 3.0): https://creativecommons.org/licenses/by-sa/4.0/
Each record's `title` names its article, https://{lang}.wikipedia.org/wiki/<title>, whose history lists the
authors. A derived work must be shared under the same license.
"""
    return text.encode("utf-8")


def _sources(faq_dir: Path, edition: FaqEdition = FRENCH) -> dict[str, Any]:
    return {
        "debian_faq": {
            "package": edition.package,
            "version": faq_package_version(faq_dir, edition),
            "url": "https://www.debian.org/doc/FAQ/",
            "license": "Debian FAQ permission notice (verbatim and modified copies), see LICENSE.md",
            "copyright": "Software in the Public Interest",
        },
        "wikipedia": {
            "package": WIKI_DISTRIBUTION,
            "version": wiki_package_version(),
            "file": wiki_summaries_path(edition.language).name,
            "file_sha256": wiki_summaries_sha256(edition.language),
            "license": "CC BY-SA 4.0 (Wikipedia text); package GPL-3.0-or-later",
        },
    }


def _provenance(
    name: str, sources: dict[str, Any], counts: dict[str, int], files: dict[str, bytes], **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "format": "BEIR-style queries/qrels + a docs/ folder of files + corpus.jsonl",
        "generator": "rag_spark.data.prepare",
        "sources": sources,
        "counts": counts,
        **extra,
        "files": {path: _sha256(files[path]) for path in sorted(files)},
    }


def _dataset_json(provenance: dict[str, Any]) -> bytes:
    return (json.dumps(provenance, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _list_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _is_current(out_dir: Path, files: dict[str, bytes]) -> bool:
    meta = out_dir / DATASET_JSON
    if not meta.is_file() or meta.read_bytes() != files[DATASET_JSON]:
        return False
    if _list_files(out_dir) != set(files):
        return False
    return all(_sha256((out_dir / path).read_bytes()) == _sha256(data) for path, data in files.items())


def write_dataset(out_dir: Path, files: dict[str, bytes]) -> bool:
    """Write a dataset folder atomically, unless it already holds exactly these files.

    The files are written to a temporary folder next to ``out_dir`` and renamed into place, so ``out_dir`` never
    holds half a dataset. An existing ``out_dir`` is replaced only if it is empty or holds a dataset
    (``dataset.json``): an unrelated folder is never deleted.

    Args:
        out_dir: The dataset folder.
        files: Contents by path relative to ``out_dir`` (forward slashes), ``dataset.json`` included.

    Returns:
        True if the folder was (re)written, False if it was already up to date.

    Raises:
        FileExistsError: If ``out_dir`` exists, is not empty and holds no ``dataset.json``.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.is_dir() and _is_current(out_dir, files):
        logger.info("%s is up to date", out_dir)
        return False
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / DATASET_JSON).is_file():
        raise FileExistsError(f"{out_dir} exists and is not a dataset folder (no {DATASET_JSON}); not replacing it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    staging.mkdir()
    try:
        for path, data in sorted(files.items()):
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{tag}"
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %d files to %s", len(files), out_dir)
    return True


def _finish(out_dir: Path, files: dict[str, bytes], provenance: dict[str, Any]) -> dict[str, Any]:
    files[DATASET_JSON] = _dataset_json(provenance)
    write_dataset(out_dir, files)
    return provenance


def prepare_demo(out_dir: Path, cache_dir: Path, wiki_limit: int | None = None, language: str = "fr") -> dict[str, Any]:
    """Build the demo dataset: every Debian FAQ section as an HTML file, its questions as queries, and the
    Wikipedia summaries as the haystack, all in one language.

    Args:
        out_dir: The dataset folder to write (replaced atomically; left alone if already identical).
        cache_dir: Where the FAQ's package (``debian-faq-fr``, ``debian-faq``) is downloaded and extracted if not
            installed.
        wiki_limit: Keep only the first N Wikipedia documents; None for all.
        language: ``fr`` (the demo) or ``en``.

    Raises:
        ValueError: For a language with no FAQ edition here.

    Returns:
        The provenance written to ``dataset.json``: sources, counts and the sha256 of every other file.
    """
    if language not in EDITIONS:
        raise ValueError(f"language={language!r}: the Debian FAQ editions here are {sorted(EDITIONS)}")
    edition = EDITIONS[language]
    faq_dir = ensure_faq_dir(Path(cache_dir), edition)
    sections = parse_faq(faq_dir, edition)
    wiki = load_wiki_summaries(language, limit=wiki_limit)
    files = _faq_files(sections, language)
    files["corpus.jsonl"] = _jsonl(_wiki_record(d) for d in wiki)
    files["LICENSE.md"] = _license_md(faq_dir, edition)
    counts = {
        "faq_documents": len(sections),
        "wiki_documents": len(wiki),
        "queries": sum(s.is_question for s in sections),
    }
    provenance = _provenance(
        f"rag-spark-demo-{language}", _sources(faq_dir, edition), counts, files, wiki_limit=wiki_limit
    )
    return _finish(Path(out_dir), files, provenance)


def _pick_sections(sections: Sequence[FaqSection], anchors: Sequence[str]) -> list[FaqSection]:
    by_anchor = {s.anchor: s for s in sections}
    missing = [a for a in anchors if a not in by_anchor]
    if missing:
        raise ValueError(f"FAQ sections {missing} not found; the tiny fixture's choice needs updating")
    return [by_anchor[a] for a in anchors]


def _pick_wiki(docs: Sequence[WikiDoc], titles: Sequence[str]) -> list[WikiDoc]:
    first_by_title: dict[str, WikiDoc] = {}
    for d in docs:
        first_by_title.setdefault(d.title, d)
    picked = [first_by_title[t] for t in titles if t in first_by_title]
    # Another package version may lack a title: fill up with the first documents, still deterministic.
    for d in docs:
        if len(picked) >= len(titles):
            break
        if d not in picked:
            picked.append(d)
    return picked


def prepare_tiny(out_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Build the tiny test fixture: the demo's format on 8 FAQ sections (6 questions) and 12 Wikipedia documents,
    plus edge cases for the pipeline's tests (listed in ``dataset.json`` under ``edge_cases``): an exact
    duplicate and a malformed line in ``corpus.jsonl``, an empty file, an ISO-8859-1 text file and a Markdown
    file under ``docs/``.

    Args:
        out_dir: The fixture folder to write, e.g. ``tests/data/tiny``.
        cache_dir: Where the ``debian-faq-fr`` package is downloaded and extracted if not installed.

    Returns:
        The provenance written to ``dataset.json``.
    """
    faq_dir = ensure_faq_dir(Path(cache_dir))
    all_sections = parse_faq(faq_dir)
    sections = _pick_sections(all_sections, TINY_QUESTION_ANCHORS + TINY_OTHER_ANCHORS)
    wiki = _pick_wiki(load_wiki_summaries(FRENCH.language), TINY_WIKI_TITLES)
    files = _faq_files(sections)

    duplicate_of = wiki[0]
    duplicate_id = f"{duplicate_of.doc_id}-copy"
    lines = [json.dumps(_wiki_record(d), ensure_ascii=False) for d in wiki]
    lines.append(json.dumps(_wiki_record(duplicate_of, duplicate_id), ensure_ascii=False))
    lines.insert(TINY_MALFORMED_AFTER, TINY_MALFORMED_LINE)
    files["corpus.jsonl"] = "".join(line + "\n" for line in lines).encode("utf-8")

    latin1_section, md_section = _pick_sections(all_sections, (TINY_LATIN1_ANCHOR, TINY_MARKDOWN_ANCHOR))
    files["docs/empty.txt"] = b""
    files["docs/latin1.txt"] = (latin1_section.short_answer + "\n").encode("iso-8859-1")
    files["docs/notes.md"] = (
        f"# {md_section.heading}\n\n{md_section.short_answer}\n\n"
        f"_Source : FAQ Debian, section `{md_section.anchor}`._\n"
    ).encode()
    files["LICENSE.md"] = _license_md(faq_dir)

    edge_cases = [
        {
            "kind": "exact_duplicate",
            "file": "corpus.jsonl",
            "_id": duplicate_id,
            "duplicate_of": duplicate_of.doc_id,
        },
        {"kind": "malformed_json_line", "file": "corpus.jsonl", "line": TINY_MALFORMED_AFTER + 1},
        {"kind": "empty_file", "file": "docs/empty.txt"},
        {"kind": "non_utf8_encoding", "file": "docs/latin1.txt", "encoding": "iso-8859-1"},
        {"kind": "markdown", "file": "docs/notes.md"},
    ]
    counts = {
        "faq_documents": len(sections),
        "wiki_documents": len(wiki),
        "queries": sum(s.is_question for s in sections),
        "corpus_lines": len(lines),
        "other_documents": 3,
    }
    provenance = _provenance("rag-spark-tiny-fr", _sources(faq_dir), counts, files, edge_cases=edge_cases)
    return _finish(Path(out_dir), files, provenance)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m rag_spark.data.prepare {demo,tiny} --out DIR [--cache DIR] [--wiki-limit N]``."""
    parser = argparse.ArgumentParser(prog="python -m rag_spark.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["demo", "tiny"])
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--cache", type=Path, default=Path(".cache/debian-faq-fr"), help="package cache")
    parser.add_argument("--wiki-limit", type=int, default=None, help="demo only: first N Wikipedia documents")
    parser.add_argument("--language", choices=sorted(EDITIONS), default="fr", help="demo only: the FAQ's language")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.which == "tiny" and args.language != "fr":
        parser.error("tiny: the test fixture is French only")
    if args.which == "demo":
        provenance = prepare_demo(args.out, args.cache, wiki_limit=args.wiki_limit, language=args.language)
    else:
        provenance = prepare_tiny(args.out, args.cache)
    logger.info("counts: %s", provenance["counts"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
