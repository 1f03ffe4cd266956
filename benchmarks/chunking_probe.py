"""Chunk size against retrieval quality, measured on the held-out questions.

    .venv/bin/python benchmarks/chunking_probe.py --config configs/demo.yaml [--sizes 100:16,200:32,...] \
        [--others 1000] [--out benchmarks/results/chunking_demo]

The demo cuts documents into windows of 200 tokens with 32 of overlap (`chunk.size_tokens`, `chunk.overlap_tokens`),
and a document is ranked by its best chunk. 88 of the FAQ's 147 sections span 2 to 8 such chunks, and the misses are
confusions between neighbouring sections, so the window decides what a vector or a BM25 entry sees: a short one is
a precise match for one sentence, a long one keeps a section's whole context (multilingual-e5-small reads 512
tokens). Each `SIZE:OVERLAP` setting re-cuts the same documents with the chunk stage's own `split_tokens` and
tokenizer, embeds them with the configured encoder and builds BM25 with the pipeline's analyzer; `doc` is one
window per document (an encoder averages the vectors of a longer document's 512-token windows). Same smaller
haystack as benchmarks/doc2query_probe.py (every document of the gold collections + `--others` drawn with a seed),
same collapse to documents, metrics and paired comparisons as benchmarks/rerank_probes.py; the reference is the
hybrid at the lake's own setting, which reproduces the lake's chunks.
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
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAG_SPARK_PROGRESS", "0")

from benchmarks.doc2query_probe import haystack  # noqa: E402
from benchmarks.fusion_probes import DEPTH, Vectors, rrf  # noqa: E402
from benchmarks.rerank_probes import doc_run, lake_split, search_hits, summary, write_results  # noqa: E402
from benchmarks.retrieval import variant  # noqa: E402
from rag_spark import schema as S  # noqa: E402
from rag_spark.clean.chunk import load_tokenizer, split_tokens  # noqa: E402
from rag_spark.config import load_config  # noqa: E402
from rag_spark.embed.encoders import Encoder, build_encoder, passage_text  # noqa: E402
from rag_spark.embed.models import chunk_tokenizer  # noqa: E402
from rag_spark.evaluate.retrieval import per_query_metrics  # noqa: E402
from rag_spark.pipeline import Pipeline, StageResult  # noqa: E402
from rag_spark.retrieve.lexical import BM25Index  # noqa: E402
from rag_spark.retrieve.retrievers import BM25Retriever  # noqa: E402

log = logging.getLogger("bench.chunking")
WHOLE = 10**9  # the `doc` setting: one window per document


def parse_sizes(text: str) -> list[tuple[str, int, int]]:
    """`100:16,200:32,doc` -> [(name, size, overlap)]."""
    out = []
    for part in text.split(","):
        if part == "doc":
            out.append(("doc", WHOLE, 0))
            continue
        size, _, overlap = part.partition(":")
        if not size.isdigit() or not overlap.isdigit() or int(overlap) >= int(size):
            raise SystemExit(f"--sizes: {part!r} is not SIZE:OVERLAP with OVERLAP < SIZE (or 'doc')")
        out.append((part, int(size), int(overlap)))
    return out


def cut(docs: pd.DataFrame, tokenizer: object, size: int, overlap: int) -> pd.DataFrame:
    """The chunk stage's windows of `docs` (doc_id, title, text), keyed 0..n-1 in document order."""
    rows = []
    for r in docs.itertuples():
        for s, e, n in split_tokens(r.text, tokenizer, size, overlap):
            rows.append((r.doc_id, r.title, r.text[s:e], n))
    out = pd.DataFrame(rows, columns=["doc_id", "title", "text", "n_tokens"])
    out.insert(0, "chunk_key", np.arange(len(out), dtype=np.int64))
    out["chunk_id"] = out["doc_id"] + "#" + out.groupby("doc_id").cumcount().astype(str).str.zfill(4)
    return out


class CachedEncoder:
    """Passage vectors by text, shared by the settings (a short document is the same window at every size)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder, self.cache = encoder, {}  # type: ignore[var-annotated]

    def passages(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            t0 = time.perf_counter()
            self.cache.update(zip(todo, self.encoder.encode_passages(todo), strict=True))
            log.info("embedded %d new windows in %.0f s", len(todo), time.perf_counter() - t0)
        return np.stack([self.cache[t] for t in texts])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--sizes", default="100:16,200:32,300:48,400:64,500:64,doc", help="SIZE:OVERLAP,... or doc")
    ap.add_argument("--others", type=int, default=1000, help="documents drawn from outside the gold collections")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chunking_demo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    settings = parse_sizes(args.sizes)

    base = load_config(args.config)
    lake_setting = f"{base.chunk.size_tokens}:{base.chunk.overlap_tokens}"
    if lake_setting not in {name for name, _, _ in settings}:
        raise SystemExit(f"--sizes must include the lake's own setting {lake_setting} (the reference)")
    p = Pipeline(variant(base, retrieve={"retriever": "bm25"}))
    queries, heldout, all_qrels = lake_split(base, p)
    questions = [(r.query_id, r.text) for r in queries.itertuples() if r.query_id in heldout]
    qrels = all_qrels[all_qrels["query_id"].isin(heldout)]
    res = StageResult("benchmark")
    lake_chunks = p._read(S.CHUNKS, res.inputs).select("chunk_id", "doc_id", "title", "text").toPandas()
    wanted = set(haystack(lake_chunks, set(all_qrels["doc_id"]), args.others, args.seed)["doc_id"])
    silver = p._read(S.SILVER, res.inputs).select("doc_id", "title", "text").toPandas()
    docs = silver[silver["doc_id"].isin(wanted)].sort_values("doc_id").reset_index(drop=True)
    log.info("haystack: %d documents (%d chunks in the lake)", len(docs), lake_chunks["doc_id"].isin(wanted).sum())

    tokenizer = load_tokenizer(base.chunk.tokenizer or chunk_tokenizer(base.embed))
    encoder = CachedEncoder(build_encoder(base.embed))
    q_vecs = encoder.encoder.encode_queries([t for _, t in questions])
    ids = [qid for qid, _ in questions]
    runs: dict[str, dict[str, list[int]]] = {}
    frames: dict[str, Any] = {}  # Spark DataFrames: chunk_key, chunk_id, doc_id of each setting
    doc_lists: list[dict[str, list[int]]] = []  # every setting's dense and BM25 lists, as document indices
    doc_index = {d: i for i, d in enumerate(docs["doc_id"])}
    windows: dict[str, int] = {}
    for name, size, overlap in settings:
        chunks = cut(docs, tokenizer, size, overlap)
        texts = [passage_text(r.title, r.text) for r in chunks.itertuples()]
        if name == lake_setting:
            mine = set(zip(chunks["doc_id"], chunks["text"], strict=True))
            lake = lake_chunks[lake_chunks["doc_id"].isin(wanted)]
            if mine != set(zip(lake["doc_id"], lake["text"], strict=True)):
                raise SystemExit(f"re-cutting at {name} does not give the lake's chunks")
        keys = chunks["chunk_key"].to_numpy()
        vecs = Vectors(keys, encoder.passages(texts))
        depth = min(DEPTH, len(keys) - 1)
        dense = {q: vecs.search(q_vecs[i], depth) for i, q in enumerate(ids)}
        bm = search_hits(questions, BM25Retriever(BM25Index.build(keys, texts, base.retrieve.bm25)), depth)
        windows[name] = len(chunks)
        doc_of = dict(zip(keys.tolist(), chunks["doc_id"].map(doc_index), strict=True))
        doc_lists += [{q: list(dict.fromkeys(doc_of[k] for k in ranked[q])) for q in ids} for ranked in (dense, bm)]
        frames[name] = p.spark.createDataFrame(chunks[["chunk_key", "chunk_id", "doc_id"]])
        runs[f"dense e5, {name}"] = dense
        runs[f"bm25, {name}"] = bm
        runs[f"hybrid (rrf), {name}"] = {q: rrf(dense[q], bm[q]) for q in ids}
        log.info("%s: %d windows, %.0f tokens on average", name, len(chunks), chunks["n_tokens"].mean())

    def measure(run_name: str) -> pd.DataFrame:
        setting = run_name.rsplit(", ", 1)[1]
        run = doc_run(p, runs[run_name], frames[setting])
        return per_query_metrics(qrels, run, [1, 5, 10], 10).set_index("query_id")

    fused_name = "hybrid (rrf) of every setting's two lists, by document"
    fused = {q: rrf(*(lst[q] for lst in doc_lists)) for q in ids}
    fused_run = pd.DataFrame(
        [(q, docs.at[d, "doc_id"], r) for q in ids for r, d in enumerate(fused[q][:10], 1)],
        columns=["query_id", "doc_id", "rank"],
    )

    ref_name = f"hybrid (rrf), {lake_setting}"
    reference = measure(ref_name)
    rows = []
    order = [ref_name] + [n for n in runs if n != ref_name] + [fused_name]
    for name in order:
        if name == fused_name:
            pq = per_query_metrics(qrels, fused_run, [1, 5, 10], 10).set_index("query_id")
        else:
            pq = reference if name == ref_name else measure(name)
        rows.append({"name": name, **summary(pq, reference)})
        log.info("%s: MRR@10 %.3f", name, rows[-1]["mrr@10"])
    header = [
        f"Held-out questions: {len(questions)}. Haystack: {len(docs)} documents (the gold collections + "
        f"{args.others} others, seed {args.seed}), cut at each setting (SIZE:OVERLAP tokens of "
        f"the chunk stage's tokenizer, {'/'.join(Path(tokenizer.name_or_path).parts[-2:])}; doc = one window per "
        f"document): " + ", ".join(f"{n} {w} windows" for n, w in windows.items()) + f". Encoder {base.embed.model} "
        f"({base.embed.backend}); the reference is the hybrid at the lake's own setting {lake_setting}.",
    ]
    write_results(args.out, header, rows, {"windows": windows, "args": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
