"""Documents from a database table or query through Spark's JDBC source (distributed, partitioned reads).

A query is read as a subquery (`(SELECT ...) AS src`) so that `partition_column`/`lower_bound`/`upper_bound`/
`num_partitions` split it into range queries exactly as for a table. Credentials come from environment variables
named in the config; they are passed to the JDBC driver only (Spark redacts `password` in plans and logs) and never
appear in a log line, an error message of ours or a table: `source_uri` is the URL without its parameters.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from rag_spark.config import JdbcSource
from rag_spark.ingest import IngestError

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


def read_jdbc(spark: SparkSession, src: JdbcSource) -> tuple[DataFrame, DataFrame, str]:
    """Reads a table or query into documents (`<name>/<id>`); rows without id or text go to quarantine.

    Returns:
        (documents, bad rows, source_uri).

    Raises:
        IngestError: if the database cannot be reached, the table/query fails, or a mapped column is missing.
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
    wanted = [c for c in (src.id_column, src.text_column, src.title_column) if c is not None]
    missing = [c for c in wanted if c.lower() not in columns]
    if missing:
        raise IngestError(f"jdbc source {src.name!r} ({uri}): no column {missing} among {df.columns}")
    log.info("jdbc source %s: %s, %d partition(s)", src.name, uri, df.rdd.getNumPartitions())
    rec_id = F.col(f"`{columns[src.id_column.lower()]}`").cast("string")
    text = F.col(f"`{columns[src.text_column.lower()]}`").cast("string")
    title = (
        F.col(f"`{columns[src.title_column.lower()]}`").cast("string")
        if src.title_column is not None
        else F.lit(None).cast("string")
    )
    rows = df.select(rec_id.alias("id"), title.alias("title"), text.alias("text"))
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
    return docs, bad, uri
