"""File sources on real small files: every format, content sniffing, globs, and each malformed kind in quarantine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rag_spark.config import ConfigError, IngestConfig, load_config_dict
from rag_spark.ingest.decode import decode_bytes
from rag_spark.ingest.documents import collect

PDF = Path(__file__).parent / "data" / "files" / "debian-faq-fr-ch1.pdf"
FAQ_HTML = Path(__file__).parent / "data" / "tiny" / "docs" / "faq"


def _sources(*sources: dict) -> IngestConfig:
    return load_config_dict({"ingest": {"include_dataset": False, "sources": list(sources)}}).ingest


def test_real_pdf_text_and_corrupt_pdfs() -> None:
    pdf = PDF.read_bytes()
    got = decode_bytes("x.pdf", pdf)
    assert got.error is None and got.format == "pdf"
    assert "Ian Murdock" in (got.text or "") and "logiciel libre" in (got.text or "")
    # PDFium keeps word spacing (a pure-Python extractor glued these words together on this file).
    assert "Le projet Debian a été créé par Ian Murdock en 1993" in (got.text or "").replace("\n", " ")
    assert decode_bytes("noext", pdf).format == "pdf"  # by content, whatever the name
    assert (decode_bytes("x.pdf", pdf[: len(pdf) // 2]).error or "").startswith("corrupt PDF")
    assert decode_bytes("x.pdf", b"just text").error == "corrupt PDF: no %PDF- header"
    assert decode_bytes("x.txt", b"\x89PNG\r\n\x1a\n....").error == "unsupported format: PNG image content"


def _write_corpus(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("Un document texte assez long pour compter.", encoding="utf-8")
    (root / "notes.md").write_text("# Titre\n\nDu *markdown* en français.", encoding="utf-8")
    shutil.copy(next(FAQ_HTML.glob("*.html")), root / "page.html")
    (root / "sniffed.txt").write_text("<!DOCTYPE html><html><body><p>HTML sous un .txt</p></body></html>")
    shutil.copy(PDF, root / "faq.pdf")
    shutil.copy(PDF, root / "sub" / "no_extension")
    (root / "sub" / "deeper" / "d.txt").write_text("Deux dossiers plus bas.", encoding="utf-8")
    (root / "records.jsonl").write_text(
        '{"_id": "j1", "title": "T1", "text": "premier"}\n{"_id": "j2", "text": "second"}\n{"_id": "j3", "text": \n'
    )
    (root / "items.json").write_text('[{"_id": "k1", "text": "un"}, {"_id": "k2", "title": "x", "text": "deux"}]')
    (root / "one.json").write_text('{"_id": "k3", "text": "un seul objet"}')
    (root / "broken.json").write_text('{"_id": "k4", "text": "pas fermé"')
    (root / "table.csv").write_text(
        'id,title,text\nc1,Un,"texte, avec virgule"\nc2,Deux,"sur\ndeux lignes"\nc3,Trop,de,colonnes\nc4\n',
        encoding="utf-8",
    )
    (root / "nomap.csv").write_text("key,body\n1,hello\n")
    shutil.copy(PDF, root / "truncated.pdf")
    (root / "truncated.pdf").write_bytes(PDF.read_bytes()[:20_000])
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02\x03 binary junk")
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "archive.zip").write_bytes(b"PK\x03\x04")
    (root / "empty.md").write_bytes(b"")
    (root / ".hidden.txt").write_text("skipped: hidden")


def test_every_format_and_every_malformed_kind(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _write_corpus(tmp_path / "in")
    cfg = _sources({"kind": "files", "name": "f", "paths": [str(tmp_path / "in")]})
    got = collect(spark, str(tmp_path), cfg, "r1")
    docs = {r.doc_id: r for r in got.docs.collect()}
    bad = {r.record_id: r for r in got.quarantine.collect()}
    assert {k: v.format for k, v in docs.items() if not k.startswith("f/c")} == {
        "f/a.txt": "txt",
        "f/notes.md": "md",
        "f/page.html": "html",
        "f/sniffed.txt": "html",
        "f/faq.pdf": "pdf",
        "f/sub/no_extension": "pdf",
        "f/sub/deeper/d.txt": "txt",
        "f/j1": "jsonl",
        "f/j2": "jsonl",
        "f/k1": "json",
        "f/k2": "json",
        "f/k3": "json",
    }
    assert "Ian Murdock" in docs["f/faq.pdf"].raw_text
    assert docs["f/j1"].title == "T1" and docs["f/k2"].title == "x"
    reasons = {k: v.reason for k, v in bad.items()}
    assert reasons["f/empty.md"] == "empty file"
    assert reasons["f/truncated.pdf"].startswith("corrupt PDF")
    assert reasons["f/binary.txt"] == "binary content (NUL bytes)"
    assert reasons["f/image.txt"] == "unsupported format: PNG image content"
    assert reasons["f/archive.zip"] == "unsupported format"
    assert sorted(r for r in reasons.values() if "JSON" in r) == ["malformed JSON file", "malformed JSON line"]
    # The default id field `_id` is not a column of the CSV files: whole files are quarantined, unread.
    assert sorted(k for k, r in reasons.items() if r == "CSV header lacks the mapped columns") == [
        "csv-file:nomap.csv",
        "csv-file:table.csv",
    ]
    assert all(v.source_uri.startswith("file:") for v in bad.values())
    assert not any("hidden" in k for k in docs)
    assert got.stats["files_listed"] == got.stats["files_read"] == 18
    # Accounting: every file is a document or a quarantine row, except record files (one per record).
    records = {"records.jsonl": 3, "items.json": 2, "one.json": 1, "broken.json": 1, "table.csv": 1, "nomap.csv": 1}
    assert len(docs) + len(bad) == 18 - len(records) + sum(records.values())


def test_csv_mapping_and_ragged_rows(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _write_corpus(tmp_path / "in")
    cfg = _sources(
        {
            "kind": "files",
            "name": "t",
            "paths": [str(tmp_path / "in" / "*.csv")],
            "id_field": "id",
            "text_field": "text",
        }
    )
    got = collect(spark, str(tmp_path), cfg, "r1")
    docs = {r.doc_id: r for r in got.docs.collect()}
    assert {k: (v.title, v.raw_text) for k, v in docs.items()} == {
        "t/c1": ("Un", "texte, avec virgule"),
        "t/c2": ("Deux", "sur\ndeux lignes"),
    }
    bad = sorted((r.reason, r.snippet or "") for r in got.quarantine.collect())
    assert bad == [
        ("CSV header lacks the mapped columns", ""),
        ("ragged CSV row", "c3,Trop,de,colonnes"),
        ("ragged CSV row", "c4"),
    ]
    ragged = [r for r in got.quarantine.collect() if r.reason == "ragged CSV row"]
    assert all(r.detail == "expected 3 columns: id,title,text" for r in ragged)


def test_globs_and_missing_paths(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for d in ("x", "y", "z"):
        (tmp_path / d).mkdir()
        (tmp_path / d / f"{d}.txt").write_text(f"document {d}")
        (tmp_path / d / f"{d}.md").write_text(f"markdown {d}")
    cfg = _sources({"kind": "files", "paths": [str(tmp_path / "{x,y}" / "*.txt"), str(tmp_path / "z")]})
    got = collect(spark, str(tmp_path), cfg, "r1")
    assert sorted(r.doc_id for r in got.docs.collect()) == ["x.txt", "y.txt", "z.md", "z.txt"]
    nothing = _sources({"kind": "files", "paths": [str(tmp_path / "*.nope")]})
    assert collect(spark, str(tmp_path), nothing, "r1").docs.count() == 0
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        collect(spark, str(tmp_path), _sources({"kind": "files", "paths": [str(tmp_path / "missing-folder")]}), "r1")


def test_source_config_validation() -> None:
    def err(source: dict) -> str:
        with pytest.raises(ConfigError) as e:
            load_config_dict({"ingest": {"sources": [source]}})
        return str(e.value)

    assert "has no 'kind'" in err({"paths": ["a"]})
    assert "does not match any of the expected tags: 'files', 'jdbc', 'http'" in err({"kind": "ftp"})
    jdbc = {"kind": "jdbc", "name": "db", "url": "jdbc:postgresql://h/db", "id_column": "id", "text_column": "t"}
    assert "exactly one of table or query" in err(jdbc)
    assert "must not hold a password" in err({**jdbc, "table": "t", "url": "jdbc:postgresql://h/db?password=x"})
    assert "partition_column, lower_bound and upper_bound together" in err({**jdbc, "table": "t", "lower_bound": 1})
    assert "must name an environment variable" in err({**jdbc, "table": "t", "password_env": "not a var"})
    assert "url must start with http" in err({"kind": "http", "name": "a", "url": "ftp://x"})
    assert "'none', 'page', 'offset', 'cursor' or 'next_link'" in err(
        {"kind": "http", "name": "a", "url": "http://x", "pagination": "pages"}
    )
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config_dict({"ingest": {"sources": [{**jdbc, "table": "t"}, {**jdbc, "table": "u"}]}})
