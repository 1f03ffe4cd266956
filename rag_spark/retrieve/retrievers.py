"""Retrievers behind one interface: a question in, ranked chunk keys with scores out.

    dense    encoder + sharded FAISS index (rag_spark.index)
    bm25     bm25s over the chunks table (rag_spark.retrieve.lexical)
    hybrid   both, fused by reciprocal rank or weighted scores (rag_spark.retrieve.fusion)
    + rerank any of them, with the first `rerank.top_n` chunks rescored (rag_spark.retrieve.rerank)

Every retriever answers one question at a time, so the latency recorded per question is what one user waits
(encode + search + fuse + rerank), the number the report's latency charts and the p50/p95 need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rag_spark.embed.encoders import Encoder
from rag_spark.index.backends import Index
from rag_spark.index.search import ShardedIndex
from rag_spark.retrieve.fusion import minmax, reciprocal_rank_fusion, weighted_score_fusion
from rag_spark.retrieve.lexical import BM25Index
from rag_spark.retrieve.rerank import Reranker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkHit:
    """One chunk returned for one question."""

    query_id: str
    chunk_rank: int
    chunk_key: int
    score: float
    latency_ms: float


class Retriever(Protocol):
    name: str

    def search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-`n` (chunk keys int64, scores float32) for one question, best first."""
        ...


class DenseRetriever:
    """Encoder + any vector index with `search(queries, k) -> SearchResult` (FAISS shards, OpenSearch, Milvus:
    rag_spark.index.backends)."""

    name = "dense"

    def __init__(self, encoder: Encoder, index: ShardedIndex | Index) -> None:
        self.encoder = encoder
        self.index = index

    def search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        res = self.index.search(self.encoder.encode_queries([text]), n)
        keep = res.ids[0] >= 0
        return res.ids[0][keep].astype(np.int64), res.scores[0][keep].astype(np.float32)


class BM25Retriever:
    name = "bm25"

    def __init__(self, index: BM25Index) -> None:
        self.index = index

    def search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(text, n)


class HybridRetriever:
    """Dense + BM25, each searched `depth` deep, fused (see rag_spark.retrieve.fusion)."""

    name = "hybrid"

    def __init__(
        self, dense: Retriever, lexical: Retriever, method: str, dense_weight: float, rrf_k: float, depth: int
    ) -> None:
        self.dense, self.lexical = dense, lexical
        self.method, self.dense_weight, self.rrf_k, self.depth = method, dense_weight, rrf_k, depth

    def search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        depth = max(n, self.depth)
        d = self.dense.search(text, depth)
        b = self.lexical.search(text, depth)
        weights = [self.dense_weight, 1.0 - self.dense_weight]
        if self.method == "rrf":
            keys, scores = reciprocal_rank_fusion([d[0], b[0]], k=self.rrf_k, weights=weights)
        else:
            keys, scores = weighted_score_fusion([d, b], weights)
        return keys[:n], scores[:n].astype(np.float32)


class RerankedRetriever:
    """A first-stage retriever whose first `top_n` chunks are reordered by a reranker; the chunks below `top_n`
    keep their first-stage order after them."""

    def __init__(
        self,
        first: Retriever,
        reranker: Reranker,
        passages: Callable[[np.ndarray], list[str]],
        top_n: int,
        blend: float = 0.0,
    ) -> None:
        self.first, self.reranker, self.passages = first, reranker, passages
        self.top_n, self.blend = top_n, blend
        self.name = f"{first.name}+rerank"

    def search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        keys, first_scores = self.first.search(text, max(n, self.top_n))
        head, tail = keys[: self.top_n], keys[self.top_n :]
        if len(head) == 0:
            return keys[:n], first_scores[:n]
        rr = np.asarray(self.reranker.scores(text, self.passages(head)), dtype=np.float64)
        score = (1 - self.blend) * minmax(rr) + self.blend * minmax(first_scores[: len(head)])
        # Stable: equal reranker scores keep the first-stage order.
        order = np.argsort(-score, kind="stable")
        # Reranked chunks score in [1, 2], the rest below 1 in their first-stage order: one comparable list.
        tail_scores = np.linspace(0.99, 0.0, num=len(tail), endpoint=False) if len(tail) else np.empty(0)
        out_keys = np.concatenate([head[order], tail])
        out_scores = np.concatenate([1.0 + score[order], tail_scores]).astype(np.float32)
        return out_keys[:n], out_scores[:n]


PROGRESS_EVERY_S = 30.0


def search_queries(queries: Iterable[tuple[str, str]], retriever: Retriever, n_chunks: int) -> Iterator[ChunkHit]:
    """Searches one question at a time and times each (what a single user would wait); logs progress every
    `PROGRESS_EVERY_S` seconds (a reranked retriever takes seconds per question on a CPU)."""
    started = last = time.perf_counter()
    done = 0
    for query_id, text in queries:
        t0 = time.perf_counter()
        keys, scores = retriever.search(text, n_chunks)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        for rank, (key, score) in enumerate(zip(keys, scores, strict=True)):
            yield ChunkHit(query_id, rank, int(key), float(score), latency_ms)
        done += 1
        if time.perf_counter() - last >= PROGRESS_EVERY_S:
            last = time.perf_counter()
            log.info("%s: %d questions searched in %.0f s", retriever.name, done, last - started)


class ChunkTexts:
    """chunk key -> the text a reranker reads (title + text), held on the driver for the rerank step."""

    def __init__(self, texts: Mapping[int, str]) -> None:
        self.texts = texts

    def __call__(self, keys: np.ndarray) -> list[str]:
        return [self.texts.get(int(k), "") for k in keys]
