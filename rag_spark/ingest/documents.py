"""Documents from every configured source -> rows for `bronze`, quarantine rows, and the `sources` state.

Sources: the dataset folder (`docs/` and the corpus file), more file sources (folders, files, globs), JDBC
tables/queries and paginated HTTP JSON APIs (`ingest.sources`). Pure functions over DataFrames: no table is
written here; the pipeline reads the previous state from the lake and merges what `collect` returns.

Incremental runs: a file whose size and modification time (its fingerprint) and the ingest config are those
recorded in `sources` by the previous run is not read again; its bronze and quarantine rows are carried over,
so one MERGE leaves bronze equal to the current snapshot without rereading unchanged files. Databases and
APIs with a watermark (`incremental_column`, `since_param`) are read from their stored watermark on, and APIs
answering conditional requests not at all when unchanged (HTTP 304); their other bronze and quarantine rows are
carried over the same way, a row read again replacing its carried version. A source whose definition changed
(`identity_hash`) is read in full. What a watermark cannot see (a row deleted in the database, an API record
without a modification value) stays until a full read (`--full-refresh`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from rag_spark.config import FilesSource, HttpSource, IngestConfig, JdbcSource
from rag_spark.ingest.files import BAD_SCHEMA, DOCS_SCHEMA, FieldMap, FileEntry, list_files, read_file_entries
from rag_spark.ingest.state import RemoteRead, SourceState, identity_hash
from rag_spark.schema import BRONZE, SOURCE_STATE, SOURCES

log = logging.getLogger(__name__)

DOCS_SCHEMA_COLS = ["doc_id", "source_uri", "format", "title", "raw_text", "size_bytes"]


def quarantine_rows(df: DataFrame, run_id: str) -> DataFrame:
    """Bad-row frames (source_uri, record_id, reason, detail, snippet) as `quarantine` rows of the ingest stage."""
    return df.select(
        F.lit("ingest").alias("stage"),
        "source_uri",
        "record_id",
        "reason",
        "detail",
        F.substring(F.coalesce("snippet", F.lit("")), 1, 300).alias("snippet"),
        F.lit(run_id).alias("run_id"),
    )


@dataclass(frozen=True)
class PreviousIngest:
    """What the previous ingest left: bronze, its ingest-stage quarantine rows, the `sources` table and the
    database/API sources' `source_state` (None: none stored, every such source is read in full)."""

    bronze: DataFrame
    quarantine: DataFrame
    sources: DataFrame
    source_state: DataFrame | None = None


@dataclass
class Collected:
    """Rows for bronze (new + carried over), ingest quarantine rows, `sources` rows and counts; for database and
    API sources, how each was read (`remote`) and their `source_state` rows to merge once bronze committed.
    `cached` frames hold rows read from databases: unpersist them after the merges."""

    docs: DataFrame
    quarantine: DataFrame
    sources: DataFrame
    stats: dict[str, int] = field(default_factory=dict)
    remote: list[dict[str, object]] = field(default_factory=list)
    source_state: DataFrame | None = None
    cached: list[DataFrame] = field(default_factory=list)


@dataclass
class _FileSet:
    entries: list[FileEntry]
    fields: FieldMap


def _file_sets(spark: SparkSession, dataset: str, cfg: IngestConfig) -> list[_FileSet]:
    sets: list[_FileSet] = []
    base = FieldMap(cfg.id_field, cfg.title_field, cfg.text_field)
    if cfg.include_dataset:
        root = Path(dataset)
        docs_dir = root / cfg.docs_subdir
        corpus = root / cfg.corpus_file
        if not docs_dir.is_dir() and not corpus.is_file() and not cfg.sources:
            raise FileNotFoundError(
                f"dataset {dataset}: found neither a '{cfg.docs_subdir}/' folder nor '{cfg.corpus_file}' "
                "(expected a BEIR-style folder), and ingest.sources is empty"
            )
        entries = list_files(spark, str(corpus)) if corpus.is_file() else []
        if docs_dir.is_dir():
            entries += list_files(spark, str(docs_dir))
        sets.append(_FileSet(entries, base))
    for src in cfg.sources:
        if isinstance(src, FilesSource):
            fields = FieldMap(
                src.id_field or cfg.id_field,
                src.title_field or cfg.title_field,
                src.text_field or cfg.text_field,
                src.name,
                src.csv_delimiter,
                src.csv_multiline,
            )
            entries = [e for p in src.paths for e in list_files(spark, p, src.name)]
            sets.append(_FileSet(entries, fields))
    # A file named by two sources is read once, by the first.
    seen: set[str] = set()
    for fs in sets:
        fs.entries = [e for e in fs.entries if not (e.path in seen or seen.add(e.path))]  # type: ignore[func-returns-value]
    return sets


def _ms_to_ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def collect(
    spark: SparkSession,
    dataset: str,
    cfg: IngestConfig,
    run_id: str,
    *,
    previous: PreviousIngest | None = None,
    config_hash: str = "",
) -> Collected:
    """Reads every source (only changed files when `previous` is given) into bronze and quarantine rows.

    Args:
        previous: the lake's current bronze, ingest quarantine and sources; None reads everything.
        config_hash: the ingest config's hash; files recorded under another hash are read again.

    Raises:
        FileNotFoundError: if a configured path does not exist, or the dataset has no documents and no
            source is configured.
        IngestError: if a database or API source cannot be read (nothing is merged then).
    """
    sets = _file_sets(spark, dataset, cfg)
    prev: dict[str, tuple[str | None, str, str]] = {}
    forced: set[str] = set()
    if previous is not None and cfg.incremental:
        prev = {
            r.source_uri: (r.fingerprint, r.config_hash, r.run_id)
            for r in previous.sources.where(F.col("kind") == "file")
            .select("source_uri", "fingerprint", "config_hash", "run_id")
            .collect()
        }
        # Duplicate ids are decided across files: files involved are read again so the choice is remade.
        forced = {
            r.source_uri
            for r in previous.quarantine.where(F.col("reason") == "duplicate id")
            .select("source_uri")
            .distinct()
            .collect()
        }
    source_rows: list[tuple[str, str, str | None, int | None, datetime | None, str, str]] = []
    unchanged: list[str] = []
    docs = spark.createDataFrame([], DOCS_SCHEMA)
    bad = spark.createDataFrame([], BAD_SCHEMA)
    n_listed = n_read = 0
    carried_docs: list[DataFrame] = []
    carried_bad: list[DataFrame] = []
    for fs in sets:
        todo = []
        for e in fs.entries:
            n_listed += 1
            before = prev.get(e.path)
            if before is not None and before[:2] == (e.fingerprint, config_hash) and e.path not in forced:
                unchanged.append(e.path)
                source_rows.append(
                    (e.path, "file", e.fingerprint, e.length, _ms_to_ts(e.modified_ms), config_hash, before[2])
                )
            else:
                todo.append(e)
                source_rows.append(
                    (e.path, "file", e.fingerprint, e.length, _ms_to_ts(e.modified_ms), config_hash, run_id)
                )
        n_read += len(todo)
        if todo:
            d, b = read_file_entries(spark, todo, fs.fields, extensions=cfg.extensions, max_bytes=cfg.max_bytes)
            docs, bad = docs.unionByName(d), bad.unionByName(b)
    states: dict[str, SourceState] = {}
    if previous is not None and cfg.incremental and previous.source_state is not None:
        states = {r["source_name"]: SourceState.from_row(r) for r in previous.source_state.collect()}
    reads: list[RemoteRead] = []
    for src in cfg.sources:
        if not isinstance(src, (JdbcSource, HttpSource)):
            continue
        before_state = states.get(src.name)
        if before_state is not None and before_state.identity_hash != identity_hash(src):
            log.info("%s source %s: its definition changed since the last run: full read", src.kind, src.name)
            before_state = None
        if isinstance(src, JdbcSource):
            from rag_spark.ingest.jdbc import read_jdbc_since

            got = read_jdbc_since(spark, src, before_state)
        else:
            from rag_spark.ingest.http import read_http_since

            got = read_http_since(spark, src, before_state)
        reads.append(got)
        if got.mode != "full" and previous is not None:
            # Rows not read again stay as bronze/quarantine hold them; a row read again replaces its old version.
            keys = got.docs.select(F.col("doc_id").alias("_k")).unionByName(
                got.bad.select(F.col("record_id").alias("_k"))
            )
            old_docs = previous.bronze.where(F.col("source_uri") == got.uri).select(*BRONZE.schema.fieldNames())
            old_bad = previous.quarantine.where(F.col("source_uri") == got.uri)
            carried_docs.append(old_docs.join(keys, old_docs["doc_id"] == keys["_k"], "left_anti"))
            carried_bad.append(old_bad.join(keys, old_bad["record_id"] == keys["_k"], "left_anti"))
        docs, bad = docs.unionByName(got.docs), bad.unionByName(got.bad)
        source_rows.append((got.uri, src.kind, None, None, None, config_hash, run_id))
    n_remote = len(reads)
    docs = docs.select(*DOCS_SCHEMA_COLS, F.sha2("raw_text", 256).alias("content_hash"), F.lit(run_id).alias("run_id"))
    # Identical bad records of one source (the same malformed line twice) are one quarantine row.
    quarantine = quarantine_rows(bad, run_id).dropDuplicates(["stage", "source_uri", "record_id"])
    if unchanged and previous is not None:
        keep = F.broadcast(spark.createDataFrame([(u,) for u in unchanged], "source_uri string"))
        carried = previous.bronze.join(keep, "source_uri", "left_semi").select(*BRONZE.schema.fieldNames())
        docs = docs.unionByName(carried)
        quarantine = quarantine.unionByName(
            previous.quarantine.join(keep, "source_uri", "left_semi").select(*quarantine.columns)
        )
    for old_docs in carried_docs:
        docs = docs.unionByName(old_docs)
    for old_bad in carried_bad:
        quarantine = quarantine.unionByName(old_bad.select(*quarantine.columns))
    docs, dup_q = dedup_ids(docs, run_id)
    sources = spark.createDataFrame(source_rows, SOURCES.schema)
    stats = {
        "files_listed": n_listed,
        "files_read": n_read,
        "files_unchanged": len(unchanged),
        "remote_sources": n_remote,
        "remote_rows_read": sum(r.rows_read for r in reads),
    }
    log.info("ingest: %s", stats)
    now = datetime.now(UTC).replace(tzinfo=None)
    state_rows = [
        (
            r.state.source_name, r.state.kind, r.state.source_uri, r.state.identity_hash, r.state.watermark,
            r.state.watermark_type, r.state.etag, r.state.last_modified, r.state.validators_for, r.mode,
            r.read_from, r.rows_read, run_id, now,
        )
        for r in reads
    ]  # fmt: skip
    # A record quarantined again as a duplicate id while its carried row is still there is one quarantine row.
    quarantine = quarantine.unionByName(dup_q).dropDuplicates(["stage", "source_uri", "record_id"])
    return Collected(
        docs.select(*BRONZE.schema.fieldNames()),
        quarantine,
        sources,
        stats,
        remote=[r.info() for r in reads],
        source_state=spark.createDataFrame(state_rows, SOURCE_STATE.schema),
        cached=[c for r in reads for c in r.cached],
    )


def collect_documents(spark: SparkSession, dataset: str, cfg: IngestConfig, run_id: str) -> tuple[DataFrame, DataFrame]:
    """All documents of a dataset folder and the configured sources, ready for `bronze`, and the ingest
    quarantine rows (a full read; see `collect` for incremental runs).

    Raises:
        FileNotFoundError: if the dataset has neither `docs/` nor a corpus file and no source is configured.
    """
    got = collect(spark, dataset, cfg, run_id)
    return got.docs, got.quarantine


def dedup_ids(docs: DataFrame, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Keeps one document per doc_id (the first by source, then content) and quarantines the others."""
    w = Window.partitionBy("doc_id").orderBy("source_uri", F.sha2("raw_text", 256))
    ranked = docs.withColumn("_n", F.row_number().over(w))
    kept = ranked.where(F.col("_n") == 1).drop("_n")
    dup = ranked.where(F.col("_n") > 1).select(
        "source_uri",
        F.col("doc_id").alias("record_id"),
        F.lit("duplicate id").alias("reason"),
        F.lit("another record with this id was kept").alias("detail"),
        F.col("raw_text").alias("snippet"),
    )
    return kept, quarantine_rows(dup, run_id)
