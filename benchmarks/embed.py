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


class ActorMemory:
    """Polls the RSS of the embedding actors' processes while they run; keeps each one's peak."""

    def __init__(self) -> None:
        import threading

        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if "EmbedBatch" in cmd and proc.info["memory_info"] is not None:
                    rss = proc.info["memory_info"].rss
                    self.peaks[proc.info["pid"]] = max(self.peaks.get(proc.info["pid"], 0), rss)

    def __enter__(self) -> ActorMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ray_pool(rows: list[tuple[str, str]], cfg: PipelineConfig) -> tuple[float, float, list[int]]:
    """(cluster start-up seconds, stage seconds incl. actor start and model loading, peak RSS per actor)."""
    import ray

    from rag_spark.raycluster import embed_with_ray, init_ray

    t0 = time.perf_counter()
    init_ray(cfg.ray)
    startup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "in"
        staged.mkdir()
        # Staged sorted by length, as the embed stage stages its chunks (see Pipeline.embed).
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i][1]), i))
        n = len(rows)
        table = pa.table(
            {
                "chunk_id": [f"wiki/{i}#0000" for i in order],
                "chunk_key": np.array(order, dtype=np.int64),
                "title": [rows[i][0] for i in order],
                "text": [rows[i][1] for i in order],
                "text_hash": [str(i) for i in order],
            }
        )
        for part in range(4):  # a few files, as Spark writes them
            pq.write_table(
                table.slice(part * n // 4, (part + 1) * n // 4 - part * n // 4), staged / f"part-{part}.parquet"
            )
        with ActorMemory() as mem:
            t0 = time.perf_counter()
            embed_with_ray(str(staged), str(Path(tmp) / "out"), cfg, "bench")
            seconds = time.perf_counter() - t0
    ray.shutdown()
    return startup, seconds, sorted(mem.peaks.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batches-per-call", type=int, default=EmbedConfig().batches_per_call)
    args = ap.parse_args()
    rows = load_texts(args.n)
    texts = [passage_text(t, x) for t, x in rows]
    ecfg = EmbedConfig(
        backend="sentence-transformers",
        batches_per_call=args.batches_per_call,
        actors=args.actors,
        cpus_per_actor=(os.cpu_count() or 2) / args.actors / 2,
    )
    cfg = PipelineConfig(embed=ecfg, ray=RayConfig(num_cpus=os.cpu_count()))
    startup, t_ray, peaks = ray_pool(rows, cfg)
    t_plain = plain_loop(texts, ecfg)
    n = len(texts)
    print(f"texts: {n}  model: {ecfg.model}  cores: {os.cpu_count()}")
    print(f"plain SentenceTransformer.encode: {n / t_plain:8.1f} chunks/s ({t_plain:.1f} s)")
    print(
        f"Ray actor pool, {args.actors} actors (actor start + model load included): {n / t_ray:8.1f} chunks/s "
        f"({t_ray:.1f} s); local Ray start-up before it: {startup:.1f} s"
    )
    print(f"peak RSS per actor: {', '.join(f'{p / 2**20:.0f} MiB' for p in peaks) or 'not seen'}")
    print(
        f"ratio ray/plain: {t_plain / t_ray:.2f}x on a running cluster (goal >= 0.9x); "
        f"{t_plain / (t_ray + startup):.2f}x counting the local Ray start-up"
    )


if __name__ == "__main__":
    main()
