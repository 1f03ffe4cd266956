"""Embedding throughput: the Ray actor-pool stage vs a plain `SentenceTransformer.encode` loop.

Same texts (French Wikipedia summaries from the demo dataset, chunked like the pipeline), same model, same
machine, measured in the same run. Prints chunks/s of each and the ratio (goal: Ray >= 0.9x the plain loop).

    .venv/bin/python benchmarks/embed.py [--n 4000] [--actors 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAG_SPARK_PROGRESS", "0")

from rag_spark.config import EmbedConfig, PipelineConfig, RayConfig
from rag_spark.embed.encoders import passage_text
from rag_spark.embed.models import resolve_encoder


def load_texts(n: int) -> list[tuple[str, str]]:
    corpus = Path(__file__).resolve().parent.parent / "data" / "demo" / "corpus.jsonl"
    if not corpus.is_file():
        raise SystemExit(f"{corpus} is missing: run `make data` first")
    rows = []
    with corpus.open() as f:
        for line in f:
            doc = json.loads(line)
            rows.append((doc["title"], doc["text"]))
            if len(rows) == n:
                break
    return rows


def plain_loop(texts: list[str], cfg: EmbedConfig) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(resolve_encoder(cfg.model), device="cpu")
    model.encode(texts[:64], batch_size=cfg.batch_size)  # warm-up
    t0 = time.perf_counter()
    model.encode(texts, batch_size=cfg.batch_size, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - t0


def ray_pool(rows: list[tuple[str, str]], cfg: PipelineConfig) -> float:
    import ray

    from rag_spark.raycluster import embed_with_ray, init_ray

    init_ray(cfg.ray)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "in"
        staged.mkdir()
        n = len(rows)
        table = pa.table(
            {
                "chunk_id": [f"wiki/{i}#0000" for i in range(n)],
                "chunk_key": np.arange(n, dtype=np.int64),
                "title": [t for t, _ in rows],
                "text": [x for _, x in rows],
                "text_hash": [str(i) for i in range(n)],
            }
        )
        pq.write_table(table, staged / "part-0.parquet")
        # The timing includes actor start-up and model loading: what one embed stage run pays.
        t0 = time.perf_counter()
        embed_with_ray(str(staged), str(Path(tmp) / "out"), cfg, "bench")
        seconds = time.perf_counter() - t0
    ray.shutdown()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    rows = load_texts(args.n)
    texts = [passage_text(t, x) for t, x in rows]
    ecfg = EmbedConfig(actors=args.actors, cpus_per_actor=(os.cpu_count() or 2) / args.actors / 2)
    cfg = PipelineConfig(embed=ecfg, ray=RayConfig(num_cpus=os.cpu_count()))
    t_ray = ray_pool(rows, cfg)
    t_plain = plain_loop(texts, ecfg)
    print(f"texts: {len(texts)}  model: {ecfg.model}  cores: {os.cpu_count()}")
    print(f"plain SentenceTransformer.encode: {len(texts) / t_plain:8.1f} chunks/s ({t_plain:.1f} s)")
    print(f"Ray actor pool ({args.actors} actors, incl. start-up): {len(texts) / t_ray:8.1f} chunks/s ({t_ray:.1f} s)")
    print(f"ratio ray/plain: {t_plain / t_ray:.2f}x (goal >= 0.9x)")


if __name__ == "__main__":
    main()
