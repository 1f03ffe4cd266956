"""Storage locations as URIs (rag_spark.storage) and the places that use them: config defaults, staging cleanup."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rag_spark import storage
from rag_spark.config import PipelineConfig
from rag_spark.index.shards import read_shard_vectors


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/data/lake", None),
        ("reports/run", None),
        ("C:/data", None),
        ("file:///tmp/lake", "file"),
        ("file:/tmp/lake", "file"),
        ("s3a://bucket/lake", "s3a"),
        ("S3://bucket/lake", "s3"),
        ("abfss://c@acct.dfs.core.windows.net/lake", "abfss"),
        ("gs://bucket/lake", "gs"),
        ("weird:name", None),
    ],
)
def test_scheme(location: str, expected: str | None) -> None:
    assert storage.scheme(location) == expected
    assert storage.is_remote(location) == (expected not in (None, "file"))


def test_join_keeps_uri_slashes() -> None:
    assert storage.join("file:///tmp/out", "lake") == "file:///tmp/out/lake"
    assert storage.join("s3a://bucket/", "lake", "_staging/", "x-1") == "s3a://bucket/lake/_staging/x-1"
    assert storage.join("/data/out/", "lake") == "/data/out/lake"
    assert storage.join("/", "lake") == "/lake"


def test_local_path() -> None:
    assert storage.local_path("/data/out") == Path("/data/out")
    assert storage.local_path("file:///data/out") == Path("/data/out")
    assert storage.local_path("file://localhost/data/out") == Path("/data/out")
    assert storage.local_path("file:/data/out") == Path("/data/out")
    with pytest.raises(ValueError, match=r"out: 's3a://b/out' is on an object store \(s3a://\)"):
        storage.local_path("s3a://b/out", "out")
    with pytest.raises(ValueError, match="names host 'nas'"):
        storage.local_path("file://nas/data", "out")


def test_arrow_location_maps_hadoop_s3_names() -> None:
    assert storage.arrow_location("s3a://bucket/k/x") == "s3://bucket/k/x"
    assert storage.arrow_location("s3n://bucket/k") == "s3://bucket/k"
    assert storage.arrow_location("gs://bucket/k") == "gs://bucket/k"
    assert storage.arrow_location("/tmp/x") == "/tmp/x"


def test_exists_and_read_through_file_uris(tmp_path: Path) -> None:
    shard = tmp_path / "staged" / "shard=0"
    shard.mkdir(parents=True)
    table = pa.table({"chunk_key": pa.array([7, 9], pa.int64()), "vector": [[1.0, 0.0], [0.0, 1.0]]})
    pq.write_table(table, shard / "part-0.parquet")
    uri = f"file://{shard}"
    assert storage.exists(uri) and storage.exists(str(shard))
    assert not storage.exists(f"file://{tmp_path}/staged/shard=1")
    ids, vecs = read_shard_vectors(uri)
    assert ids.tolist() == [7, 9] and vecs.shape == (2, 2)
    ids, vecs = read_shard_vectors(f"file://{tmp_path}/staged/shard=1")
    assert len(ids) == 0


def test_config_defaults_under_a_uri_out() -> None:
    cfg = PipelineConfig(out="file:///srv/rag/out")
    assert cfg.lake_root == "file:///srv/rag/out/lake"
    assert cfg.index_base == "file:///srv/rag/out/index"
    r = PipelineConfig(out="reports/x", lake="s3a://bucket/lake").resolved()
    assert r.lake == "s3a://bucket/lake" and Path(r.out).is_absolute()
    assert PipelineConfig(out="/o").lake_root == "/o/lake"


def test_drop_staging_removes_folders_behind_file_uris(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Staging folders are deleted through Hadoop's file system for any scheme (before, only plain paths were)."""
    from rag_spark.lake import Lake

    lake = Lake(spark, f"file://{tmp_path}/lake")
    staged = lake.write_staging(spark.range(5), "t")
    assert staged.startswith(f"file://{tmp_path}/lake/_staging/t-")
    assert storage.exists(staged) and lake.read_staging(staged).count() == 5
    lake.drop_staging(staged)
    assert not storage.exists(staged)
    lake.drop_staging(staged)  # already gone: no error
