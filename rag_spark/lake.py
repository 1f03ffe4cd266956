"""The only module that reads, writes and merges Delta tables, and records which versions each stage used.

Every write is a single Delta commit (MERGE on the table's key, or the first write that creates it), so a
crash leaves a table at its previous version and a rerun converges to the same rows. Each commit carries
`userMetadata` naming the run, stage and config hash; the `lineage` table keeps one row per stage and run
with the versions it read and wrote.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from rag_spark import storage
from rag_spark.schema import LINEAGE, Table

log = logging.getLogger(__name__)


class Lake:
    """Delta tables under one root folder: a local path, a `file:` URI or an object-store URI (`s3a://`,
    `abfss://`, `gs://`...: whatever Spark's Hadoop connectors read; `rag_spark.storage`)."""

    def __init__(self, spark: SparkSession, root: str) -> None:
        self.spark = spark
        self.root = root.rstrip("/")
        if not storage.is_remote(self.root):
            storage.local_path(self.root, "lake").mkdir(parents=True, exist_ok=True)

    def path(self, table: Table | str) -> str:
        name = table if isinstance(table, str) else table.name
        return f"{self.root}/{name}"

    def exists(self, table: Table) -> bool:
        return DeltaTable.isDeltaTable(self.spark, self.path(table))

    def version(self, table: Table) -> int | None:
        """Latest committed version, or None if the table does not exist yet."""
        if not self.exists(table):
            return None
        row = DeltaTable.forPath(self.spark, self.path(table)).history(1).select("version").first()
        return int(row["version"]) if row else None

    def read(self, table: Table, version: int | None = None) -> DataFrame:
        """Reads a table (at `version` if given). A missing table reads as empty with its schema; a table written
        by an older release reads with the nullable columns it lacks as nulls (the next merge adds them)."""
        if not self.exists(table):
            return self.spark.createDataFrame([], table.schema)
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        df = reader.load(self.path(table))
        missing = [f for f in _absent_fields(table, df.columns) if f.nullable]
        return df.withColumns({f.name: F.lit(None).cast(f.dataType) for f in missing}) if missing else df

    def merge(
        self,
        table: Table,
        df: DataFrame,
        *,
        meta: dict[str, Any],
        changed: str | None = None,
        delete_missing: str | bool = False,
    ) -> int:
        """Upserts `df` into `table` on the table's key in one commit and returns the new version.

        Args:
            table: target table (created with its schema on first write).
            df: rows to upsert; columns must match the table's schema.
            meta: written as the commit's userMetadata (run id, stage, config hash, input versions).
            changed: SQL condition over `t` (target) and `s` (source) that says a matched row changed;
                None updates every matched row.
            delete_missing: True deletes target rows absent from `df`; a SQL condition over `t` limits the
                delete to that slice (e.g. one config hash), so a rerun leaves exactly the new snapshot.
        """
        df = df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in table.schema.fields])
        with self._commit_metadata(meta), self._disk_full_is_clear(table):
            if not self.exists(table):
                # Creating the table is one commit; an empty frame still creates it with its schema.
                df.write.format("delta").mode("errorifexists").save(self.path(table))
            else:
                self._add_missing_columns(table)
                on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in table.key)
                builder = (
                    DeltaTable.forPath(self.spark, self.path(table))
                    .alias("t")
                    .merge(df.alias("s"), on)
                    .whenMatchedUpdateAll(condition=changed)
                    .whenNotMatchedInsertAll()
                )
                if delete_missing is True:
                    builder = builder.whenNotMatchedBySourceDelete()
                elif isinstance(delete_missing, str):
                    builder = builder.whenNotMatchedBySourceDelete(condition=delete_missing)
                builder.execute()
        version = self.version(table)
        assert version is not None
        log.info("%s -> version %d", table.name, version)
        return version

    def _add_missing_columns(self, table: Table) -> None:
        """Schema migration: nullable columns declared in `table` but absent from the stored table (a lake
        written by an older release) are added in one metadata-only commit before the merge. A missing column
        that is not nullable cannot be filled for old rows and is an error naming it."""
        path = self.path(table)
        missing = _absent_fields(table, self.spark.read.format("delta").load(path).columns)
        if not missing:
            return
        required = [f.name for f in missing if not f.nullable]
        if required:
            raise ValueError(f"table '{table.name}' at {path} lacks non-nullable columns {required}: rebuild it")
        cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        log.info("%s: adding columns %s (schema of an older release)", table.name, [f.name for f in missing])
        self.spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({cols})")

    @contextmanager
    def _disk_full_is_clear(self, table: Table) -> Iterator[None]:
        """A write that fails for lack of space surfaces as one OSError naming the table and its path (instead
        of a JVM stack trace many screens long). Nothing was committed: the table is at its previous version."""
        try:
            yield
        except Exception as err:
            if "No space left on device" not in str(err):
                raise
            raise OSError(
                errno.ENOSPC,
                f"writing table '{table.name}' at {self.path(table)}: No space left on device "
                "(nothing committed; the table stays at its previous version)",
            ) from None

    @contextmanager
    def _commit_metadata(self, meta: dict[str, Any]) -> Iterator[None]:
        key = "spark.databricks.delta.commitInfo.userMetadata"
        self.spark.conf.set(key, json.dumps(meta, sort_keys=True, default=str))
        try:
            yield
        finally:
            self.spark.conf.unset(key)

    def commit_metadata(self, table: Table, version: int) -> dict[str, Any]:
        """The userMetadata recorded with one commit of `table`."""
        rows = (
            DeltaTable.forPath(self.spark, self.path(table))
            .history()
            .where(F.col("version") == version)
            .select("userMetadata")
            .collect()
        )
        if not rows or not rows[0]["userMetadata"]:
            return {}
        return dict(json.loads(rows[0]["userMetadata"]))

    def record_lineage(
        self,
        *,
        run_id: str,
        stage: str,
        config_hash: str,
        inputs: dict[str, int],
        outputs: dict[str, int],
        rows: int,
        seconds: float,
    ) -> None:
        """Appends (merges) one lineage row: what a stage read and wrote, under which config."""
        row = [(run_id, stage, config_hash, inputs, outputs, rows, float(seconds), datetime.now(UTC))]
        df = self.spark.createDataFrame(row, LINEAGE.schema)
        self.merge(LINEAGE, df, meta={"run_id": run_id, "stage": "lineage"})

    # -- exports --

    def export_tsv(self, df: DataFrame, path: str, sort_by: str) -> str:
        """Writes `df` as one tab-separated file with a header, sorted by `sort_by`; returns its path.

        Spark writes a folder of parts; one sorted partition is written next to `path` and its single part
        renamed, so a reader gets one plain file and a crash never leaves a half-written `path`. Local paths (or
        `file:` URIs) only.
        """
        target = storage.local_path(path, "export_tsv")
        parts = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        (
            df.repartition(1)
            .sortWithinPartitions(sort_by)
            .write.option("sep", "\t")
            .option("header", True)
            .csv(str(parts))
        )
        try:
            (part,) = list(parts.glob("part-*"))
            part.replace(target)
        finally:
            shutil.rmtree(parts, ignore_errors=True)
        return str(target)

    # -- exchanges with Ray: plain parquet folders that are staged, then merged into Delta by Spark --

    def staging_dir(self, name: str) -> str:
        """A fresh folder for parquet files exchanged with Ray workers (never read as a table)."""
        return storage.join(self.root, "_staging", f"{name}-{uuid.uuid4().hex[:8]}")

    def write_staging(self, df: DataFrame, name: str) -> str:
        path = self.staging_dir(name)
        df.write.mode("overwrite").parquet(path)
        return path

    def read_staging(self, path: str) -> DataFrame:
        return self.spark.read.parquet(path)

    def drop_staging(self, path: str) -> None:
        """Deletes a staging folder wherever the lake is, through Spark's Hadoop file system for its scheme (the
        connector and credentials the lake is written with); a folder that is already gone is fine."""
        jvm = self.spark._jvm  # type: ignore[attr-defined]
        assert jvm is not None, "drop_staging needs a classic (JVM) SparkSession"
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        fs = hpath.getFileSystem(self.spark._jsc.hadoopConfiguration())  # type: ignore[attr-defined]
        if fs.exists(hpath) and not fs.delete(hpath, True):
            log.warning("could not delete staging folder %s", path)


def _absent_fields(table: Table, columns: list[str]) -> list[Any]:
    """The fields `table` declares that a stored table with these columns lacks (written by an older release)."""
    present = set(columns)
    return [f for f in table.schema.fields if f.name not in present]
