"""GPU measurements for the embed and index stages, in one short run (see benchmarks/gpu.sh).

1. Embedding: the pipeline's `SentenceTransformerEncoder` (fp16 on CUDA) on real demo passages, chunks/s per
   batch size, against the same encoder on the same machine's CPUs (fp32), and the cosine agreement of the two.
2. Exact search: FAISS GPU when the installed FAISS has GPU support; otherwise records why not. Exact top-k by a
   GPU matrix product (torch) on seeded clustered vectors against the same on the CPU cores: QPS and recall@10 of
   the fp16 variant against fp32.

Prints one JSON object (also written to --out). Every ratio compares two numbers measured in this run.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load_texts(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def _rate(fn, n_items: int, repeats: int = 1) -> float:
    fn()  # warm-up (kernels, allocator, tokenizer caches)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n_items * repeats / (time.perf_counter() - t0)


def bench_embedding(model_dir: str, texts: list[str], cpu_n: int) -> dict:
    import torch

    from rag_spark.config import EmbedConfig
    from rag_spark.embed.encoders import SentenceTransformerEncoder

    out: dict = {"n_texts": len(texts)}
    per_batch = {}
    gpu_vecs = None
    for bs in (64, 256, 1024):
        enc = SentenceTransformerEncoder(
            EmbedConfig(backend="sentence-transformers", model=model_dir, device="cuda", batch_size=bs)
        )
        torch.cuda.synchronize()
        per_batch[bs] = round(_rate(functools.partial(enc.encode_passages, texts), len(texts)), 1)
        if gpu_vecs is None:
            gpu_vecs = enc.encode_passages(texts[:cpu_n])
        del enc
        torch.cuda.empty_cache()
    out["gpu_fp16_chunks_per_s"] = per_batch
    torch.cuda.reset_peak_memory_stats()
    enc = SentenceTransformerEncoder(
        EmbedConfig(backend="sentence-transformers", model=model_dir, device="cuda", batch_size=256)
    )
    enc.encode_passages(texts)
    out["gpu_peak_mem_mib_bs256"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    del enc

    torch.set_num_threads(os.cpu_count() or 1)
    cpu = SentenceTransformerEncoder(
        EmbedConfig(backend="sentence-transformers", model=model_dir, device="cpu", batch_size=64)
    )
    cpu.model.float()
    sub = texts[:cpu_n]
    out["cpu_threads"] = torch.get_num_threads()
    out["cpu_fp32_chunks_per_s"] = round(_rate(lambda: cpu.encode_passages(sub), len(sub)), 1)
    cpu_vecs = cpu.encode_passages(sub)
    cos = np.sum(cpu_vecs * gpu_vecs, axis=1)
    out["gpu_vs_cpu_cosine"] = {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 6)}
    best = max(per_batch.values())
    out["ratio_gpu_best_vs_cpu"] = round(best / out["cpu_fp32_chunks_per_s"], 1)
    return out


def bench_faiss_gpu() -> dict:
    try:
        import faiss
    except Exception as err:
        return {"faiss": f"not importable: {type(err).__name__}: {err}"}
    info = {"faiss_version": faiss.__version__, "faiss_gpus": getattr(faiss, "get_num_gpus", lambda: 0)()}
    return info


def bench_exact_search(n: int, n_queries: int, k: int) -> dict:
    import torch
    from vectors import dataset

    xb, xq = dataset(n, n_queries, seed=1)
    out: dict = {"n": n, "queries": n_queries, "k": k, "dim": xb.shape[1]}

    def topk(db: torch.Tensor, q: torch.Tensor, block: int) -> torch.Tensor:
        ids = []
        for s in range(0, q.shape[0], block):
            ids.append(torch.topk(q[s : s + block] @ db.T, k, dim=1).indices)
        return torch.cat(ids)

    dev = torch.device("cuda")
    db32, q32 = torch.from_numpy(xb).to(dev), torch.from_numpy(xq).to(dev)
    db16, q16 = db32.half(), q32.half()

    def run_gpu(db, q):
        r = topk(db, q, 1024)
        torch.cuda.synchronize()
        return r

    out["gpu_fp32_qps"] = round(_rate(lambda: run_gpu(db32, q32), n_queries, repeats=3), 1)
    out["gpu_fp16_qps"] = round(_rate(lambda: run_gpu(db16, q16), n_queries, repeats=3), 1)
    ref = run_gpu(db32, q32).cpu().numpy()
    approx = run_gpu(db16, q16).cpu().numpy()
    out["fp16_recall_at_k_vs_fp32"] = round(
        float(np.mean([len(set(a) & set(b)) / k for a, b in zip(approx, ref, strict=True)])), 4
    )
    torch.set_num_threads(os.cpu_count() or 1)
    dbc, qc = torch.from_numpy(xb), torch.from_numpy(xq[:1000])
    out["cpu_fp32_qps"] = round(_rate(lambda: topk(dbc, qc, 256), 1000), 1)
    cpu_ids = topk(dbc, qc, 256).numpy()
    out["gpu_fp32_equals_cpu"] = float(np.mean([set(a) == set(b) for a, b in zip(cpu_ids, ref[:1000], strict=True)]))
    out["ratio_gpu_fp16_vs_cpu"] = round(out["gpu_fp16_qps"] / out["cpu_fp32_qps"], 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="sentence-transformers model folder")
    p.add_argument("--texts", required=True, type=Path, help="gzipped JSONL with a `text` field per line")
    p.add_argument("--cpu-texts", type=int, default=2000)
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 2
    result: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    texts = _load_texts(args.texts)
    for name, fn in (
        ("embedding", lambda: bench_embedding(args.model, texts, args.cpu_texts)),
        ("faiss_gpu", bench_faiss_gpu),
        ("exact_search", lambda: bench_exact_search(args.vectors, args.queries, 10)),
    ):
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as err:
            result[name] = {"error": f"{type(err).__name__}: {err}"}
        result[name + "_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: result[name]}), flush=True)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
