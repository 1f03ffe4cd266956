"""`rag-spark sweep` on the tiny real dataset: variants share one lake, unchanged stages are reused, one report
compares them, and `report --run` regenerates a report from the tables alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.config import ConfigError, load_sweep
from rag_spark.lake import Lake
from rag_spark.report.assemble import assemble_run, report_for_run
from rag_spark.sweep import expand, run_sweep

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ["ingest", "clean", "chunk", "embed", "index"]


def _sweep_file(tmp: Path, **extra: object) -> Path:
    data = {
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "overrides": {
            "dataset": str(ROOT / "tests" / "data" / "tiny"),
            "generate.backend": "none",  # plumbing of the sweep; answers are the e2e test's business
            "evaluate.bootstrap_samples": 200,
            "clean.near_dedup.enabled": False,  # the tiny set's copy is exact; MinHash is the clean tests' business
        },
        "grid": {"retrieve.k": [5, 3]},
        "variants": [{"retrieve.k": 5, "index.factory": "HNSW16"}],
        "out": str(tmp / "sweep"),
        **extra,
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_sweep_validation_names_the_variant(tmp_path: Path) -> None:
    bad = _sweep_file(tmp_path, grid={"retrieve.k": [5], "chunk.sise_tokens": [64]})
    with pytest.raises(ConfigError, match=r"chunk.sise_tokens: unknown field"):
        expand(load_sweep(bad))
    bad = _sweep_file(tmp_path, grid={"retrieve.k": [0]})
    with pytest.raises(ConfigError, match=r"(?s)sweep variant 'retrieve.k=0'.*retrieve.k: Input should be greater"):
        expand(load_sweep(bad))
    same = _sweep_file(tmp_path, grid={"retrieve.k": [5]}, variants=[{"retrieve.k": 5}])
    with pytest.raises(ConfigError, match="same configuration"):
        expand(load_sweep(same))


@pytest.fixture(scope="module")
def swept(spark, ray_local, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = load_sweep(_sweep_file(tmp))
    return sweep, run_sweep(sweep, spark=spark, sweep_id="sweep-test"), Lake(spark, str(Path(sweep.out) / "lake"))


def test_unchanged_stages_are_reused(swept) -> None:  # type: ignore[no-untyped-def]
    _, result, lake = swept
    assert list(result.runs) == ["retrieve.k=5", "retrieve.k=3", "retrieve.k=5,index.factory=HNSW16"]
    assert result.reused["retrieve.k=5"] == []
    # Only k changed: ingest..index are not run again; the index change reruns the index, not the embeddings.
    assert result.reused["retrieve.k=3"] == UPSTREAM
    assert result.reused["retrieve.k=5,index.factory=HNSW16"] == ["ingest", "clean", "chunk", "embed"]
    lineage = lake.read(S.LINEAGE).where(F.col("run_id").isin(list(result.runs.values()))).toPandas()
    stages = {run: set(lineage[lineage["run_id"] == run_id]["stage"]) for run, run_id in result.runs.items()}
    assert stages["retrieve.k=5"] == {*UPSTREAM, "retrieve", "generate", "evaluate"}
    assert stages["retrieve.k=3"] == {"retrieve", "generate", "evaluate"}
    assert stages["retrieve.k=5,index.factory=HNSW16"] == {"index", "retrieve", "generate", "evaluate"}
    # Each table of ingest..embed was committed by the first variant only.
    for table in (S.BRONZE, S.SILVER, S.CHUNKS, S.EMBEDDINGS):
        meta = lake.commit_metadata(table, lake.version(table))  # type: ignore[arg-type]
        assert meta["run_id"] == result.runs["retrieve.k=5"], table.name
    k3 = lake.read(S.RETRIEVALS).where(F.col("run_id") == result.runs["retrieve.k=3"]).groupBy("query_id").count()
    assert {r["count"] for r in k3.collect()} <= {1, 2, 3}


def test_every_variant_is_evaluated_with_intervals(swept) -> None:  # type: ignore[no-untyped-def]
    sweep, result, lake = swept
    runs = lake.read(S.RUNS).where(F.col("sweep_id") == "sweep-test").toPandas()
    assert set(runs["variant"]) == set(result.runs)
    for name in result.runs:
        folder = Path(sweep.out) / "variants" / name.replace("/", "_")
        m = json.loads((folder / "metrics.json").read_text())
        r = m["retrieval"]
        low, high = r["mrr@10_ci95"]
        assert 0 <= low <= r["mrr@10"] <= high <= 1
        assert r["hit_rate@10"] >= r["recall@1"]
        assert m["answers"]["f1"] is None and m["answers"]["answered"] == 0  # generate.backend none
        assert m["answers"]["unanswerable"] == 0  # every tiny question has a qrel and a gold answer
    metrics = lake.read(S.METRICS).where(F.col("run_id") == result.runs["retrieve.k=3"]).toPandas()
    assert {"mrr@10", "mrr@10_ci95_low", "mrr@10_ci95_high", "hit_rate@3"} <= set(metrics["name"])


def test_one_report_compares_all_variants(swept, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, result, lake = swept
    inputs = assemble_run(lake, result.runs["retrieve.k=5"])
    assert list(inputs.configurations["variant"]) == list(result.runs)
    assert set(inputs.retrieval_at_k["config"]) == set(result.runs)
    # k=5 vs k=3 on MRR@10: the first 3 ranks are identical, so the paired difference is exactly 0 (p = 1).
    comp = inputs.comparisons.set_index(["metric", "a"])
    k3 = comp.loc[("mrr@10", "retrieve.k=3")]
    assert k3["diff"] == 0.0 or k3["diff"] <= 0  # a shorter list can only lose the ranks 4-5
    assert any("configurations" in s for s in inputs.analysis)
    # Cost beside quality: each run's index (backend, size, stage time) and its top 10 against this run's.
    conf = inputs.configurations.set_index("variant")
    assert conf.loc["retrieve.k=5", "overlap@10"] == 1.0  # the report's own run is the reference
    assert 0 < conf.loc["retrieve.k=3", "overlap@10"] < 1  # 3 documents of the reference's 5 at most
    assert set(conf["index_backend"]) == {"faiss"} and (conf["index_s"] > 0).all()
    hnsw = next(n for n in result.runs if "HNSW16" in n)
    assert conf.loc[hnsw, "index_mb"] > conf.loc["retrieve.k=5", "index_mb"] > 0  # the graph costs space
    page = result.report.read_text(encoding="utf-8")  # type: ignore[union-attr]
    for name in result.runs:
        assert name in page
    # Regenerated from the tables alone, under a new path: the same run, the same configurations.
    again = report_for_run(lake.spark, lake.root, result.runs["retrieve.k=3"], tmp_path / "again.html")
    assert result.runs["retrieve.k=3"] in again.read_text(encoding="utf-8")
