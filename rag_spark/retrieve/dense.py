"""Chunk hits -> documents: what every retriever's output goes through before `retrievals`."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def collapse_to_documents(hits: DataFrame, chunks: DataFrame, k: int) -> DataFrame:
    """Chunk hits -> the top-k documents per question, each with its best chunk (rank 1 = best).

    Args:
        hits: query_id, chunk_rank, chunk_key, score, latency_ms.
        chunks: the chunks table (chunk_key -> chunk_id, doc_id).
    """
    joined = hits.join(chunks.select("chunk_key", "chunk_id", "doc_id"), "chunk_key")
    best = Window.partitionBy("query_id", "doc_id").orderBy("chunk_rank")
    per_doc = joined.withColumn("_n", F.row_number().over(best)).where(F.col("_n") == 1).drop("_n")
    order = Window.partitionBy("query_id").orderBy("chunk_rank")
    ranked = per_doc.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)
    return ranked.select(
        "query_id", F.col("rank").cast("int"), "doc_id", "chunk_id", F.col("score").cast("double"), "latency_ms"
    )
