import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rag_spark.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("index:\n  shards: 0\n  metric: cosine\n")
    res = _cli("run", "--config", str(bad))
    assert res.returncode == 2
    assert "index.shards" in res.stderr and "index.metric" in res.stderr


def test_unknown_stage(tmp_path: Path) -> None:
    res = _cli("run", "--stages", "ingest,frobnicate", "--out", str(tmp_path))
    assert res.returncode == 2 and "frobnicate" in res.stderr


def test_config_prints_effective_yaml() -> None:
    res = _cli("config", "--config", str(ROOT / "configs" / "demo.yaml"))
    assert res.returncode == 0
    assert "factory: Flat" in res.stdout and "model: packaged:multilingual-e5-small" in res.stdout


def test_job_entry_point_validates_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("chunk:\n  size_tokens: 10\n")
    res = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "ingest.py"), "--config", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "chunk.size_tokens" in res.stderr


def test_full_refresh_flag_only_where_ingest_runs() -> None:
    from rag_spark.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["ingest", "--full-refresh"]).full_refresh is True
    assert parser.parse_args(["run"]).full_refresh is False
    assert not hasattr(parser.parse_args(["clean"]), "full_refresh")
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        from _common import parse  # the spark-submit jobs' parser
    finally:
        sys.path.remove(str(ROOT / "jobs"))
    assert parse(["--full-refresh"], "ingest", ingest=True)[1] is True
    assert parse([], "ingest", ingest=True)[1] is False


def test_data_prepare_tiny_is_french_only(tmp_path: Path) -> None:
    res = _cli("data", "prepare", "--tiny", "--language", "en", "--out", str(tmp_path / "t"))
    assert res.returncode == 2 and "French only" in res.stderr
    assert not (tmp_path / "t").exists()


def test_data_prepare_offers_exactly_the_faq_editions() -> None:
    from rag_spark.cli import build_parser
    from rag_spark.data.debian_faq import EDITIONS

    parser = build_parser()
    for code in EDITIONS:
        assert parser.parse_args(["data", "prepare", "--language", code]).language == code
    res = _cli("data", "prepare", "--language", "de")
    assert res.returncode == 2 and "invalid choice: 'de'" in res.stderr
    assert all(f"'{code}'" in res.stderr for code in EDITIONS)
