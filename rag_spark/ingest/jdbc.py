"""Documents from a database table or query through Spark's JDBC source (distributed, partitioned reads).

A query is read as a subquery (`(SELECT ...) AS src`) so that `partition_column`/`lower_bound`/`upper_bound`/
`num_partitions` split it into range queries exactly as for a table. Credentials come from environment variables
named in the config; they are passed to the JDBC driver only (Spark redacts `password` in plans and logs) and never
appear in a log line, an error message of ours or a table: `source_uri` is the URL without its parameters.

Incremental reads (`incremental_column`): the filter `column > watermark - lag` is applied to the JDBC relation
itself, so Spark pushes it into the query it sends (`SELECT ... FROM (table or query) WHERE "col" > '...'`, and
into each range query of a partitioned read). The watermark is never spliced into SQL by us: it is parsed back
into a typed Spark literal of the column's own type (a string cast, constant-folded) and Spark's JDBC dialect
renders and escapes it for the database. The rows read are cached once, so the count, the new watermark and
the documents come from one read of the database.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ByteType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    TimestampNTZType,
    TimestampType,
)

from rag_spark.config import JdbcSource
from rag_spark.ingest import IngestError
from rag_spark.ingest.state import RemoteRead, SourceState, identity_hash, larger, micros_to_iso, shifted

log = logging.getLogger(__name__)

_DRIVERS = {"postgresql": "org.postgresql.Driver", "mysql": "com.mysql.cj.jdbc.Driver", "sqlite": "org.sqlite.JDBC"}


def source_uri(src: JdbcSource) -> str:
    """Where the rows come from, without URL parameters (which may hold credentials)."""
    base = src.url.split("?", 1)[0]
    if src.table is not None:
        return f"{base}#table={src.table}"
    return f"{base}#query-sha1={hashlib.sha1(src.query.encode()).hexdigest()[:12]}"  # type: ignore[union-attr]


def _env(name: str | None, field: str, src: JdbcSource) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None:
        raise IngestError(f"jdbc source {src.name!r}: environment variable {name} ({field}) is not set")
    return value


def jdbc_reader_options(src: JdbcSource) -> dict[str, str]:
    """The options of Spark's JDBC source for `src`, credentials included (never log this dict)."""
    subprotocol = src.url.split(":", 2)[1] if src.url.count(":") >= 2 else ""
    opts = {
        "url": src.url,
        "dbtable": src.table if src.table is not None else f"({src.query}) AS rag_spark_src",
        "fetchsize": str(src.fetch_size),
        **src.options,
    }
    driver = src.driver or _DRIVERS.get(subprotocol)
    if driver:
        opts["driver"] = driver
    user = _env(src.user_env, "user_env", src)
    password = _env(src.password_env, "password_env", src)
    if user is not None:
        opts["user"] = user
    if password is not None:
        opts["password"] = password
    if src.partition_column is not None:
        opts.update(
            partitionColumn=src.partition_column,
            lowerBound=str(src.lower_bound),
            upperBound=str(src.upper_bound),
            numPartitions=str(src.num_partitions),
        )
    return opts


@contextmanager
def _py4j_quiet() -> Iterator[None]:
    """py4j logs every command it sends to the JVM at DEBUG level, option values (the password) included."""
    logger = logging.getLogger("py4j")
    level = logger.level
    logger.setLevel(max(level, logging.INFO))
    try:
        yield
    finally:
        logger.setLevel(level)


_WATERMARK_TYPES = (
    ByteType, ShortType, IntegerType, LongType, DecimalType, FloatType, DoubleType,
    TimestampType, TimestampNTZType, DateType, StringType,
)  # fmt: skip


def _canonical_max(col: str, dtype: DataType) -> F.Column:
    """The largest value of `col` as canonical watermark text (rag_spark.ingest.state)."""
    c = F.max(F.col(col))
    if isinstance(dtype, TimestampType):
        return F.unix_micros(c).cast("string")  # an instant: turned into UTC ISO text on the driver
    if isinstance(dtype, TimestampNTZType):
        return F.date_format(c, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS")
    if isinstance(dtype, DateType):
        return F.date_format(c, "yyyy-MM-dd")
    return c.cast("string")


def read_jdbc(spark: SparkSession, src: JdbcSource) -> tuple[DataFrame, DataFrame, str]:
    """A full read of the table or query: (documents, bad rows, source_uri); see `read_jdbc_since`."""
    got = read_jdbc_since(spark, src, None)
    return got.docs, got.bad, got.uri


def read_jdbc_since(spark: SparkSession, src: JdbcSource, previous: SourceState | None) -> RemoteRead:
    """Reads a table or query into documents (`<name>/<id>`); rows without id or text go to quarantine.

    With `incremental_column` and a `previous` state of the same source definition and column type, only rows
    whose column is above the stored watermark (less `watermark_lag`) are read; otherwise everything is.

    Raises:
        IngestError: if the database cannot be reached, the table/query fails, a mapped column is missing, or
            the incremental column has a type that cannot be a watermark.
    """
    uri = source_uri(src)
    opts = jdbc_reader_options(src)
    try:
        with _py4j_quiet():
            df = spark.read.format("jdbc").options(**opts).load()  # resolves the schema: connects now
    except Exception as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        if "password" in opts:
            first = first.replace(opts["password"], "***")
        raise IngestError(f"jdbc source {src.name!r} ({uri}): cannot read: {first}") from None
    columns = {c.lower(): c for c in df.columns}
    wanted = [c for c in (src.id_column, src.text_column, src.title_column, src.incremental_column) if c is not None]
    missing = [c for c in wanted if c.lower() not in columns]
    if missing:
        raise IngestError(f"jdbc source {src.name!r} ({uri}): no column {missing} among {df.columns}")
    state = SourceState(src.name, "jdbc", uri, identity_hash(src))
    mode, read_from, wm_col, wm_type = "full", None, None, None
    if src.incremental_column is not None:
        wm_col = columns[src.incremental_column.lower()]
        dtype = df.schema[wm_col].dataType
        if not isinstance(dtype, _WATERMARK_TYPES):
            raise IngestError(
                f"jdbc source {src.name!r} ({uri}): incremental_column {wm_col!r} is {dtype.simpleString()}; "
                "a watermark needs a number, date, timestamp or string column"
            )
        wm_type = dtype.simpleString()
        if isinstance(dtype, StringType) and src.watermark_lag:
            raise IngestError(f"jdbc source {src.name!r}: watermark_lag cannot apply to the string column {wm_col!r}")
        state = SourceState(src.name, "jdbc", uri, identity_hash(src), watermark_type=wm_type)
        if previous is not None and previous.watermark is not None and previous.watermark_type == wm_type:
            try:
                read_from = shifted(previous.watermark, wm_type, src.watermark_lag)
            except ValueError as err:
                raise IngestError(f"jdbc source {src.name!r}: {err}") from None
            state = SourceState(src.name, "jdbc", uri, identity_hash(src), previous.watermark, wm_type)
            # A typed literal of the column's own type: no cast on the column, so the filter is pushed down.
            df = df.where(F.col(f"`{wm_col}`") > F.lit(read_from).cast(dtype))
            mode = "incremental"
        elif previous is not None and previous.watermark is not None:
            log.info(
                "jdbc source %s: %s is now %s (stored watermark is %s): full read",
                src.name, wm_col, wm_type, previous.watermark_type,
            )  # fmt: skip
    log.info(
        "jdbc source %s: %s, %d partition(s), %s",
        src.name, uri, df.rdd.getNumPartitions(), f"rows above {read_from}" if read_from else "full read",
    )  # fmt: skip
    rec_id = F.col(f"`{columns[src.id_column.lower()]}`").cast("string")
    text = F.col(f"`{columns[src.text_column.lower()]}`").cast("string")
    title = (
        F.col(f"`{columns[src.title_column.lower()]}`").cast("string")
        if src.title_column is not None
        else F.lit(None).cast("string")
    )
    wm = F.col(f"`{wm_col}`") if wm_col is not None else F.lit(None).cast("string")
    rows = df.select(rec_id.alias("id"), title.alias("title"), text.alias("text"), wm.alias("_wm")).persist()
    agg = rows.agg(
        F.count(F.lit(1)).alias("n"),
        (_canonical_max("_wm", df.schema[wm_col].dataType) if wm_col is not None else F.lit(None)).alias("wm"),
    ).first()
    assert agg is not None
    n_read, new_max = int(agg["n"]), agg["wm"]
    if new_max is not None and wm_type == "timestamp":
        new_max = micros_to_iso(int(new_max))
    if wm_type is not None:
        state = SourceState(
            src.name, "jdbc", uri, state.identity_hash, larger(state.watermark, new_max, wm_type), wm_type
        )
    log.info("jdbc source %s: %d rows read, watermark %s", src.name, n_read, state.watermark)
    no_id = F.col("id").isNull() | (F.trim("id") == "")
    no_text = F.col("text").isNull() | (F.trim("text") == "")
    snippet = F.to_json(F.struct("id", "title", F.substring("text", 1, 200).alias("text")))
    bad = rows.where(no_id | no_text).select(
        F.lit(uri).alias("source_uri"),
        F.when(no_id, F.concat(F.lit("row-sha1:"), F.sha1(snippet)))
        .otherwise(F.concat(F.lit(f"{src.name}/"), "id"))
        .alias("record_id"),
        F.when(no_id, F.lit(f"missing id column '{src.id_column}'"))
        .otherwise(F.lit(f"missing or empty text column '{src.text_column}'"))
        .alias("reason"),
        F.lit(None).cast("string").alias("detail"),
        snippet.alias("snippet"),
    )
    docs = rows.where(~no_id & ~no_text).select(
        F.concat(F.lit(f"{src.name}/"), "id").alias("doc_id"),
        F.lit(uri).alias("source_uri"),
        F.lit("jdbc").alias("format"),
        "title",
        F.col("text").alias("raw_text"),
        F.length(F.encode("text", "UTF-8")).cast("long").alias("size_bytes"),
    )
    return RemoteRead(docs, bad, uri, mode, n_read, state, read_from, cached=[rows])
