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


def test_spark_standalone_ingest_equals_local(spark_cluster, spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """jobs/ingest.py through cluster/spark/submit.sh on the standalone cluster writes the same Delta tables as
    the same stages in local mode (the session-wide local SparkSession)."""
    cluster_out, local_out = tmp_path / "cluster", tmp_path / "local"
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

    cfg = load_config(ROOT / "configs" / "tiny.yaml").with_overrides(dataset=str(TINY), out=str(local_out))
    Pipeline(cfg, spark=spark).run(["ingest", "clean", "chunk"])
    cluster_lake, local_lake = Lake(spark, str(cluster_out / "lake")), Lake(spark, str(local_out / "lake"))
    for table in SPARK_TABLES:
        got, want = table_rows(cluster_lake, table), table_rows(local_lake, table)
        assert want, f"{table.name}: the local run wrote no rows"
        assert got == want, f"{table.name}: cluster and local runs differ"
    lineage = {r.stage for r in cluster_lake.read(S.LINEAGE).collect()}
    assert lineage == {"ingest", "clean", "chunk"}
