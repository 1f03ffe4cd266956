"""Exact deduplication on normalized text: one deterministic representative per text hash."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def dedup_exact(cleaned: DataFrame, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Keeps the smallest doc_id of each group of identical normalized texts.

    Returns:
        (kept, duplicates): duplicates has doc_id, duplicate_of, similarity (1.0), method ("exact"), run_id.
    """
    w = Window.partitionBy("text_hash").orderBy("doc_id")
    ranked = cleaned.withColumn("_rank", F.row_number().over(w)).withColumn("_rep", F.first("doc_id").over(w))
    kept = ranked.where(F.col("_rank") == 1).drop("_rank", "_rep")
    duplicates = ranked.where(F.col("_rank") > 1).select(
        "doc_id",
        F.col("_rep").alias("duplicate_of"),
        F.lit(1.0).alias("similarity"),
        F.lit("exact").alias("method"),
        F.lit(run_id).alias("run_id"),
    )
    return kept, duplicates
