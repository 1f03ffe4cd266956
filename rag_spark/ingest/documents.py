"""Documents from a dataset folder: files under `docs/` (txt, md, html, jsonl) and records of `corpus.jsonl`.

Pure functions `(spark, paths, config) -> (documents, quarantine)`: no table is written here. Files are read by
Spark's binaryFile source (distributed; oversized files are filtered before their bytes are read) and decoded
by a vectorized UDF; JSONL lines are parsed with Spark's `from_json`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from rag_spark.config import IngestConfig
from rag_spark.ingest.decode import decode_bytes

_DECODED = StructType(
    [
        StructField("format", StringType()),
        StructField("text", StringType()),
        StructField("encoding", StringType()),
        StructField("error", StringType()),
    ]
)


@F.pandas_udf(_DECODED)  # type: ignore[call-overload]
def _decode(paths: pd.Series, contents: pd.Series) -> pd.DataFrame:
    out = [decode_bytes(p, c) for p, c in zip(paths, contents, strict=True)]
    return pd.DataFrame(
        {
            "format": [d.format for d in out],
            "text": [d.text for d in out],
            "encoding": [d.encoding for d in out],
            "error": [d.error for d in out],
        }
    )


def _uri(path: str) -> str:
    return path if "://" in path else Path(path).resolve().as_uri()


def _relative_path(root: str) -> Column:
    """The binaryFile `path` column as a path relative to `root`, percent-decoded.

    Spark writes local files as `file:/abs/path` with URI escaping (a space is %20); `+` is literal.
    """
    root_bare = (root.rstrip("/") if "://" in root else str(Path(root).resolve())) + "/"
    root_sql = root_bare.replace("'", "''")
    bare = "url_decode(replace(regexp_replace(path, '^file:(//)?', ''), '+', '%2B'))"
    return F.expr(
        f"CASE WHEN startswith({bare}, '{root_sql}') THEN substring({bare}, {len(root_bare) + 1}) ELSE {bare} END"
    )


def _quarantine(df: DataFrame, run_id: str) -> DataFrame:
    return df.select(
        F.lit("ingest").alias("stage"),
        "source_uri",
        "record_id",
        "reason",
        "detail",
        F.substring(F.coalesce("snippet", F.lit("")), 1, 300).alias("snippet"),
        F.lit(run_id).alias("run_id"),
    )


def list_files(spark: SparkSession, root: str) -> DataFrame:
    """Every file under `root` (recursively) with its size, listed through Hadoop's FileSystem.

    Spark's file sources skip zero-length files silently; listing first lets every file be accounted for.
    """
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "list_files needs a classic (JVM-backed) SparkSession"
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    top = jvm.org.apache.hadoop.fs.Path(_uri(root))
    it = top.getFileSystem(conf).listFiles(top, True)
    rows = []
    while it.hasNext():
        status = it.next()
        rows.append((status.getPath().toString(), int(status.getLen())))
    return spark.createDataFrame(rows, "path string, length long")


def read_files(spark: SparkSession, docs_root: str, cfg: IngestConfig, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Reads every file under `docs_root` (recursively) except JSONL, which `read_jsonl` handles.

    Returns:
        (documents, quarantine): documents have doc_id (path relative to docs_root), source_uri, format,
        title (None), raw_text, size_bytes; quarantine rows name the file and the reason. Every listed file
        ends up in exactly one of the two.
    """
    allowed = [e.lower() for e in cfg.extensions]
    ext = F.lower(F.regexp_extract("path", r"\.([A-Za-z0-9]+)$", 1))
    listing = (
        list_files(spark, docs_root)
        .where(~F.lower(F.col("path")).endswith(".jsonl"))
        .withColumn("doc_id", _relative_path(docs_root))
    )
    readable = (F.col("length") > 0) & (F.col("length") <= cfg.max_bytes) & ext.isin(allowed)

    def rejected(condition: Column, reason: str, detail: Column) -> DataFrame:
        return listing.where(condition).select(
            F.col("path").alias("source_uri"),
            F.col("doc_id").alias("record_id"),
            F.lit(reason).alias("reason"),
            detail.alias("detail"),
            F.lit(None).cast("string").alias("snippet"),
        )

    too_big = rejected(
        F.col("length") > cfg.max_bytes,
        "file too large",
        F.format_string(f"%d bytes > ingest.max_bytes={cfg.max_bytes}", F.col("length")),
    )
    empty = rejected(F.col("length") == 0, "empty file", F.lit("0 bytes"))
    unsupported = rejected(
        (F.col("length") > 0) & (F.col("length") <= cfg.max_bytes) & ~ext.isin(allowed),
        "unsupported format",
        F.concat(F.lit("extension not in ingest.extensions: "), ext),
    )
    # The length filter is pushed into the binaryFile scan: oversized files are never loaded.
    content = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(_uri(docs_root))
        .where(readable)
        .withColumn("doc_id", _relative_path(docs_root))
        .withColumn("d", _decode(F.col("path"), F.col("content")))
        .select("path", "doc_id", "length", "d.*")
    )
    bad = content.where(F.col("error").isNotNull()).select(
        F.col("path").alias("source_uri"),
        F.col("doc_id").alias("record_id"),
        F.col("error").alias("reason"),
        F.coalesce(F.col("encoding"), F.lit("")).alias("detail"),
        F.lit(None).cast("string").alias("snippet"),
    )
    # A listed file the scan did not return (removed or unreadable meanwhile) is still accounted for.
    vanished = rejected(readable, "unreadable", F.lit("listed but not returned by the file scan")).join(
        content.select(F.col("path").alias("source_uri")), "source_uri", "left_anti"
    )
    docs = content.where(F.col("error").isNull()).select(
        "doc_id",
        F.col("path").alias("source_uri"),
        "format",
        F.lit(None).cast("string").alias("title"),
        F.col("text").alias("raw_text"),
        F.col("length").alias("size_bytes"),
    )
    quarantine = _quarantine(
        too_big.unionByName(empty).unionByName(unsupported).unionByName(bad).unionByName(vanished), run_id
    )
    return docs, quarantine


def read_jsonl(spark: SparkSession, paths: list[str], cfg: IngestConfig, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Reads JSONL records (one document per line) with the configured id/title/text fields.

    Malformed lines and records without an id or text go to quarantine; blank lines are not records.
    """
    if not paths:
        return _empty_docs(spark), _quarantine(_empty_bad(spark), run_id)
    schema = StructType(
        [
            StructField(cfg.id_field, StringType()),
            StructField(cfg.title_field, StringType()),
            StructField(cfg.text_field, StringType()),
        ]
    )
    lines = (
        spark.read.text([_uri(p) for p in paths])
        .select(F.col("value").alias("line"), F.col("_metadata.file_path").alias("source_uri"))
        .where(F.trim("line") != "")
        .withColumn("j", F.from_json("line", schema, {"mode": "PERMISSIVE"}))
    )
    rec_id = F.col(f"j.`{cfg.id_field}`")
    text = F.col(f"j.`{cfg.text_field}`")
    line_ref = F.concat(F.lit("line-sha1:"), F.sha1("line"))
    malformed = F.col("j").isNull() | (rec_id.isNull() & text.isNull() & F.col(f"j.`{cfg.title_field}`").isNull())
    bad = lines.where(malformed | rec_id.isNull() | (F.trim(rec_id) == "") | text.isNull() | (F.trim(text) == ""))
    bad = bad.select(
        "source_uri",
        F.coalesce(rec_id, line_ref).alias("record_id"),
        F.when(malformed, F.lit("malformed JSON line"))
        .when(rec_id.isNull() | (F.trim(rec_id) == ""), F.lit(f"missing id field '{cfg.id_field}'"))
        .otherwise(F.lit(f"missing or empty text field '{cfg.text_field}'"))
        .alias("reason"),
        F.lit(None).cast("string").alias("detail"),
        F.col("line").alias("snippet"),
    )
    good = lines.where(
        ~malformed & rec_id.isNotNull() & (F.trim(rec_id) != "") & text.isNotNull() & (F.trim(text) != "")
    )
    docs = good.select(
        rec_id.alias("doc_id"),
        "source_uri",
        F.lit("jsonl").alias("format"),
        F.col(f"j.`{cfg.title_field}`").alias("title"),
        text.alias("raw_text"),
        F.length(F.encode("line", "UTF-8")).cast("long").alias("size_bytes"),
    )
    return docs, _quarantine(bad, run_id)


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
    return kept, _quarantine(dup, run_id)


def _empty_docs(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(
        [], "doc_id string, source_uri string, format string, title string, raw_text string, size_bytes long"
    )


def _empty_bad(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(
        [], "source_uri string, record_id string, reason string, detail string, snippet string"
    )


def collect_documents(spark: SparkSession, dataset: str, cfg: IngestConfig, run_id: str) -> tuple[DataFrame, DataFrame]:
    """All documents of a dataset folder, ready for `bronze`, and the ingest quarantine rows.

    Raises:
        FileNotFoundError: if the dataset has neither `docs/` nor a corpus file.
    """
    root = Path(dataset)
    docs_dir = root / cfg.docs_subdir
    corpus = root / cfg.corpus_file
    if not docs_dir.is_dir() and not corpus.is_file():
        raise FileNotFoundError(
            f"dataset {dataset}: found neither a '{cfg.docs_subdir}/' folder nor '{cfg.corpus_file}' "
            "(expected a BEIR-style folder)"
        )
    parts: list[tuple[DataFrame, DataFrame]] = []
    jsonl = [str(corpus)] if corpus.is_file() else []
    if docs_dir.is_dir():
        parts.append(read_files(spark, str(docs_dir), cfg, run_id))
        jsonl += sorted(str(p) for p in docs_dir.rglob("*.jsonl"))
    parts.append(read_jsonl(spark, jsonl, cfg, run_id))
    docs = parts[0][0]
    quarantine = parts[0][1]
    for d, q in parts[1:]:
        docs, quarantine = docs.unionByName(d), quarantine.unionByName(q)
    docs, dup_q = dedup_ids(docs, run_id)
    docs = docs.select(
        "doc_id",
        "source_uri",
        "format",
        "title",
        "raw_text",
        F.sha2("raw_text", 256).alias("content_hash"),
        "size_bytes",
        F.lit(run_id).alias("run_id"),
    )
    return docs, quarantine.unionByName(dup_q)
