"""Real multi-process clusters on this machine, started with the project's own scripts and commands:

- a Spark standalone master + worker (`cluster/spark/start-master.sh`, `start-worker.sh`) running the ingest job
  through `cluster/spark/submit.sh` (spark-submit --master spark://..., Delta jars, --py-files zip, --files config);
  its Delta tables must equal those of a local-mode run of the same stages;
- a 2-node Ray cluster (`ray start --head` + `ray start --address`, one CPU each, token auth) running the embed and
  QA jobs through `cluster/ray/submit.sh` (ray job submit); the actor calls must have run on both nodes and the
  tables must equal those of a local run.

Each test stops only the processes it started (by pid: the daemons' pid files, the Ray processes of its own
session folder), never `ray stop` or a process name.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag_spark import schema as S
from rag_spark.config import load_config
from rag_spark.lake import Lake
from rag_spark.pipeline import Pipeline

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny"
SPARK_TABLES = (S.BRONZE, S.QUARANTINE, S.SOURCES, S.SILVER, S.DUPLICATES, S.CHUNKS, S.QUERIES, S.QRELS, S.GOLD_ANSWERS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def kill_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after `grace` seconds: only the given pids."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (a temp folder only this test created)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


def table_rows(lake: Lake, table: S.Table, drop: tuple[str, ...] = ("run_id",)) -> list[tuple[Any, ...]]:
    """A table's rows without the columns that differ between runs by design, sorted."""
    cols = [c for c in table.schema.fieldNames() if c not in drop]
    return sorted((tuple(r) for r in lake.read(table).select(*cols).collect()), key=repr)


@pytest.fixture(scope="module")
def local_base(tiny_chunked: Path) -> Path:
    """ingest -> clean -> chunk of the tiny dataset in local mode (the session SparkSession): the reference for
    the Spark cluster run and the input (copied) of the Ray jobs."""
    return tiny_chunked


# -- Spark standalone --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark_cluster() -> Iterator[dict[str, str]]:
    """A standalone master and one worker (1 core, 1 GiB) started with cluster/spark/start-*.sh on free ports,
    with a copy of cluster/spark/conf sized for this machine; stopped with stop-*.sh (their pid files)."""
    tmp = Path(tempfile.mkdtemp(prefix="rs-spark-"))
    conf = tmp / "conf"
    shutil.copytree(ROOT / "cluster" / "spark" / "conf", conf)
    with (conf / "spark-defaults.conf").open("a") as f:
        # The shipped defaults size executors for real nodes (4g, 2 cores); this worker offers 1 core, 1 GiB.
        f.write("\nspark.executor.memory 512m\nspark.executor.cores 1\nspark.driver.memory 1g\n")
        f.write("spark.sql.shuffle.partitions 2\nspark.ui.enabled false\n")
    port, ui = free_port(), free_port()
    env = {
        **os.environ,
        "SPARK_CONF_DIR": str(conf),
        "SPARK_MASTER_HOST": "127.0.0.1",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_MASTER_PORT": str(port),
        "SPARK_MASTER_WEBUI_PORT": str(ui),
        "SPARK_WORKER_WEBUI_PORT": str(free_port()),
        "SPARK_WORKER_CORES": "1",
        "SPARK_WORKER_MEMORY": "1g",
        "SPARK_WORKER_DIR": str(tmp / "work"),
        "SPARK_LOCAL_DIRS": str(tmp / "local"),
        "SPARK_LOG_DIR": str(tmp / "logs"),
        "SPARK_PID_DIR": str(tmp / "pids"),
        "SPARK_IDENT_STRING": "rag-spark-test",
    }
    scripts = ROOT / "cluster" / "spark"
    master = f"spark://127.0.0.1:{port}"
    try:
        subprocess.run([scripts / "start-master.sh"], env=env, check=True, capture_output=True, timeout=60)
        wait_until(lambda: port_open(port), 60, "Spark master", next((tmp / "logs").glob("*Master*.out"), None))
        subprocess.run([scripts / "start-worker.sh", master], env=env, check=True, capture_output=True, timeout=60)
        wait_until(lambda: _workers_alive(ui) == 1, 60, "Spark worker registration")
        yield {"master": master, "env": env, "tmp": str(tmp)}  # type: ignore[misc]
    finally:
        pids = [int(p.read_text()) for p in (tmp / "pids").glob("*.pid")] if (tmp / "pids").exists() else []
        for script in ("stop-worker.sh", "stop-master.sh"):
            subprocess.run([scripts / script], env=env, capture_output=True, timeout=60)
        kill_pids([p for p in pids if _alive(p)] + pids_mentioning(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)


def _workers_alive(ui_port: int) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            state = json.load(r)
    except OSError:
        return 0
    return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")


def test_spark_standalone_ingest_equals_local(spark_cluster, spark, local_base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """jobs/ingest.py through cluster/spark/submit.sh on the standalone cluster writes the same Delta tables as
    the same stages in local mode (the session-wide local SparkSession)."""
    cluster_out = tmp_path / "cluster"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            ROOT / "cluster" / "spark" / "submit.sh",
            spark_cluster["master"],
            ROOT / "configs" / "tiny.yaml",
            "ingest",
            "--dataset",
            str(TINY),
            "--out",
            str(cluster_out),
            # The lake as a file: URI (storage paths are URIs everywhere; local mode below uses a plain path).
            "--lake",
            f"file://{cluster_out}/lake",
        ],
        env=spark_cluster["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    submit_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-5000:]
    # The job ran on the cluster: the driver registered with the master and the worker launched an executor.
    assert f"Connecting to master {spark_cluster['master']}" in proc.stderr or "StandaloneSchedulerBackend" in (
        proc.stderr
    ), proc.stderr[-3000:]
    work = Path(spark_cluster["tmp"]) / "work"
    apps = [p for p in work.iterdir() if p.name.startswith("app-")]
    assert len(apps) == 1 and any(apps[0].iterdir()), f"no executor ran on the worker: {list(work.iterdir())}"
    print(f"spark-submit ingest on the standalone cluster: {submit_s:.1f} s")

    cluster_lake, local_lake = Lake(spark, f"file://{cluster_out}/lake"), Lake(spark, str(local_base / "lake"))
    for table in SPARK_TABLES:
        got, want = table_rows(cluster_lake, table), table_rows(local_lake, table)
        assert want, f"{table.name}: the local run wrote no rows"
        assert got == want, f"{table.name}: cluster and local runs differ"
    lineage = {r.stage for r in cluster_lake.read(S.LINEAGE).collect()}
    assert lineage == {"ingest", "clean", "chunk"}


# -- Ray: two nodes on this machine ------------------------------------------------------------------------------

RAY = ROOT / ".venv" / "bin" / "ray"


def _ray_ports() -> list[str]:
    """Every port a Ray node opens, free ones, so this cluster never meets another Ray on the machine."""
    flags = [
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
    ]
    return [x for flag in flags for x in (flag, str(free_port()))]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """A head (2 CPUs, dashboard for `ray job submit`) and a second node (2 CPUs) joined to it, token auth with a
    fresh token in the environment (no ~/.ray/auth_token written), sessions under a temp folder. Torn down by
    pid: the two `ray start --block` processes, then any process still naming the temp folder."""
    tmp = Path(tempfile.mkdtemp(prefix="rs-ray-", dir="/tmp"))  # short: Ray's unix socket paths must fit 107 bytes
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        # As on a node where the venv is activated: the job's `python` (and the workers') is the venv's.
        "PATH": os.pathsep.join([str(ROOT / ".venv" / "bin"), os.environ.get("PATH", "")]),
    }
    port, dash = free_port(), free_port()
    # Two logical CPUs per node: Ray Data's ListFiles, repartition and write tasks each ask for a whole CPU, so a
    # 1-CPU node that hosts a (fractional) embedding actor can never run them and the dataset deadlocks.
    common = ["--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--object-store-memory", "300000000"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        head_log = (tmp / "head.log").open("wb")
        procs.append(
            subprocess.Popen(
                [RAY, "start", "--head", "--port", str(port), "--include-dashboard", "true", "--dashboard-host",
                 "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(free_port()),
                 "--temp-dir", str(tmp / "ray"), *common, *_ray_ports()],
                env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )  # fmt: skip
        wait_until(lambda: port_open(dash), 120, "Ray head dashboard", tmp / "head.log")
        worker_log = (tmp / "worker.log").open("wb")
        procs.append(
            subprocess.Popen(
                [RAY, "start", "--address", f"127.0.0.1:{port}", *common, *_ray_ports()],
                env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )  # fmt: skip
        address = f"http://127.0.0.1:{dash}"
        wait_until(lambda: len(_ray_list("nodes", address, env)) == 2, 120, "second Ray node", tmp / "worker.log")
        yield {"address": address, "env": env, "tmp": tmp}
    finally:
        kill_pids([p.pid for p in procs], grace=20)
        kill_pids(pids_mentioning(str(tmp)))
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def _ray_list(what: str, address: str, env: dict[str, str], *filters: str) -> list[dict[str, Any]]:
    """`ray list <what>` (the state API through the dashboard) as JSON; [] while the cluster is not answering."""
    cmd = [str(RAY), "list", what, "--address", address, "--format", "json", "--limit", "10000", "--detail"]
    for f in filters:
        cmd += ["--filter", f]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.lstrip().startswith("["):  # e.g. "No resource in the cluster"
        return []
    rows: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return [r for r in rows if what != "nodes" or r.get("state") == "ALIVE"]


def _ray_submit(cluster: dict[str, Any], config: Path, job: str, *args: str) -> tuple[str, float]:
    """cluster/ray/submit.sh CONFIG JOB (ray job submit, waits for the job); returns (Ray job id, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [ROOT / "cluster" / "ray" / "submit.sh", cluster["address"], config, job, *args],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[:4000] + proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout, proc.stdout[-3000:]
    jobs = [
        j
        for j in _ray_list("jobs", cluster["address"], cluster["env"])
        if j.get("submission_id", "").startswith(f"rag-spark-{job}-")
    ]
    jobs.sort(key=lambda j: j.get("start_time") or 0)
    assert jobs, "the submitted job is not in `ray list jobs`"
    return str(jobs[-1]["job_id"]), seconds


def _nodes_of_calls(cluster: dict[str, Any], job_id: str, name: str) -> dict[str, int]:
    """Finished actor-method calls of job `job_id` whose name contains `name`, counted per node id."""
    tasks = _ray_list("tasks", cluster["address"], cluster["env"], f"job_id={job_id}")
    counts: dict[str, int] = {}
    for t in tasks:
        if name in (t.get("name") or "") and t.get("type") == "ACTOR_TASK" and t.get("state") == "FINISHED":
            counts[t["node_id"]] = counts.get(t["node_id"], 0) + 1
    return counts


def test_ray_two_nodes_embed_and_qa_equal_local(ray_cluster, ray_local, spark, local_base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """jobs/embed.py and jobs/qa.py through cluster/ray/submit.sh on the 2-node cluster: actor calls ran on both
    nodes, and embeddings, index size, retrievals and answers equal a local run of the same config."""
    import numpy as np

    settings = {
        "dataset": str(TINY),
        "ray": {"address": "auto"},
        # The job runs from the uploaded working dir, which has no .jars/: the head's Delta jars by absolute path.
        "spark": {"jars_dir": str(ROOT / ".jars")},
        # Small actor calls so both embedding actors get work; fractional CPUs leave room for the read tasks.
        "embed": {"batch_size": 8, "batches_per_call": 1, "actors": 2, "cpus_per_actor": 0.5},
        "index": {"shards": 2},
        # One engine per node (each takes a node's 2 CPUs); two pieces per round, one per actor. One llama.cpp slot:
        # with several, how prompts share a decode batch depends on timing, and one answer in six differed.
        "generate": {
            "backend": "llamacpp",
            "actors": 2,
            "cpus_per_actor": 2,
            "cpu_threads": 1,
            "batch_size": 3,
            "parallel_slots": 1,
        },
    }
    base = load_config(ROOT / "configs" / "tiny.yaml").model_dump(mode="json")
    runs: dict[str, Path] = {}
    for name in ("cluster", "local"):
        out = tmp_path / name
        shutil.copytree(local_base / "lake", out / "lake")
        cfg = {**base, **settings, "out": str(out)}
        if name == "cluster":  # the cluster's lake as a file: URI: staging, Ray reads and cleanup through URIs
            cfg["lake"] = f"file://{out}/lake"
        cfg["spark"] = {**base["spark"], **settings["spark"]}
        cfg["embed"] = {**base["embed"], **settings["embed"]}
        cfg["generate"] = {**base["generate"], **settings["generate"]}
        if name == "local":
            # The in-process local Ray has 2 CPUs; the engines' CPU request (part of the generate config hash, so
            # answers are compared without it) must fit it. Threads are pinned to 1 in both runs.
            cfg["ray"] = base["ray"]
            cfg["generate"]["cpus_per_actor"] = 1
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        runs[name] = path

    embed_job, embed_s = _ray_submit(ray_cluster, runs["cluster"], "embed")
    qa_job, qa_s = _ray_submit(ray_cluster, runs["cluster"], "qa")
    print(f"ray job submit embed: {embed_s:.1f} s, qa: {qa_s:.1f} s")
    nodes = {n["node_id"] for n in _ray_list("nodes", ray_cluster["address"], ray_cluster["env"])}
    embed_calls = _nodes_of_calls(ray_cluster, embed_job, "EmbedBatch")
    qa_calls = _nodes_of_calls(ray_cluster, qa_job, "AnswerBatch.answer")
    assert set(embed_calls) == nodes, f"embedding calls per node {embed_calls}, nodes {nodes}"
    assert set(qa_calls) == nodes, f"QA calls per node {qa_calls}, nodes {nodes}"

    local = Pipeline(load_config(runs["local"]), spark=spark)
    local.run(["embed", "index"])
    local.qa()
    cluster_lake, local_lake = Lake(spark, f"file://{tmp_path}/cluster/lake"), local.lake
    # Every staging folder exchanged with Ray was removed, also behind the file: URI.
    assert not list((tmp_path / "cluster" / "lake" / "_staging").glob("*"))

    def vectors(lake: Lake) -> dict[str, Any]:
        return {r.chunk_id: np.array(r.vector) for r in lake.read(S.EMBEDDINGS).select("chunk_id", "vector").collect()}

    got, want = vectors(cluster_lake), vectors(local_lake)
    assert want and set(got) == set(want) == {r.chunk_id for r in local_lake.read(S.CHUNKS).collect()}
    for cid, v in want.items():
        np.testing.assert_allclose(got[cid], v, atol=1e-5, err_msg=cid)
    assert table_rows(cluster_lake, S.EMBEDDINGS, ("run_id", "vector")) == table_rows(
        local_lake, S.EMBEDDINGS, ("run_id", "vector")
    )
    volatile = ("run_id", "latency_ms")
    assert table_rows(cluster_lake, S.RETRIEVALS, volatile) == table_rows(local_lake, S.RETRIEVALS, volatile)
    answers = table_rows(local_lake, S.ANSWERS, (*volatile, "config_hash"))
    assert len(answers) == local_lake.read(S.QUERIES).count() > 0
    assert table_rows(cluster_lake, S.ANSWERS, (*volatile, "config_hash")) == answers
