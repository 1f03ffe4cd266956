"""The QA set of a dataset folder: queries.jsonl, qrels/test.tsv and answers.jsonl (BEIR conventions)."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


def read_queries(spark: SparkSession, dataset: str) -> DataFrame:
    """`queries.jsonl` (`_id`, `text`) -> query_id, text. Lines without an id or text are an error.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: naming the file and the number of bad lines.
    """
    path = Path(dataset) / "queries.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"dataset {dataset}: missing queries.jsonl")
    df = (
        spark.read.schema("_id string, text string, _corrupt_record string")
        .option("columnNameOfCorruptRecord", "_corrupt_record")
        .json(str(path.resolve()))
    )
    df = df.cache()
    bad = df.where(F.col("_id").isNull() | F.col("text").isNull() | F.col("_corrupt_record").isNotNull()).count()
    if bad:
        raise ValueError(f"{path}: {bad} line(s) are not JSON objects with string '_id' and 'text'")
    return df.select(F.col("_id").alias("query_id"), F.col("text")).dropDuplicates(["query_id"])


def read_qrels(spark: SparkSession, dataset: str, split: str = "test") -> DataFrame:
    """`qrels/<split>.tsv` (header query-id, corpus-id, score) -> query_id, doc_id, score.

    Raises:
        FileNotFoundError: if the file is missing.
    """
    path = Path(dataset) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"dataset {dataset}: missing qrels/{split}.tsv")
    df = (
        spark.read.option("header", "true")
        .option("sep", "\t")
        .schema("`query-id` string, `corpus-id` string, score int")
        .csv(str(path.resolve()))
    )
    return df.select(
        F.col("`query-id`").alias("query_id"),
        F.col("`corpus-id`").alias("doc_id"),
        F.coalesce(F.col("score"), F.lit(1)).alias("score"),
    ).where(F.col("query_id").isNotNull() & F.col("doc_id").isNotNull())


def read_answers(spark: SparkSession, dataset: str) -> DataFrame:
    """`answers.jsonl` (`_id`, `answer`) -> query_id, answer; empty when the file is absent."""
    path = Path(dataset) / "answers.jsonl"
    if not path.is_file():
        return spark.createDataFrame([], "query_id string, answer string")
    df = spark.read.schema("_id string, answer string").json(str(path.resolve()))
    return (
        df.where(F.col("_id").isNotNull() & F.col("answer").isNotNull())
        .select(F.col("_id").alias("query_id"), "answer")
        .dropDuplicates(["query_id"])
    )


_ID_FIELDS = ("_id", "query_id", "id")
_TEXT_FIELDS = ("text", "question")


def read_question_file(spark: SparkSession, path: str | Path) -> DataFrame:
    """A questions file for batch QA -> query_id, text (read lazily by Spark, never collected).

    `.jsonl`/`.json`: one object per line with an id (`_id`, `query_id` or `id`) and a question (`text` or
    `question`). `.tsv`/`.txt`: `id<TAB>question` per line, no header.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file and the number of lines without an id or a question, or of duplicate ids.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"qa.questions: questions file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        fields = ", ".join(f"`{f}` string" for f in (*_ID_FIELDS, *_TEXT_FIELDS))
        raw = (
            spark.read.schema(f"{fields}, _corrupt_record string")
            .option("columnNameOfCorruptRecord", "_corrupt_record")
            .json(str(p.resolve()))
        )
        df = raw.select(
            F.coalesce(*[F.col(f"`{f}`") for f in _ID_FIELDS]).alias("query_id"),
            F.coalesce(*[F.col(f) for f in _TEXT_FIELDS]).alias("text"),
            F.col("_corrupt_record").isNotNull().alias("_bad"),
        )
        expected = "JSON objects with an id (_id/query_id/id) and a question (text/question)"
    elif suffix in {".tsv", ".txt"}:
        raw = spark.read.text(str(p.resolve()))
        parts = F.split(F.col("value"), "\t", 2)
        df = raw.where(F.trim("value") != "").select(
            F.get(parts, 0).alias("query_id"), F.get(parts, 1).alias("text"), F.lit(False).alias("_bad")
        )
        expected = "'id<TAB>question' lines"
    else:
        raise ValueError(f"qa.questions: {p} must be .jsonl/.json or .tsv/.txt, not {suffix or 'no extension'!r}")
    df = df.withColumn("query_id", F.trim("query_id")).withColumn("text", F.trim("text"))
    df = df.cache()
    bad = df.where(
        F.col("_bad") | F.col("query_id").isNull() | (F.col("query_id") == "") | F.col("text").isNull()
        | (F.col("text") == "")
    ).count()  # fmt: skip
    if bad:
        df.unpersist()
        raise ValueError(f"{p}: {bad} line(s) are not {expected}")
    dups = df.groupBy("query_id").count().where("count > 1").count()
    if dups:
        df.unpersist()
        raise ValueError(f"{p}: {dups} question id(s) appear more than once")
    return df.select("query_id", "text")
