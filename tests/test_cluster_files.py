"""The files under cluster/: manifests parse and say what they claim, scripts are valid bash, every job path and
flag they use exists, the example config validates, and the report rotation keeps the last N reports with an
escaped index page. Fast (no Spark, no Ray): the clusters themselves are tested by the `cluster`-marked tests."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from rag_spark.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


rotate_reports = _load(CLUSTER / "schedule" / "rotate_reports.py")
build_pyfiles = _load(CLUSTER / "spark" / "build_pyfiles.py")


def _cluster_texts() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted(CLUSTER.rglob("*")) if p.is_file()}


# --- manifests and configs ---------------------------------------------------------------------------------------

EXPECTED_KINDS = {
    "spark/k8s/ingest-sparkapplication.yaml": [("sparkoperator.k8s.io/v1beta2", "SparkApplication")],
    "ray/k8s/raycluster.yaml": [("ray.io/v1", "RayCluster")],
    "ray/k8s/rayjob-qa.yaml": [("ray.io/v1", "RayJob")],
    "schedule/k8s/cronjob.yaml": [("batch/v1", "CronJob")],
}


def test_every_yaml_under_cluster_parses_and_manifests_have_the_expected_kinds() -> None:
    found = {}
    for path in sorted(CLUSTER.rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert docs, f"{path}: empty YAML"
        rel = path.relative_to(CLUSTER).as_posix()
        kinds = [(d.get("apiVersion"), d.get("kind")) for d in docs if "kind" in d]
        if rel in EXPECTED_KINDS:
            found[rel] = kinds
        else:
            assert kinds == [], f"{rel}: a Kubernetes manifest not listed in EXPECTED_KINDS"
    assert found == EXPECTED_KINDS


def _worker_groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g["template"]["spec"]["containers"][0]["resources"] for g in spec["workerGroupSpecs"]}


def test_kuberay_manifests_have_a_cpu_and_a_gpu_worker_group() -> None:
    cluster = yaml.safe_load((CLUSTER / "ray/k8s/raycluster.yaml").read_text())
    job = yaml.safe_load((CLUSTER / "ray/k8s/rayjob-qa.yaml").read_text())
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        groups = _worker_groups(spec)
        assert set(groups) == {"cpu", "gpu"}
        assert "nvidia.com/gpu" not in groups["cpu"]["limits"]
        assert groups["gpu"]["limits"]["nvidia.com/gpu"] == groups["gpu"]["requests"]["nvidia.com/gpu"] == "1"
    assert "jobs/qa.py" in job["spec"]["entrypoint"]


def test_spark_application_runs_the_ingest_job_with_delta_and_the_package() -> None:
    app = yaml.safe_load((CLUSTER / "spark/k8s/ingest-sparkapplication.yaml").read_text())["spec"]
    assert app["type"] == "Python" and app["mainApplicationFile"].endswith("/jobs/ingest.py")
    assert any("delta-spark_4.2_2.13-4.4.0.jar" in j for j in app["deps"]["jars"])
    assert app["deps"]["pyFiles"] == ["local:///opt/rag-spark/dist/rag_spark.zip"]
    assert app["sparkConf"]["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert app["arguments"][:2] == ["--config", "/etc/rag-spark/config.yaml"]


def test_ray_cluster_launcher_yaml_keeps_its_required_fields() -> None:
    cfg = yaml.safe_load((CLUSTER / "ray/cluster.yaml").read_text())
    assert {"cluster_name", "provider", "auth", "head_start_ray_commands", "worker_start_ray_commands"} <= set(cfg)
    assert cfg["provider"]["type"] == "local"


def test_example_config_validates() -> None:
    cfg = load_config(CLUSTER / "config.example.yaml")
    assert cfg.ray.address == "auto"
    assert cfg.embed.gpus_per_actor == 1 and cfg.generate.gpus_per_actor == 1


# --- scripts and the commands they document ----------------------------------------------------------------------


def test_shell_scripts_pass_bash_n() -> None:
    scripts = sorted(CLUSTER.rglob("*.sh"))
    assert len(scripts) >= 10
    for script in scripts:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"


def test_every_jobs_path_mentioned_under_cluster_exists() -> None:
    mentioned = set()
    for text in _cluster_texts().values():
        mentioned |= set(re.findall(r"jobs/[A-Za-z_]+\.py", text))
    assert {"jobs/ingest.py", "jobs/qa.py", "jobs/embed.py", "jobs/report.py"} <= mentioned
    for rel in mentioned:
        assert (ROOT / rel).is_file(), f"{rel} is mentioned under cluster/ but does not exist"
    for script, jobs in (("spark/submit.sh", ("ingest", "report")), ("ray/submit.sh", ("embed", "qa"))):
        allowed = re.search(r'case "\$job" in ([a-z|]+)\)', (CLUSTER / script).read_text()).group(1).split("|")
        assert tuple(allowed) == jobs
        assert all((ROOT / "jobs" / f"{j}.py").is_file() for j in allowed)


def test_job_flags_used_under_cluster_are_accepted_by_the_jobs() -> None:
    # The flags every job takes (jobs/_common.py) plus the QA job's own (rag-spark qa).
    known = {"--config", "--dataset", "--out", "--lake", "--questions", "--limit", "--batch-size", "--backend"}
    seen: set[str] = set()
    for path, text in _cluster_texts().items():
        for flags in re.findall(r"jobs/[a-z_$]+\.py\"?((?:\s+--[a-z-]+(?:\s+[^\s\\-][^\s\\]*)?)+)", text):
            used = set(re.findall(r"--[a-z-]+", flags))
            assert used <= known, f"{path}: unknown job flags {used - known}"
            seen |= used
    assert {"--config", "--questions"} <= seen  # the pattern does find the commands


def test_build_pyfiles_zips_the_package_and_the_job_helper(tmp_path: Path) -> None:
    out = tmp_path / "dist" / "rag_spark.zip"
    names = build_pyfiles.build(out)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(names)
        assert zf.read("_common.py") == (ROOT / "jobs" / "_common.py").read_bytes()
    assert "rag_spark/__init__.py" in names and "rag_spark/config.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not list(out.parent.glob(".*.tmp"))


# --- report rotation ---------------------------------------------------------------------------------------------


def _run_output(out: Path, run_id: str, mrr: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(f"<html>{run_id}</html>", encoding="utf-8")
    metrics = {"run_id": run_id, "config_hash": "abc", "retrieval": {"mrr@10": mrr}, "answers": {"f1": 0.25}}
    (out / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (out / "lake").mkdir(exist_ok=True)  # the lake and index stay where they are


def test_rotation_keeps_the_last_n_and_indexes_them_newest_first(tmp_path: Path) -> None:
    out, reports = tmp_path / "out", tmp_path / "reports"
    (reports / "notes").mkdir(parents=True)  # not a timestamp: never deleted
    stamps = [f"2026112{d}T023000Z" for d in range(1, 6)]
    for i, stamp in enumerate(stamps):
        _run_output(out, f"run-{i}", 0.1 * i)
        folder = rotate_reports.rotate(out, reports, keep=3, stamp=stamp)
        assert folder == reports / stamp
        assert not (out / "report.html").exists() and (out / "lake").is_dir()
    kept = [p.name for p in rotate_reports.report_dirs(reports)]
    assert kept == stamps[-3:]
    assert (reports / "notes").is_dir()
    assert (reports / stamps[-1] / "report.html").read_text() == "<html>run-4</html>"
    index = (reports / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'href="([^"]+)"', index)
    assert links == [f"{s}/report.html" for s in reversed(stamps[-3:])]
    assert "run-4" in index and "0.400" in index and "run-0" not in index
    assert not list(reports.glob(".*"))  # no partial folder or temp index left


def test_rotation_escapes_metrics_in_the_index(tmp_path: Path) -> None:
    out, reports = tmp_path / "out", tmp_path / "reports"
    _run_output(out, '<script>alert("x")</script>', 0.5)
    rotate_reports.rotate(out, reports, keep=2, stamp="20261126T023000Z")
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in index
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in index


def test_rotation_refuses_missing_reports_duplicates_and_bad_arguments(tmp_path: Path) -> None:
    out, reports = tmp_path / "out", tmp_path / "reports"
    with pytest.raises(FileNotFoundError, match=r"report\.html"):
        rotate_reports.rotate(out, reports, keep=2, stamp="20261126T023000Z")
    _run_output(out, "a", 0.1)
    with pytest.raises(ValueError, match="keep=0"):
        rotate_reports.rotate(out, reports, keep=0, stamp="20261126T023000Z")
    with pytest.raises(ValueError, match="timestamp"):
        rotate_reports.rotate(out, reports, keep=2, stamp="yesterday")
    rotate_reports.rotate(out, reports, keep=2, stamp="20261126T023000Z")
    _run_output(out, "b", 0.2)
    with pytest.raises(FileExistsError, match="20261126T023000Z"):
        rotate_reports.rotate(out, reports, keep=2, stamp="20261126T023000Z")
    assert (out / "report.html").is_file()  # nothing moved by the refused run


def test_rotation_cli_exit_codes(tmp_path: Path) -> None:
    script = CLUSTER / "schedule" / "rotate_reports.py"
    out, reports = tmp_path / "out", tmp_path / "reports"
    missing = subprocess.run(
        [sys.executable, str(script), "--from", str(out), "--reports", str(reports)], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no report to collect" in missing.stderr
    _run_output(out, "cli", 0.3)
    ok = subprocess.run(
        [sys.executable, str(script), "--from", str(out), "--reports", str(reports), "--keep", "1"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    folder = Path(ok.stdout.strip())
    assert folder.parent == reports and (folder / "metrics.json").is_file()
    assert (reports / "index.html").is_file()
    shutil.rmtree(reports)
