from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from rag_spark import schema as S
from rag_spark.lake import Lake


def _q(spark, rows):  # type: ignore[no-untyped-def]
    return spark.createDataFrame(rows, S.QUERIES.schema)


def test_merge_is_idempotent_and_records_metadata(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lake = Lake(spark, str(tmp_path / "lake"))
    assert lake.version(S.QUERIES) is None
    assert lake.read(S.QUERIES).count() == 0
    rows = [("q1", "a"), ("q2", "b")]
    v0 = lake.merge(S.QUERIES, _q(spark, rows), meta={"run_id": "r1", "stage": "t"}, delete_missing=True)
    v1 = lake.merge(S.QUERIES, _q(spark, rows), meta={"run_id": "r2", "stage": "t"}, delete_missing=True)
    assert (v0, v1) == (0, 1)
    assertDataFrameEqual(lake.read(S.QUERIES), _q(spark, rows))
    assert lake.commit_metadata(S.QUERIES, 1) == {"run_id": "r2", "stage": "t"}
    # a snapshot merge updates, inserts and deletes in one commit
    v2 = lake.merge(S.QUERIES, _q(spark, [("q2", "B"), ("q3", "c")]), meta={}, delete_missing=True)
    assertDataFrameEqual(lake.read(S.QUERIES), _q(spark, [("q2", "B"), ("q3", "c")]))
    # time travel still sees the old snapshot
    assertDataFrameEqual(lake.read(S.QUERIES, version=v1), _q(spark, rows))
    assert v2 == 2


def test_delete_missing_limited_to_a_slice(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lake = Lake(spark, str(tmp_path / "lake"))
    rows = [
        ("ingest", "u1", "r1", "empty file", None, None, "run"),
        ("clean", "u2", "r2", "too short", None, None, "run"),
    ]
    lake.merge(S.QUARANTINE, spark.createDataFrame(rows, S.QUARANTINE.schema), meta={})
    lake.merge(
        S.QUARANTINE,
        spark.createDataFrame([], S.QUARANTINE.schema),
        meta={},
        delete_missing="t.stage = 'ingest'",
    )
    left = lake.read(S.QUARANTINE).collect()
    assert [(r.stage, r.record_id) for r in left] == [("clean", "r2")]


def test_lineage_rows(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lake = Lake(spark, str(tmp_path / "lake"))
    lake.record_lineage(
        run_id="r", stage="clean", config_hash="h", inputs={"bronze": 3}, outputs={"silver": 1}, rows=5, seconds=1.5
    )
    row = lake.read(S.LINEAGE).where(F.col("stage") == "clean").first()
    assert row is not None and row.inputs == {"bronze": 3} and row.outputs == {"silver": 1} and row.rows == 5


def test_a_table_from_an_older_schema_gains_new_nullable_columns_on_merge(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    import pytest
    from pyspark.sql.types import StringType, StructField, StructType

    lake = Lake(spark, str(tmp_path / "lake"))
    old = replace(S.QUERIES, schema=StructType(S.QUERIES.schema.fields[:2]))
    new = replace(S.QUERIES, schema=StructType([*old.schema.fields, StructField("lang", StringType(), True)]))
    lake.merge(old, spark.createDataFrame([("q1", "a"), ("q2", "b")], old.schema), meta={})
    before = lake.read(new)  # read with today's schema before any merge: the new column is there, null
    assert before.columns == new.schema.fieldNames() and [r.lang for r in before.collect()] == [None, None]
    v = lake.merge(new, spark.createDataFrame([("q2", "b", "fr")], new.schema), meta={"run_id": "r2"})
    got = {r.query_id: r.lang for r in lake.read(new, version=v).collect()}
    assert got == {"q1": None, "q2": "fr"}  # old rows read as null, merged rows carry the value
    assert lake.commit_metadata(new, v) == {"run_id": "r2"}
    required = replace(new, schema=StructType([*new.schema.fields, StructField("must", StringType(), False)]))
    with pytest.raises(ValueError, match=r"lacks non-nullable columns \['must'\]"):
        lake.merge(required, spark.createDataFrame([("q2", "b", "fr", "x")], required.schema), meta={})


def test_delta_state_is_rebuilt_in_the_sessions_partitions(spark) -> None:  # type: ignore[no-untyped-def]
    # build_spark sizes Delta's state reconstruction to spark.shuffle_partitions, not Delta's 50 tasks for every
    # small-table read and commit; spark.delta_snapshot_partitions overrides it. On the running session (what
    # getOrCreate returns) the settings apply as runtime confs; conftest's `_restore_shared_spark_conf` puts the
    # shared session's own values back after the test.
    from rag_spark.config import SparkConfig
    from rag_spark.spark import build_spark

    keys = ("spark.sql.shuffle.partitions", "spark.databricks.delta.snapshotPartitions")
    same = build_spark(SparkConfig(master="local[2]", shuffle_partitions=3))
    assert same is spark and [spark.conf.get(k) for k in keys] == ["3", "3"]
    build_spark(SparkConfig(master="local[2]", shuffle_partitions=3, delta_snapshot_partitions=5))
    assert [spark.conf.get(k) for k in keys] == ["3", "5"]
