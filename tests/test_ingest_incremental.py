"""Incremental ingest through the pipeline's ingest stage: reruns read nothing and add nothing, a changed file
updates exactly its row, a removed file deletes its row, and bronze is MERGEd (never duplicated)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from delta.tables import DeltaTable

from rag_spark import schema as S
from rag_spark.config import PipelineConfig
from rag_spark.pipeline import Pipeline


def _last_merge(spark, lake_root: str, table: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    row = DeltaTable.forPath(spark, f"{lake_root}/{table}").history(1).select("operation", "operationMetrics").first()
    assert row is not None and row.operation == "MERGE"
    return {k: int(v) for k, v in row.operationMetrics.items() if k.startswith("numTargetRows")}


def _dataset(tiny: Path, data: Path) -> None:
    """A small real dataset: 3 FAQ sections, the Latin-1 file, the Markdown note, the empty file, 3 corpus lines
    (one malformed), one question."""
    (data / "docs" / "faq").mkdir(parents=True)
    for name in ("gnu.html", "linux.html", "whatisfaq.html"):
        shutil.copy(tiny / "docs" / "faq" / name, data / "docs" / "faq" / name)
    for name in ("latin1.txt", "notes.md", "empty.txt"):
        shutil.copy(tiny / "docs" / name, data / "docs" / name)
    lines = (tiny / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    (data / "corpus.jsonl").write_text("\n".join([*lines[:2], '{"_id": "broken", "text": ']) + "\n", encoding="utf-8")
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "Qu\'est-ce que Debian ?"}\n', encoding="utf-8")
    (data / "qrels").mkdir()
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tfaq/gnu.html\t1\n")


@pytest.mark.slow
def test_rerun_reads_nothing_and_changes_one_row(spark, tiny_dataset: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    _dataset(tiny_dataset, data)
    cfg = PipelineConfig(dataset=str(data), out=str(tmp_path / "out"))
    first = Pipeline(cfg, spark=spark, run_id="run-1").ingest()
    lake = Pipeline(cfg, spark=spark).lake
    n_files = sum(1 for p in (data / "docs").rglob("*") if p.is_file()) + 1  # + corpus.jsonl
    assert first.info["files_read"] == first.info["files_listed"] == n_files
    n_bronze = lake.read(S.BRONZE).count()
    n_bad = lake.read(S.QUARANTINE).count()

    second = Pipeline(cfg, spark=spark, run_id="run-2").ingest()
    assert second.info["files_read"] == 0 and second.info["files_unchanged"] == n_files
    metrics = _last_merge(spark, lake.root, "bronze")
    # Nothing inserted, updated or deleted.
    assert (metrics["numTargetRowsInserted"], metrics["numTargetRowsUpdated"], metrics["numTargetRowsDeleted"]) == (
        0,
        0,
        0,
    )

    assert lake.read(S.BRONZE).count() == n_bronze
    assert lake.read(S.QUARANTINE).count() == n_bad  # the empty file and the bad JSONL line are still there
    assert {r.run_id for r in lake.read(S.BRONZE).collect()} == {"run-1"}

    # One file edited, one removed: exactly one row updated and one deleted, only the edited file read.
    changed = data / "docs" / "notes.md"
    changed.write_text(changed.read_text(encoding="utf-8") + "\nUne ligne ajoutée.\n", encoding="utf-8")
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime + 5))
    (data / "docs" / "latin1.txt").unlink()
    third = Pipeline(cfg, spark=spark, run_id="run-3").ingest()
    assert third.info["files_read"] == 1 and third.info["files_unchanged"] == n_files - 2
    metrics = _last_merge(spark, lake.root, "bronze")
    assert (metrics["numTargetRowsInserted"], metrics["numTargetRowsUpdated"], metrics["numTargetRowsDeleted"]) == (
        0,
        1,
        1,
    )
    rows = {r.doc_id: r for r in lake.read(S.BRONZE).collect()}
    assert len(rows) == n_bronze - 1 and "latin1.txt" not in rows
    assert rows["notes.md"].run_id == "run-3" and "Une ligne ajoutée." in rows["notes.md"].raw_text
    assert {r.run_id for d, r in rows.items() if d != "notes.md"} == {"run-1"}
    assert lake.read(S.SOURCES).count() == n_files - 1
    assert lake.read(S.QUARANTINE).count() == n_bad
