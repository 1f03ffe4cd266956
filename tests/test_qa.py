"""Questions files for batch QA (`rag-spark qa --questions`): formats and the errors they raise.

The batch QA run itself (kill, resume, no duplicates) is in tests/test_pipeline_e2e.py, on the index it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_spark.ingest.qa import read_question_file


def test_jsonl_and_tsv_questions(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        '{"_id": "a", "text": " Qu\'est-ce que Debian ? "}\n{"query_id": "b", "question": "Comment ?"}\n'
        '{"id": "c", "text": "Pourquoi ?", "extra": 1}\n',
        encoding="utf-8",
    )
    rows = sorted(tuple(r) for r in read_question_file(spark, jsonl).collect())
    assert rows == [("a", "Qu'est-ce que Debian ?"), ("b", "Comment ?"), ("c", "Pourquoi ?")]
    tsv = tmp_path / "q.tsv"
    tsv.write_text("a\tQuestion avec\ttabulation ?\n\nb\tAutre ?\n", encoding="utf-8")
    rows = sorted(tuple(r) for r in read_question_file(spark, tsv).collect())
    assert rows == [("a", "Question avec\ttabulation ?"), ("b", "Autre ?")]


def test_bad_questions_files(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match=r"qa\.questions: questions file not found"):
        read_question_file(spark, tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "ok ?"}\n{"_id": "b"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: 2 line\(s\) are not JSON objects"):
        read_question_file(spark, bad)
    dup = tmp_path / "dup.tsv"
    dup.write_text("a\tun ?\na\tdeux ?\nb\ttrois ?\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dup\.tsv: 1 question id\(s\) appear more than once"):
        read_question_file(spark, dup)
    no_tab = tmp_path / "notab.tsv"
    no_tab.write_text("a question without an id\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"1 line\(s\) are not 'id<TAB>question' lines"):
        read_question_file(spark, no_tab)
    with pytest.raises(ValueError, match=r"must be \.jsonl/\.json or \.tsv/\.txt"):
        (tmp_path / "q.csv").write_text("a,b\n")
        read_question_file(spark, tmp_path / "q.csv")
