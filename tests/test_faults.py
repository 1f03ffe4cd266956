"""Injected faults with real processes: a killed index build, a killed Ray embedding actor, a killed Spark ingest,
a corrupt model, a full disk (a tiny tmpfs). Each leaves the previous state readable and the next run complete."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rag_spark.config import EmbedConfig, IndexConfig
from rag_spark.embed.models import encoder_sha256, model_id, resolve_encoder
from rag_spark.index.manifest import Manifest, publish
from rag_spark.index.search import IndexIntegrityError, ShardedIndex

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAG_SPARK_PROGRESS": "0"}


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, step: float = 0.005) -> None:  # type: ignore[no-untyped-def,type-arg]
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def _kill_group(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGKILL the process and everything it started (its JVM, Ray workers): no cleanup handler runs."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


# --- index build ---------------------------------------------------------------------------------------------------

# The index stage's own steps (train once, one `build_shard` per shard, `publish`), as a separate process.
_BUILD = textwrap.dedent(
    """
    import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
    from pathlib import Path
    from rag_spark.index.manifest import Manifest, publish
    from rag_spark.index.shards import build_shard, train_index

    root, build_id, n, shards, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) + seed * 10_000_000
    staged = root / f"staged-{build_id}"
    for s in range(shards):
        (staged / f"shard={s}").mkdir(parents=True, exist_ok=True)
        sel = ids % shards == s
        pq.write_table(pa.table({"chunk_key": ids[sel], "vector": pa.array(list(x[sel]), pa.list_(pa.float32()))}),
                       staged / f"shard={s}" / "part-0.parquet")
    trained = train_index("IVF64,Flat", 32, "ip", x[:5000])
    out = root / "index" / "builds" / build_id
    out.mkdir(parents=True, exist_ok=True)
    infos = [build_shard(trained, str(staged / f"shard={s}"), str(out / f"shard-{s:03d}.faiss")) for s in range(shards)]
    publish(root / "index", Manifest(build_id=build_id, factory="IVF64,Flat", metric="ip", dim=32, model_id="m",
            normalized=True, ntotal=sum(i.count for i in infos), shards=infos, source_table="embeddings",
            source_version=seed, config_hash="h", run_id=build_id, created_at="now", build_seconds=0.0))
    """
)


def _build(root: Path, build_id: str, n: int, shards: int, seed: int) -> subprocess.Popen:  # type: ignore[type-arg]
    return subprocess.Popen(
        [sys.executable, "-c", _BUILD, str(root), build_id, str(n), str(shards), str(seed)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_killed_index_build_leaves_the_previous_build_serving(tmp_path: Path) -> None:
    first = _build(tmp_path, "b1", 4000, 2, 1)
    assert first.wait(timeout=300) == 0, first.stdout.read() if first.stdout else ""
    index_root = tmp_path / "index"
    before = ShardedIndex(index_root, IndexConfig(nprobe=64))
    probe = np.random.default_rng(1).normal(size=(4000, 32)).astype(np.float32)[:5]
    expected = before.search(probe / np.linalg.norm(probe, axis=1, keepdims=True), 3).ids

    # Killed once its first shard file is on disk: shards are written, the manifest and CURRENT are not.
    second = _build(tmp_path, "b2", 60_000, 12, 2)
    new_dir = index_root / "builds" / "b2"
    _wait_for(lambda: (new_dir / "shard-000.faiss").exists(), 300, "the first shard of build b2", second)
    _kill_group(second)
    assert not (new_dir / "manifest.json").exists() and not (new_dir / "shard-011.faiss").exists()
    after = ShardedIndex(index_root, IndexConfig(nprobe=64))
    assert after.manifest.build_id == "b1" and after.ntotal == 4000
    np.testing.assert_array_equal(after.search(probe / np.linalg.norm(probe, axis=1, keepdims=True), 3).ids, expected)

    third = _build(tmp_path, "b3", 6000, 3, 3)  # the next build completes and is published
    assert third.wait(timeout=300) == 0, third.stdout.read() if third.stdout else ""
    final = ShardedIndex(index_root, IndexConfig(nprobe=64))
    assert final.manifest.build_id == "b3" and final.ntotal == 6000


# --- model checksums -----------------------------------------------------------------------------------------------


def test_manifest_model_checksum_is_verified_on_load(tmp_path: Path) -> None:
    model = tmp_path / "models" / "minilm-copy"
    shutil.copytree(resolve_encoder("packaged:all-MiniLM-L6-v2"), model)
    cfg = EmbedConfig(backend="sentence-transformers", model=str(model))
    digest = encoder_sha256(cfg)
    assert len(digest) == 64 and encoder_sha256(cfg) == digest
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(np.eye(8, dtype=np.float32), np.arange(8, dtype=np.int64))
    from rag_spark.index.shards import write_shard

    build = tmp_path / "index" / "builds" / "b1"
    build.mkdir(parents=True)
    shard = write_shard(index, str(build / "shard-000.faiss"))
    manifest = Manifest(
        build_id="b1", factory="Flat", metric="ip", dim=8, model_id=model_id(str(model)), normalized=True,
        ntotal=8, shards=[shard], source_table="embeddings", source_version=0, config_hash="h", run_id="r",
        created_at="now", build_seconds=0.0, model_sha256=digest,
    )  # fmt: skip
    publish(tmp_path / "index", manifest)
    assert ShardedIndex(tmp_path / "index", IndexConfig(), cfg).ntotal == 8
    # Another model than the one the vectors came from.
    with pytest.raises(IndexIntegrityError, match=r"is not the model of index build b1"):
        ShardedIndex(tmp_path / "index", IndexConfig(), EmbedConfig(backend="sentence-transformers"))
    # The same folder with one file altered (a tampered or half-copied model).
    tok = model / "tokenizer.json"
    tok.write_bytes(tok.read_bytes().replace(b'"[UNK]"', b'"[UNX]"', 1))
    with pytest.raises(IndexIntegrityError, match=r"minilm-copy: sha256 .* differs from .* index build b1"):
        ShardedIndex(tmp_path / "index", IndexConfig(), cfg)
    # A manifest naming a shard outside its build folder is refused before anything is read.
    publish(tmp_path / "index", Manifest(**{**manifest.__dict__, "shards": [shard.__class__("../../x", 8, "0")]}))
    with pytest.raises(IndexIntegrityError, match="is not a name"):
        ShardedIndex(tmp_path / "index", IndexConfig())


# --- Ray embedding actor ---------------------------------------------------------------------------------------------


class _SlowEmbed:
    """EmbedBatch that records its actor's PID and works slowly enough to be killed in the middle of a batch."""

    def __init__(self, cfg: EmbedConfig, run_id: str, pid_dir: str) -> None:
        from rag_spark.embed.ray_embed import EmbedBatch

        self.inner = EmbedBatch(cfg, run_id)
        self.pid_dir = pid_dir

    def __call__(self, batch):  # type: ignore[no-untyped-def]
        Path(self.pid_dir, str(os.getpid())).touch()
        time.sleep(1.0)
        return self.inner(batch)


def test_sigkilled_embedding_actor_every_chunk_embedded_once(tmp_path: Path, ray_local) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.cloudpickle

    from rag_spark.raycluster import map_with_actor_pool

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    staged_in = tmp_path / "in"
    staged_in.mkdir()
    n = 32
    rows = {
        "chunk_id": [f"d{i}#0000" for i in range(n)],
        "chunk_key": list(range(n)),
        "title": [None] * n,
        "text": [f"Debian est un système d'exploitation libre, numéro {i}." for i in range(n)],
        "text_hash": [f"h{i}" for i in range(n)],
    }
    pq.write_table(pa.table(rows), staged_in / "part-0.parquet")
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    killed: list[int] = []

    def killer() -> None:
        # The first actor to start a batch is SIGKILLed from outside while it holds that batch.
        _wait_for(lambda: any(pid_dir.iterdir()), 600, "an actor to start a batch")
        pid = int(next(pid_dir.iterdir()).name)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    cfg = EmbedConfig(backend="sentence-transformers", model="packaged:all-MiniLM-L6-v2", batch_size=4)
    map_with_actor_pool(
        str(staged_in),
        str(tmp_path / "out"),
        _SlowEmbed,
        {"cfg": cfg, "run_id": "r1", "pid_dir": str(pid_dir)},
        actors=2,
        cpus_per_actor=0.5,
        gpus_per_actor=0,
        batch_size=4,
        rows_per_block=4,
    )
    thread.join(timeout=5)
    assert killed, "the fault was injected"
    pids = {int(p.name) for p in pid_dir.iterdir()}
    assert len(pids - set(killed)) >= 1  # batches ran on actors other than the killed one (a restarted one too)
    out = pq.read_table(tmp_path / "out")
    assert sorted(out.column("chunk_id").to_pylist()) == sorted(rows["chunk_id"])  # every chunk, each once
    assert len({tuple(v) for v in out.column("vector").to_pylist()}) == n
