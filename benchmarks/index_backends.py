"""Index backends on the same chunk vectors: FAISS Flat (the exact baseline), Milvus Lite, OpenSearch.

    make opensearch && .venv/bin/python benchmarks/index_backends.py --lake reports/demo/lake \
        --config configs/demo.yaml [--out benchmarks/results/index_backends_demo]

Reads a finished run's lake with delta-rs (no Spark): this model's `embeddings` joined with `chunks`, the
questions, qrels and duplicates. Encodes the questions once, builds every backend from the same Arrow batches
(`rag_spark.index.backends.sync`, a full build), then asks every question one at a time (what one user waits):

- recall@10 of the chunk ids against FAISS Flat's exact top 10 (the approximation a backend adds),
- MRR@10 / nDCG@10 / recall@10 of documents against the gold qrels (rag_spark.evaluate.retrieval, ir-measures),
- build seconds, query latency p50/p95 (ms), size on disk (bytes the engine reports; FAISS: the index file).

All numbers of one run come from the same machine in the same process; the speed ratios are against FAISS Flat
measured in the same run. OpenSearch runs on a node this script starts (rag_spark.index.opensearch_node).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rag_spark.config import MilvusConfig, OpenSearchConfig, load_config  # noqa: E402
from rag_spark.embed.models import model_id  # noqa: E402
from rag_spark.evaluate.retrieval import latency_percentiles, per_query_metrics  # noqa: E402
from rag_spark.evaluate.run import effective_qrels  # noqa: E402
from rag_spark.index.backends import COLUMNS, MilvusIndex, OpenSearchIndex, sync  # noqa: E402
from rag_spark.retrieve.fusion import reciprocal_rank_fusion  # noqa: E402

log = logging.getLogger("bench.index_backends")
K = 10
DEPTH = 30  # chunks fetched per question before collapsing to documents (retrieve.chunk_headroom 3 x k 10)


def read_lake(lake: Path, mid: str) -> dict[str, Any]:
    from deltalake import DeltaTable

    def table(name: str) -> pa.Table:
        return DeltaTable(str(lake / name)).to_pyarrow_table()

    emb = table("embeddings")
    emb = emb.filter(pc.equal(emb.column("model_id"), mid)).select(["chunk_id", "chunk_key", "text_hash", "vector"])
    chunks = table("chunks").select(["chunk_id", "doc_id", "title", "text"])
    # Arrow joins carry no list columns: join the ids, then take the vectors by row number
    emb = emb.append_column("_row", pa.array(np.arange(emb.num_rows)))
    joined = emb.drop_columns(["vector"]).join(chunks, "chunk_id").sort_by("chunk_id")
    vectors = emb.column("vector").take(joined.column("_row"))
    rows = joined.append_column("vector", vectors).select(COLUMNS)
    if rows.num_rows == 0:
        raise SystemExit(f"{lake}: no embeddings of model {mid}; run the pipeline's embed stage first")
    queries = table("queries").to_pandas().sort_values("query_id")
    qrels = table("qrels").to_pandas()
    dups = table("duplicates").to_pandas()
    return {"rows": rows, "queries": queries, "qrels": effective_qrels(qrels, dups)}


def batches_of(rows: pa.Table, size: int = 2000) -> Callable[[set[str] | None], Iterator[pa.Table]]:
    def batches(only: set[str] | None) -> Iterator[pa.Table]:
        t = rows if only is None else rows.filter(pc.is_in(rows.column("chunk_id"), pa.array(sorted(only))))
        for b in t.to_batches(max_chunksize=size):
            yield pa.Table.from_batches([b])

    return batches


def doc_run(qids: list[str], hits: list[np.ndarray], key_to_doc: dict[int, str]) -> pd.DataFrame:
    """Chunk keys per question -> the top-K documents (each at its best chunk's rank)."""
    out = []
    for qid, keys in zip(qids, hits, strict=True):
        seen: list[str] = []
        for k in keys:
            d = key_to_doc.get(int(k))
            if d is not None and d not in seen:
                seen.append(d)
        out += [(qid, d, r) for r, d in enumerate(seen[:K], start=1)]
    return pd.DataFrame(out, columns=["query_id", "doc_id", "rank"])


def measure(
    name: str,
    search_one: Callable[[int], np.ndarray],
    n_queries: int,
    exact: list[np.ndarray],
    ctx: dict[str, Any],
    build_s: float,
    size: int | None,
) -> dict[str, Any]:
    hits, lat = [], []
    for i in range(n_queries):
        t0 = time.perf_counter()
        keys = search_one(i)
        lat.append((time.perf_counter() - t0) * 1000.0)
        hits.append(keys)
    overlap = [len(set(h[:K].tolist()) & set(e[:K].tolist())) / K for h, e in zip(hits, exact, strict=True)]
    run = doc_run(ctx["qids"], hits, ctx["key_to_doc"])
    m = per_query_metrics(ctx["qrels"], run, [1, 5, 10], 10).drop(columns="query_id").mean()
    row = {
        "backend": name,
        "recall@10_vs_flat": float(np.mean(overlap)),
        "mrr@10": float(m["mrr@10"]),
        "ndcg@10": float(m["ndcg@10"]),
        "recall@10": float(m["recall@10"]),
        "build_s": round(build_s, 2),
        **{k: round(v, 2) for k, v in latency_percentiles(np.array(lat)).items() if k != "latency_ms_p99"},
        "disk_bytes": size,
    }
    log.info("%s", row)
    return row


def markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml", help="the run's config (encoder, metric)")
    ap.add_argument("--lake", required=True, help="lake of a finished run (embeddings, chunks, queries, qrels)")
    ap.add_argument("--out", default="benchmarks/results/index_backends_demo")
    ap.add_argument("--skip", default="", help="comma-separated backends to leave out (milvus, opensearch)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import faiss

    from rag_spark.embed.encoders import build_encoder

    # One question at a time has no parallelism to use; OpenMP threads spinning on a loaded 2-core machine would
    # only add noise (this also holds for the FAISS inside Milvus Lite, same process).
    faiss.omp_set_num_threads(1)
    cfg = load_config(args.config)
    mid = model_id(cfg.embed.model)
    data = read_lake(Path(args.lake), mid)
    rows, queries = data["rows"], data["queries"]
    vecs = np.stack(rows.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    keys = rows.column("chunk_key").to_numpy()
    dim, metric = vecs.shape[1], cfg.index.metric
    t0 = time.perf_counter()
    qv = build_encoder(cfg.embed).encode_queries(queries["text"].tolist()).astype(np.float32)
    log.info("%d chunks x %d, %d questions encoded in %.1f s", len(keys), dim, len(qv), time.perf_counter() - t0)
    ctx = {
        "qids": queries["query_id"].tolist(),
        "qrels": data["qrels"],
        "key_to_doc": dict(zip(keys.tolist(), rows.column("doc_id").to_pylist(), strict=True)),
    }
    table_keys = dict(zip(rows.column("chunk_id").to_pylist(), rows.column("text_hash").to_pylist(), strict=True))
    tmp = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    results = []

    # FAISS Flat: the exact baseline (what the pipeline's `Flat` shards hold, here in one index)
    t0 = time.perf_counter()
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim))
    flat.add_with_ids(vecs, keys)
    build = time.perf_counter() - t0
    faiss.write_index(flat, str(tmp / "flat.faiss"))
    exact = [flat.search(qv[i : i + 1], DEPTH)[1][0] for i in range(len(qv))]
    results.append(
        measure("faiss Flat", lambda i: flat.search(qv[i : i + 1], DEPTH)[1][0], len(qv), exact, ctx, build,
                (tmp / "flat.faiss").stat().st_size)
    )  # fmt: skip
    t0 = time.perf_counter()
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(vecs, keys)
    faiss.downcast_index(hnsw.index).hnsw.efSearch = cfg.index.ef_search  # as the pipeline searches HNSW
    build = time.perf_counter() - t0
    faiss.write_index(hnsw, str(tmp / "hnsw.faiss"))
    name = f"faiss HNSW32 ef{cfg.index.ef_search}"
    results.append(
        measure(name, lambda i: hnsw.search(qv[i : i + 1], DEPTH)[1][0], len(qv), exact, ctx, build,
                (tmp / "hnsw.faiss").stat().st_size)
    )  # fmt: skip

    def run_backend(name: str, index: Any, lexical: bool = False) -> None:
        rep = sync(index, batches_of(rows), table_keys, dim=dim, incremental=False, rebuild_fraction=1.0,
                   sample_texts=rows.column("text").to_pylist()[:2000])  # fmt: skip
        size = index.stats().bytes
        results.append(
            measure(name, lambda i: index.search(qv[i : i + 1], DEPTH).ids[0], len(qv), exact, ctx, rep.seconds, size)
        )
        if lexical:
            texts = queries["text"].tolist()
            results.append(
                measure(name.split()[0] + " bm25", lambda i: index.search_text(texts[i], DEPTH)[0], len(qv), exact,
                        ctx, rep.seconds, size)
            )  # fmt: skip

            def hybrid(i: int) -> np.ndarray:
                d = index.search(qv[i : i + 1], DEPTH).ids[0]
                b = index.search_text(texts[i], DEPTH)[0]
                return reciprocal_rank_fusion([d[d >= 0], b], k=60.0, weights=[0.5, 0.5])[0][:DEPTH]

            results.append(measure(name.split()[0] + " hybrid (RRF)", hybrid, len(qv), exact, ctx, rep.seconds, size))

    skip = set(filter(None, args.skip.split(",")))
    if "milvus" not in skip:
        for itype, params in (("FLAT", {}), ("IVF_FLAT", {"nlist": 128})):
            mcfg = MilvusConfig(index_type=itype, params=params, search_params={"nprobe": 16} if params else {})
            idx = MilvusIndex(mcfg, metric, mid, tmp / f"milvus-{itype}.db")
            try:
                run_backend(f"milvus-lite {itype}", idx)
            finally:
                idx.close()
    if "opensearch" not in skip:
        from rag_spark.index.opensearch_node import LocalOpenSearch

        with LocalOpenSearch(heap="1g") as node:
            for dense in ("knn", "exact"):
                ocfg = OpenSearchConfig(url=node.url, index=f"bench_{dense}", dense=dense, language="auto")
                idx = OpenSearchIndex(ocfg, metric, mid)
                try:
                    run_backend(f"opensearch {dense}", idx, lexical=dense == "knn")
                finally:
                    idx.close()

    df = pd.DataFrame(results)
    base = df.iloc[0]
    df["latency_p50_vs_flat"] = (df["latency_ms_p50"] / base["latency_ms_p50"]).round(1)
    meta = {"chunks": len(keys), "dim": dim, "questions": len(qv), "model": mid, "lake": str(args.lake), "k": K,
            "depth": DEPTH, "command": " ".join(sys.argv)}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": df.to_dict("records")}, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        f"# Index backends on {len(keys)} chunks x {dim} ({mid}), {len(qv)} questions\n\n" + markdown(df)
    )
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
