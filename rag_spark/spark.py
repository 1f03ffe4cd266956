"""Builds the SparkSession every Spark stage runs in: Delta Lake enabled, local defaults sized for a laptop."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from rag_spark.config import SparkConfig

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _jars_folder(jars_dir: str) -> Path:
    folder = Path(jars_dir)
    return folder if folder.is_absolute() else PROJECT_ROOT / folder


def delta_jars(jars_dir: str) -> list[str]:
    """Returns the Delta jars found in `jars_dir` (relative paths resolve from the project root)."""
    folder = _jars_folder(jars_dir)
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.glob("delta-*.jar"))


def extra_jars(jars_dir: str) -> list[str]:
    """The other jars of `jars_dir`: JDBC drivers (PostgreSQL from `make jars`, or any one dropped there)."""
    folder = _jars_folder(jars_dir)
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.glob("*.jar") if not p.name.startswith("delta-"))


def build_spark(cfg: SparkConfig) -> SparkSession:
    """Returns a SparkSession with Delta Lake's SQL extension and catalog.

    The Delta jars come from `cfg.jars_dir` (filled by `make jars` from Maven Central) or, when that folder is
    empty, from `cfg.packages` through Spark's own Ivy resolution. On a cluster (spark-submit) the session
    already exists and is reused with the same settings.
    """
    # Executors run the same interpreter (and so the same packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(cfg.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config(
            "spark.databricks.delta.snapshotPartitions",
            str(cfg.delta_snapshot_partitions or cfg.shuffle_partitions),
        )
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # Readers without deletion-vector support (delta-rs on the Ray side) read every table we write.
        .config("spark.databricks.delta.properties.defaults.enableDeletionVectors", "false")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
    )
    if not _inside_spark_submit():
        builder = builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
    jars = delta_jars(cfg.jars_dir)
    if not jars:
        log.info("no Delta jars in %s; resolving %s through spark.jars.packages", cfg.jars_dir, cfg.packages)
        builder = builder.config("spark.jars.packages", ",".join(cfg.packages))
    jars += extra_jars(cfg.jars_dir)
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _inside_spark_submit() -> bool:
    # spark-submit sets these for the driver it launches; the master then comes from the command line.
    return "SPARK_SUBMIT_OPTS" in os.environ or os.environ.get("SPARK_ENV_LOADED") == "1"
