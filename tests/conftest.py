"""Shared fixtures: one SparkSession with Delta for the whole session, one local Ray, the tiny real dataset."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAG_SPARK_PROGRESS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

TINY = Path(__file__).parent / "data" / "tiny"
# The shared session's per-config SQL settings as the `spark` fixture set them. A test that builds a pipeline from a
# default SparkConfig resets them on the shared session (getOrCreate applies a builder's settings to the running
# session, as on a cluster); `_restore_shared_spark_conf` puts them back after each test.
_SHARED_CONF: dict[str, str] = {}
_PER_CONFIG_KEYS = ("spark.sql.shuffle.partitions", "spark.databricks.delta.snapshotPartitions")


@pytest.fixture(autouse=True)
def _restore_shared_spark_conf() -> Iterator[None]:
    yield
    if not _SHARED_CONF or "pyspark.sql" not in sys.modules:
        return
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is None:
        return
    for key, value in _SHARED_CONF.items():
        if session.conf.get(key) != value:
            session.conf.set(key, value)


@pytest.fixture(scope="session")
def tiny_dataset() -> Path:
    return TINY


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from rag_spark.config import SparkConfig
    from rag_spark.spark import build_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = build_spark(
        SparkConfig(
            master="local[2]",
            shuffle_partitions=2,
            driver_memory="2g",
            conf={"spark.sql.warehouse.dir": str(warehouse)},
        )
    )
    _SHARED_CONF.update({key: str(session.conf.get(key)) for key in _PER_CONFIG_KEYS})
    yield session
    _SHARED_CONF.clear()
    session.stop()


@pytest.fixture(scope="session")
def ingest_run(spark):  # type: ignore[no-untyped-def]
    """Runs the ingest stage once and checks the accounting invariant against the lake; returns how its one
    database/API source was read (the stage info's `sources` entry)."""
    from rag_spark import schema as S
    from rag_spark.pipeline import Pipeline

    def run(cfg, run_id: str, **kw):  # type: ignore[no-untyped-def]
        p = Pipeline(cfg, spark=spark, run_id=run_id, **kw)
        info = p.ingest().info
        ids = [r.doc_id for r in p.lake.read(S.BRONZE).select("doc_id").collect()]
        assert len(set(ids)) == len(ids) == info["bronze"]  # MERGEd, never duplicated
        assert p.lake.read(S.QUARANTINE).where("stage = 'ingest'").count() == info["quarantined"]
        assert info["documents_in"] == info["bronze"] + info["quarantined"]
        (read,) = info["sources"]
        return read

    return run


@pytest.fixture(scope="session")
def tiny_chunked(spark, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """ingest -> clean -> chunk of the tiny dataset with configs/tiny.yaml, once per session. Tests that start
    further down the pipeline copy its `lake/` folder into their own `out` (stage hashes do not include `out`);
    nothing may write into this one."""
    from rag_spark.config import load_config
    from rag_spark.pipeline import Pipeline

    out = tmp_path_factory.mktemp("tiny-chunked")
    cfg = load_config(TINY.parents[2] / "configs" / "tiny.yaml").with_overrides(dataset=str(TINY), out=str(out))
    Pipeline(cfg, spark=spark).run(["ingest", "clean", "chunk"])
    return out


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    from rag_spark.config import RayConfig
    from rag_spark.raycluster import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=512))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def encoder():  # type: ignore[no-untyped-def]
    from rag_spark.config import EmbedConfig
    from rag_spark.embed.encoders import build_encoder

    return build_encoder(EmbedConfig(backend="sentence-transformers"))
