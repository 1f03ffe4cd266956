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
