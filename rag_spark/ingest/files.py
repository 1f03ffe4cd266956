"""Documents from files: folders (recursive), single files and Hadoop globs, on any Hadoop file system.

Listing happens on the driver through Hadoop's FileSystem (so zero-length files, which Spark's file sources skip
silently, are accounted for, and so unchanged files can be skipped before anything is read). Reading is
distributed: whole-document files (txt, md, html, pdf, or no extension) through Spark's `binaryFile` source
and a vectorized UDF that detects the format by content and decodes it; record files through Spark's own
splittable readers: JSONL (`text` + `from_json`), JSON (`multiLine` JSON: one object or an array of them)
and CSV (header row; ragged rows become quarantine rows).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from rag_spark.ingest.decode import decode_bytes, extension

log = logging.getLogger(__name__)

RECORD_FORMATS = ("jsonl", "json", "csv")
DOCS_SCHEMA = "doc_id string, source_uri string, format string, title string, raw_text string, size_bytes long"
BAD_SCHEMA = "source_uri string, record_id string, reason string, detail string, snippet string"

_DECODED = StructType(
    [
        StructField("format", StringType()),
        StructField("text", StringType()),
        StructField("encoding", StringType()),
        StructField("error", StringType()),
        StructField("title", StringType()),
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
            "title": [d.title for d in out],
        }
    )


@dataclass(frozen=True)
class FieldMap:
    """Which fields of a record file hold the id, title and text; ids get `prefix/` when a prefix is set."""

    id_field: str
    title_field: str
    text_field: str
    prefix: str | None = None
    csv_delimiter: str = ","
    csv_multiline: bool = True


@dataclass(frozen=True)
class FileEntry:
    """One listed file: Hadoop path string (the `source_uri`), size, modification time, document id."""

    path: str
    length: int
    modified_ms: int
    doc_id: str
    problem: tuple[str, str] | None = None
    """(reason, detail) when the file must not be read (a symlink loop, a link out of the input root)."""

    @property
    def fingerprint(self) -> str:
        return f"{self.length}:{self.modified_ms}"

    @property
    def ext(self) -> str:
        return extension(self.path)


def to_uri(path: str) -> str:
    """A local path as a `file:` path for Hadoop; URIs (s3a://, hdfs://, file:) pass unchanged.

    Not `Path.as_uri()`: it percent-escapes glob characters (`*` -> %2A), and Hadoop expects them raw.
    """
    if "://" in path or path.startswith("file:"):
        return path
    return "file:" + os.path.abspath(os.path.expanduser(path))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[{")


def list_files(spark: SparkSession, pattern: str, prefix: str | None = None) -> list[FileEntry]:
    """Every file a folder (recursively), file or glob names, with the document id it gets.

    A document id is the path relative to the folder given (or matched by the glob); a file named directly
    is identified by its name. Hidden files and folders (a name starting with '.') are skipped.

    Raises:
        FileNotFoundError: when a path without glob characters does not exist.
    """
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "list_files needs a classic (JVM-backed) SparkSession"
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    hpath = jvm.org.apache.hadoop.fs.Path(to_uri(pattern))
    fs = hpath.getFileSystem(conf)
    matched = fs.globStatus(hpath)
    if matched is None or len(matched) == 0:
        if _is_glob(pattern):
            log.warning("ingest: the glob %s matches no file", pattern)
            return []
        raise FileNotFoundError(f"ingest source path not found: {pattern}")
    out: list[FileEntry] = []
    for status in matched:
        top = status.getPath()
        if status.isDirectory() and top.toUri().getScheme() == "file":
            out.extend(_walk_local(top.toString(), top.toUri().getPath(), prefix))
        elif status.isDirectory():
            root = top.toString().rstrip("/") + "/"
            it = fs.listFiles(top, True)
            while it.hasNext():
                st = it.next()
                path = st.getPath().toString()
                rel = path[len(root) :] if path.startswith(root) else st.getPath().getName()
                if any(part.startswith(".") for part in rel.split("/")):
                    continue
                out.append(FileEntry(path, int(st.getLen()), int(st.getModificationTime()), _prefixed(prefix, rel)))
        else:
            out.append(
                FileEntry(
                    top.toString(),
                    int(status.getLen()),
                    int(status.getModificationTime()),
                    _prefixed(prefix, top.getName()),
                )
            )
    return out


def _walk_local(uri: str, folder: str, prefix: str | None) -> list[FileEntry]:
    """Every file under a local folder, with symbolic links checked instead of followed blindly.

    Hadoop's recursive listing follows links, so a link to a parent folder never ends and a link to /etc reads
    files outside the input. Here a link is resolved first: a file or folder link that resolves outside the
    folder, or does not resolve at all (a loop, a dangling link), becomes an entry with a `problem` (quarantined,
    never opened); a link to a file inside the folder is read like the file; a link to a folder inside it is not
    followed (its files are listed under their real path already) and is quarantined so it is accounted for.
    """
    base = os.path.realpath(folder)
    root = uri.rstrip("/") + "/"
    out: list[FileEntry] = []

    def entry(rel: str, st: os.stat_result | None, problem: tuple[str, str] | None) -> FileEntry:
        size, mtime = (st.st_size, st.st_mtime_ns // 1_000_000) if st is not None else (0, 0)
        return FileEntry(root + rel, int(size), int(mtime), _prefixed(prefix, rel), problem)

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        rel_dir = os.path.relpath(dirpath, folder)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in [*sorted(f for f in filenames if not f.startswith(".")), *dirnames]:
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not os.path.islink(full):
                if name not in dirnames:
                    out.append(entry(rel, os.stat(full), None))
                continue
            target = os.readlink(full)
            try:
                real = os.path.realpath(full, strict=True)
            except (OSError, RuntimeError) as err:
                reason = "symlink loop" if "symbolic links" in str(err) or isinstance(err, RuntimeError) else None
                out.append(entry(rel, None, (reason or "dangling symlink", f"-> {target}")))
                continue
            if os.path.commonpath([base, real]) != base:
                out.append(entry(rel, None, ("path escapes the input root", f"symlink -> {real}, outside {base}")))
            elif os.path.isdir(real):
                out.append(entry(rel, None, ("symlinked folder not followed", f"-> {target} (inside the root)")))
            else:
                out.append(entry(rel, os.stat(real), None))
        # os.walk(followlinks=False) lists links to folders in dirnames but does not descend into them.
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def _prefixed(prefix: str | None, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _prefixed_col(prefix: str | None, col: Column) -> Column:
    return F.concat(F.lit(f"{prefix}/"), col) if prefix else col


def _bad_rows(spark: SparkSession, rows: Iterable[tuple[str, str, str, str | None]]) -> DataFrame:
    return spark.createDataFrame([(u, r, reason, d, None) for u, r, reason, d in rows], BAD_SCHEMA)


def _empty_docs(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], DOCS_SCHEMA)


def _metadata_uri() -> Column:
    """`_metadata.file_path` is URI-escaped (a space is %20); listings use the plain Hadoop path string."""
    return F.expr("url_decode(replace(_metadata.file_path, '+', '%2B'))")


def read_file_entries(
    spark: SparkSession,
    entries: list[FileEntry],
    fields: FieldMap,
    *,
    extensions: list[str],
    max_bytes: int,
) -> tuple[DataFrame, DataFrame]:
    """Reads the given files into documents; each file's problems become quarantine rows.

    Returns:
        (documents, bad): documents have doc_id, source_uri, format, title, raw_text, size_bytes; bad rows
        have source_uri, record_id, reason, detail, snippet. Every file ends up in one or both of them.
    """
    allowed = {e.lower() for e in extensions}
    rejected: list[tuple[str, str, str, str | None]] = []
    whole: list[FileEntry] = []
    records: dict[str, list[FileEntry]] = {f: [] for f in RECORD_FORMATS}
    for e in entries:
        ext = e.ext
        if e.problem is not None:
            log.warning("ingest: %s not read: %s (%s)", e.path, *e.problem)
            rejected.append((e.path, e.doc_id, *e.problem))
        elif ext and ext not in allowed:
            rejected.append((e.path, e.doc_id, "unsupported format", f"extension not in ingest.extensions: {ext}"))
        elif e.length == 0:
            rejected.append((e.path, e.doc_id, "empty file", "0 bytes"))
        elif ext in records:
            records[ext].append(e)
        elif e.length > max_bytes:
            rejected.append((e.path, e.doc_id, "file too large", f"{e.length} bytes > ingest.max_bytes={max_bytes}"))
        else:
            whole.append(e)
    parts = [
        read_whole_files(spark, whole),
        read_jsonl(spark, [e.path for e in records["jsonl"]], fields),
        read_json(spark, [e.path for e in records["json"]], fields),
        read_csv(spark, [e.path for e in records["csv"]], fields),
    ]
    docs = parts[0][0]
    bad = _bad_rows(spark, rejected)
    for d, b in parts:
        docs = docs if d is docs else docs.unionByName(d)
        bad = bad.unionByName(b)
    return docs, bad


def read_whole_files(spark: SparkSession, entries: list[FileEntry]) -> tuple[DataFrame, DataFrame]:
    """One document per file (txt, md, html, pdf, unknown): binaryFile scan + vectorized decode UDF."""
    if not entries:
        return _empty_docs(spark), _bad_rows(spark, [])
    ids = spark.createDataFrame([(e.path, e.doc_id) for e in entries], "path string, doc_id string")
    content = (
        spark.read.format("binaryFile")
        .load([e.path for e in entries])
        .join(F.broadcast(ids), "path")
        .withColumn("d", _decode(F.col("path"), F.col("content")))
        .select("path", "doc_id", "length", "d.*")
    )
    bad = content.where(F.col("error").isNotNull()).select(
        F.col("path").alias("source_uri"),
        F.col("doc_id").alias("record_id"),
        F.col("error").alias("reason"),
        F.concat_ws(" ", F.concat(F.lit("format="), "format"), F.col("encoding")).alias("detail"),
        F.lit(None).cast("string").alias("snippet"),
    )
    # A listed file the scan did not return (removed meanwhile, or hidden from Spark) is still accounted for.
    vanished = ids.join(content.select("path"), "path", "left_anti").select(
        F.col("path").alias("source_uri"),
        F.col("doc_id").alias("record_id"),
        F.lit("unreadable").alias("reason"),
        F.lit("listed but not returned by the file scan").alias("detail"),
        F.lit(None).cast("string").alias("snippet"),
    )
    docs = content.where(F.col("error").isNull()).select(
        "doc_id",
        F.col("path").alias("source_uri"),
        "format",
        "title",
        F.col("text").alias("raw_text"),
        F.col("length").alias("size_bytes"),
    )
    return docs, bad.unionByName(vanished)


def _records(
    parsed: DataFrame, fields: FieldMap, fmt: str, raw: Column, malformed: Column, malformed_reason: str
) -> tuple[DataFrame, DataFrame]:
    """Maps parsed records (struct column `j`) to documents; malformed or incomplete ones to bad rows."""
    rec_id = F.col(f"j.`{fields.id_field}`")
    title = F.col(f"j.`{fields.title_field}`")
    text = F.col(f"j.`{fields.text_field}`")
    ref = F.concat(F.lit(f"{fmt}-sha1:"), F.sha1(F.coalesce(raw, F.lit(""))))
    no_id = rec_id.isNull() | (F.trim(rec_id) == "")
    no_text = text.isNull() | (F.trim(text) == "")
    bad = parsed.where(malformed | no_id | no_text).select(
        "source_uri",
        F.when(malformed | no_id, ref).otherwise(_prefixed_col(fields.prefix, rec_id)).alias("record_id"),
        F.when(malformed, F.lit(malformed_reason))
        .when(no_id, F.lit(f"missing id field '{fields.id_field}'"))
        .otherwise(F.lit(f"missing or empty text field '{fields.text_field}'"))
        .alias("reason"),
        F.lit(None).cast("string").alias("detail"),
        raw.alias("snippet"),
    )
    docs = parsed.where(~malformed & ~no_id & ~no_text).select(
        _prefixed_col(fields.prefix, rec_id).alias("doc_id"),
        "source_uri",
        F.lit(fmt).alias("format"),
        title.alias("title"),
        text.alias("raw_text"),
        F.length(F.encode(raw, "UTF-8")).cast("long").alias("size_bytes"),
    )
    return docs, bad


def _record_schema(fields: FieldMap, extra: list[str] | None = None) -> StructType:
    names = list(dict.fromkeys([fields.id_field, fields.title_field, fields.text_field]))
    return StructType([StructField(n, StringType()) for n in names + (extra or [])])


def read_jsonl(spark: SparkSession, paths: list[str], fields: FieldMap) -> tuple[DataFrame, DataFrame]:
    """JSONL: one document per line (blank lines are not records); splittable, so large files parallelize."""
    if not paths:
        return _empty_docs(spark), _bad_rows(spark, [])
    lines = (
        spark.read.text(paths)
        .select(F.col("value").alias("line"), _metadata_uri().alias("source_uri"))
        .where(F.trim("line") != "")
        .withColumn("j", F.from_json("line", _record_schema(fields), {"mode": "PERMISSIVE"}))
    )
    cols = [F.col(f"j.`{f.name}`") for f in _record_schema(fields).fields]
    # from_json gives an all-null struct for a line that is valid JSON but not an object ([1, 2], "x").
    all_null = cols[0].isNull()
    for c in cols[1:]:
        all_null = all_null & c.isNull()
    return _records(lines, fields, "jsonl", F.col("line"), F.col("j").isNull() | all_null, "malformed JSON line")


def read_json(spark: SparkSession, paths: list[str], fields: FieldMap) -> tuple[DataFrame, DataFrame]:
    """JSON files holding one document object or an array of them (Spark's multiLine JSON reader)."""
    if not paths:
        return _empty_docs(spark), _bad_rows(spark, [])
    schema = _record_schema(fields, ["_corrupt_record"])
    df = (
        spark.read.schema(schema)
        .option("multiLine", "true")
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", "_corrupt_record")
        .json(paths)
    )
    parsed = df.select(
        F.struct(*[F.col(f"`{n}`") for n in schema.fieldNames() if n != "_corrupt_record"]).alias("j"),
        F.col("_corrupt_record"),
        _metadata_uri().alias("source_uri"),
    )
    raw = F.coalesce(F.col("_corrupt_record"), F.to_json("j"))
    return _records(parsed, fields, "json", raw, F.col("_corrupt_record").isNotNull(), "malformed JSON file")


def read_csv(spark: SparkSession, paths: list[str], fields: FieldMap) -> tuple[DataFrame, DataFrame]:
    """CSV files with a header row: one document per row. Rows with too few or too many columns (ragged) and
    files whose header lacks the id or text column are quarantined.

    Files are grouped by header (read on the driver, one line per file) so each group is parsed with its own
    columns by Spark's CSV reader.
    """
    if not paths:
        return _empty_docs(spark), _bad_rows(spark, [])
    groups: dict[tuple[str, ...], list[str]] = {}
    bad_files: list[tuple[str, str, str, str | None]] = []
    for path in paths:
        header = _csv_header(spark, path, fields.csv_delimiter)
        missing = [f for f in (fields.id_field, fields.text_field) if f not in header]
        if not header:
            bad_files.append((path, f"csv-file:{path.rsplit('/', 1)[-1]}", "malformed CSV file", "no header row"))
        elif missing:
            bad_files.append(
                (
                    path,
                    f"csv-file:{path.rsplit('/', 1)[-1]}",
                    "CSV header lacks the mapped columns",
                    f"missing {missing}; header: {list(header)[:20]}",
                )
            )
        else:
            groups.setdefault(header, []).append(path)
    docs, bad = _empty_docs(spark), _bad_rows(spark, bad_files)
    for header, group in groups.items():
        names = list(header)
        schema = StructType([StructField(n, StringType()) for n in [*names, "_corrupt_record"]])
        df = (
            spark.read.schema(schema)
            .option("header", "true")
            .option("sep", fields.csv_delimiter)
            .option("multiLine", str(fields.csv_multiline).lower())
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", "_corrupt_record")
            .csv(group)
        )
        keep = list(dict.fromkeys(n for n in (fields.id_field, fields.title_field, fields.text_field) if n in names))
        mapped = FieldMap(
            fields.id_field,
            fields.title_field if fields.title_field in names else "_no_title",
            fields.text_field,
            fields.prefix,
        )
        parsed = df.select(
            F.struct(*[F.col(f"`{n}`") for n in keep], F.lit(None).cast("string").alias("_no_title")).alias("j"),
            F.col("_corrupt_record"),
            _metadata_uri().alias("source_uri"),
        )
        raw = F.coalesce(
            F.col("_corrupt_record"), F.concat_ws(fields.csv_delimiter, *[F.col(f"j.`{n}`") for n in keep])
        )
        d, b = _records(parsed, mapped, "csv", raw, F.col("_corrupt_record").isNotNull(), "ragged CSV row")
        b = b.withColumn(
            "detail",
            F.when(
                F.col("reason") == "ragged CSV row", F.lit(f"expected {len(names)} columns: {','.join(names)[:200]}")
            ).otherwise(F.col("detail")),
        )
        docs, bad = docs.unionByName(d), bad.unionByName(b)
    return docs, bad


def _csv_header(spark: SparkSession, path: str, delimiter: str) -> tuple[str, ...]:
    """The first row of a CSV file, read through Hadoop's FileSystem (works for any supported URI)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    stream = hpath.getFileSystem(conf).open(hpath)
    try:
        reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
        line = reader.readLine()
    finally:
        stream.close()
    if line is None:
        return ()
    row = next(csv.reader([line.lstrip("\ufeff")], delimiter=delimiter), [])
    return tuple(c.strip() for c in row)
