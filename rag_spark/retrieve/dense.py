"""Dense retrieval: encode each question, search the sharded index, keep chunk hits with their latency."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from rag_spark.embed.encoders import Encoder
from rag_spark.index.search import ShardedIndex


@dataclass(frozen=True)
class ChunkHit:
    """One chunk returned for one question."""

    query_id: str
    chunk_rank: int
    chunk_key: int
    score: float
    latency_ms: float


def search_queries(
    queries: Iterable[tuple[str, str]], encoder: Encoder, index: ShardedIndex, n_chunks: int
) -> Iterator[ChunkHit]:
    """Searches one question at a time, so each latency is what a single user would wait (encode + search)."""
    for query_id, text in queries:
        t0 = time.perf_counter()
        vec = encoder.encode_queries([text])
        res = index.search(vec, n_chunks)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        for rank, (key, score) in enumerate(zip(res.ids[0], res.scores[0], strict=True)):
            if key >= 0:
                yield ChunkHit(query_id, rank, int(key), float(score), latency_ms)


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
