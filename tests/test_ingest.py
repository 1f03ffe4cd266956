from pathlib import Path

from pyspark.sql import functions as F

from rag_spark.config import IngestConfig
from rag_spark.ingest.decode import decode_bytes, detect_format
from rag_spark.ingest.documents import collect_documents
from rag_spark.ingest.qa import read_answers, read_qrels, read_queries


def test_decode_utf8_latin1_binary_empty() -> None:
    assert decode_bytes("a.txt", "Déjà vu".encode()).text == "Déjà vu"
    latin = decode_bytes("b.txt", "Le système d'exploitation libre est gère par les développeurs".encode("latin-1"))
    assert latin.error is None and "système" in (latin.text or "")
    assert decode_bytes("c.txt", b"\x00\x01\x02binary").error == "binary content (NUL bytes)"
    assert decode_bytes("d.txt", b"").error == "empty file"
    assert decode_bytes("e.txt", b"  \n ").error == "empty file (whitespace only)"


def test_format_from_content_then_extension() -> None:
    assert detect_format("page.txt", b"  <!DOCTYPE html><html>") == "html"
    assert detect_format("notes.md", b"# title") == "md"
    assert detect_format("x.HTM", b"hello") == "html"
    assert detect_format("noext", b"hello") == "txt"


def test_collect_documents_on_tiny(spark, tiny_dataset: Path) -> None:  # type: ignore[no-untyped-def]
    docs, bad = collect_documents(spark, str(tiny_dataset), IngestConfig(), "r1")
    rows = {r.doc_id: r for r in docs.collect()}
    bad_rows = bad.collect()
    reasons = sorted(r.reason for r in bad_rows)
    assert reasons == ["empty file", "malformed JSON line"]
    assert {r.record_id for r in bad_rows if r.reason == "empty file"} == {"empty.txt"}
    # rows in = files + JSONL records = kept + quarantined
    n_files = sum(1 for p in (tiny_dataset / "docs").rglob("*") if p.is_file())
    n_lines = sum(1 for line in (tiny_dataset / "corpus.jsonl").read_text().splitlines() if line.strip())
    assert len(rows) + len(bad_rows) == n_files + n_lines
    assert "système" in rows["latin1.txt"].raw_text or "é" in rows["latin1.txt"].raw_text
    assert rows["faq/whatisfaq.html"].format == "html"
    assert rows["notes.md"].format == "md"
    assert rows["wiki/9002"].format == "jsonl" and rows["wiki/9002"].title
    assert all(len(r.content_hash) == 64 for r in rows.values())


def test_jsonl_missing_fields_and_duplicate_ids(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "a", "text": "first text of a"}\n'
        '{"_id": "a", "text": "second record reusing the id a"}\n'
        '{"text": "no id here"}\n'
        '{"_id": "c"}\n'
        "\n"
        "[1, 2]\n"
    )
    docs, bad = collect_documents(spark, str(tmp_path), IngestConfig(), "r1")
    assert [r.doc_id for r in docs.collect()] == ["a"]
    reasons = sorted(r.reason for r in bad.collect())
    assert reasons == [
        "duplicate id",
        "malformed JSON line",
        "missing id field '_id'",
        "missing or empty text field 'text'",
    ]


def test_oversized_and_unsupported_files_are_quarantined(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    docs_dir = tmp_path / "docs"
    docs_dir.mkdir()
    (docs_dir / "big.txt").write_text("x" * 5000)
    (docs_dir / "image.png").write_bytes(b"\x89PNG\r\n")
    (docs_dir / "ok dir").mkdir()
    (docs_dir / "ok dir" / "a+b.txt").write_text("a perfectly fine document")
    docs, bad = collect_documents(spark, str(tmp_path), IngestConfig(max_bytes=1000), "r1")
    assert [r.doc_id for r in docs.collect()] == ["ok dir/a+b.txt"]
    got = {r.record_id: r.reason for r in bad.collect()}
    assert got == {"big.txt": "file too large", "image.png": "unsupported format"}


def test_qa_files(spark, tiny_dataset: Path) -> None:  # type: ignore[no-untyped-def]
    q = read_queries(spark, str(tiny_dataset))
    qrels = read_qrels(spark, str(tiny_dataset))
    answers = read_answers(spark, str(tiny_dataset))
    assert q.count() == 6
    assert qrels.where(F.col("doc_id").startswith("faq/")).count() == 6
    assert answers.count() == 6
