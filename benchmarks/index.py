"""Index types on seeded clustered vectors: build time, QPS and recall@10 against exact (Flat) search.

For each size (default 100k and 1M, 384 dims like MiniLM/e5-small) and each FAISS factory string, the index is
built the way the pipeline builds it (`rag_spark.index.shards`: trained once on a sample, split into shards that
add their vectors with explicit int64 ids, searched through `faiss.IndexShards` with the config's nprobe/efSearch)
and compared with the exact top-10 of an unsharded Flat index in the same run. Also checks that sharded Flat
returns exactly the unsharded results. Prints a table; `--json FILE` keeps it.

    .venv/bin/python benchmarks/index.py                 # 100k and 1M (about 20 min on 2 cores)
    .venv/bin/python benchmarks/index.py --sizes 100000  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vectors import dataset

from rag_spark.config import IndexConfig
from rag_spark.index.search import set_search_params
from rag_spark.index.shards import train_index

K = 10
# (factory, search parameters to sweep). IVF lists ~ 4*sqrt(n); HNSW32 is FAISS's usual graph setting;
# SQ8 = 1 byte per dimension (4x smaller than float32); PQ48 = 48 bytes per vector (32x smaller).
CANDIDATES: list[tuple[str, list[dict[str, int]]]] = [
    ("IVF{nlist},Flat", [{"nprobe": p} for p in (8, 16, 32, 64, 128)]),
    ("IVF{nlist},SQ8", [{"nprobe": p} for p in (8, 16, 32)]),
    ("IVF{nlist},PQ48", [{"nprobe": p} for p in (16, 64)]),
    ("HNSW32", [{"ef_search": e} for e in (32, 64, 128)]),
]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / K for f, e in zip(found, exact, strict=True)]))


def sharded(
    factory: str, xb: np.ndarray, ids: np.ndarray, shards: int, train: np.ndarray
) -> tuple[faiss.Index, list[faiss.Index], float]:
    """Trained once, then one copy per shard adds its ids (as `build_shard` does), merged by IndexShards."""
    t0 = time.perf_counter()
    trained = np.frombuffer(train_index(factory, xb.shape[1], "ip", train), dtype=np.uint8)
    merged = faiss.IndexShards(xb.shape[1], True, False)
    parts = []
    for s in range(shards):
        part = faiss.deserialize_index(trained)
        sel = ids % shards == s
        part.add_with_ids(xb[sel], ids[sel])
        parts.append(part)
        merged.add_shard(part)
    return merged, parts, time.perf_counter() - t0


def qps(index: faiss.Index, xq: np.ndarray) -> tuple[float, np.ndarray]:
    index.search(xq[:100], K)  # warm-up
    t0 = time.perf_counter()
    _, found = index.search(xq, K)
    return len(xq) / (time.perf_counter() - t0), found


def run_size(n: int, n_queries: int, shards: int, rows: list[dict]) -> None:
    xb, xq = dataset(n, n_queries, seed=0)
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # explicit, non-contiguous ids like chunk keys
    nlist = int(4 * np.sqrt(n) // 64 * 64) or 64
    # The pipeline trains on `index.train_sample` vectors (default 50k); at least 39 per IVF list as FAISS asks.
    train = xb[np.random.default_rng(1).choice(n, min(n, max(50_000, 39 * nlist)), replace=False)]

    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(xb.shape[1]))
    t0 = time.perf_counter()
    flat.add_with_ids(xb, ids)
    flat_build = time.perf_counter() - t0
    flat_qps, exact = qps(flat, xq)
    rows.append(
        {
            "n": n,
            "index": "Flat (exact, 1 shard)",
            "params": "",
            "build_s": flat_build,
            "qps": flat_qps,
            "recall@10": 1.0,
            "speedup": 1.0,
        }
    )
    sflat, _parts, b = sharded("Flat", xb, ids, shards, train)
    s_qps, s_found = qps(sflat, xq)
    same = bool(np.array_equal(np.sort(s_found, axis=1), np.sort(exact, axis=1)))
    rows.append(
        {
            "n": n,
            "index": f"Flat, {shards} shards",
            "params": f"identical={same}",
            "build_s": b,
            "qps": s_qps,
            "recall@10": recall_at_k(s_found, exact),
            "speedup": s_qps / flat_qps,
        }
    )
    if not same:
        raise SystemExit("sharded Flat differs from unsharded Flat: merge bug")
    print(f"n={n}: exact Flat {flat_qps:.0f} qps; sharded Flat identical to unsharded", flush=True)
    for template, sweep in CANDIDATES:
        factory = template.format(nlist=nlist)
        index, parts, build_s = sharded(factory, xb, ids, shards, train)
        for params in sweep:
            cfg = IndexConfig(factory=factory, nprobe=params.get("nprobe", 16), ef_search=params.get("ef_search", 64))
            for part in parts:
                set_search_params(part, cfg)
            q, found = qps(index, xq)
            row = {
                "n": n,
                "index": factory,
                "params": ",".join(f"{k}={v}" for k, v in params.items()),
                "build_s": build_s,
                "qps": q,
                "recall@10": recall_at_k(found, exact),
                "speedup": q / flat_qps,
            }
            rows.append(row)
            print(
                f"  {factory:24s} {row['params']:14s} build {build_s:7.1f}s  {q:9.0f} qps  "
                f"recall@10 {row['recall@10']:.3f}  {row['speedup']:6.1f}x Flat",
                flush=True,
            )
        del index, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rows: list[dict] = []
    for n in (int(s) for s in args.sizes.split(",")):
        run_size(n, args.queries, args.shards, rows)
    print(f"\n{'n':>8} {'index':26s} {'params':16s} {'build s':>8} {'qps':>9} {'R@10':>6} {'vs Flat':>8}")
    for r in rows:
        print(
            f"{r['n']:>8} {r['index']:26s} {r['params']:16s} {r['build_s']:8.1f} {r['qps']:9.0f} "
            f"{r['recall@10']:6.3f} {r['speedup']:7.1f}x"
        )
    for n in sorted({r["n"] for r in rows}):
        ok = [r for r in rows if r["n"] == n and r["recall@10"] >= 0.95 and r["speedup"] >= 10]
        best = max(ok, key=lambda r: r["qps"], default=None)
        verdict = (
            f"{best['index']} {best['params']}: recall@10 {best['recall@10']:.3f} at {best['speedup']:.0f}x Flat"
            if best
            else "none"
        )
        print(f"n={n}: fastest config with recall@10 >= 0.95 and >= 10x Flat's QPS: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
