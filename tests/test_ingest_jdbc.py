"""JDBC source against a real PostgreSQL server that this module starts (initdb + pg_ctl on a temporary folder
and a free loopback port) and stops; only what it started is removed."""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from delta.tables import DeltaTable

from rag_spark import schema as S
from rag_spark.cli import main
from rag_spark.config import ConfigError, JdbcSource, PipelineConfig, load_config_dict
from rag_spark.ingest import IngestError
from rag_spark.ingest.documents import PreviousIngest, collect
from rag_spark.ingest.jdbc import read_jdbc, read_jdbc_since
from rag_spark.ingest.state import SourceState, larger, shifted
from rag_spark.pipeline import Pipeline

PASSWORD = "pg-Secret-4242"
CORPUS = Path(__file__).parent / "data" / "tiny" / "corpus.jsonl"


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    bindir: Path
    log: Path
    """The server's log: every statement it ran (log_statement=all), to see what was pushed down."""

    @property
    def url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/postgres"

    def psql(self, sql: str) -> str:
        out = subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"],
            input=sql, env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return out.stdout


def _pg_bindir() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _record(line: str) -> dict[str, str] | None:
    """A real Wikipedia summary of the tiny corpus (it also holds a deliberately malformed line)."""
    try:
        r = json.loads(line)
    except ValueError:
        return None
    return r if isinstance(r, dict) and r.get("text") and r.get("title") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (`make test` installs Debian's postgresql package when run as root)")
    # initdb refuses to run as root: as root, the server runs as Debian's `postgres` system user.
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    tmp = Path(tempfile.mkdtemp(prefix="rag-spark-pg-"))
    (tmp / "pw").write_text(PASSWORD + "\n")
    if as_user:
        shutil.chown(tmp, "postgres")
        shutil.chown(tmp / "pw", "postgres")
    data, port = tmp / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "rag", f"--pwfile={tmp / 'pw'}", "-A", "scram-sha-256",
        "-E", "UTF8", "--locale=C")  # fmt: skip
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c log_statement=all"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-o", opts, "-w", "-t", "60", "start")
    try:
        pg = Postgres(port, "rag", bindir, tmp / "log")
        rows = [r for r in map(_record, CORPUS.read_text(encoding="utf-8").splitlines()) if r][:10]
        values = ",\n".join(f"({i}, $t${r['title']}$t$, $t${r['text']}$t$)" for i, r in enumerate(rows, 1))
        pg.psql(
            "CREATE TABLE docs (id integer PRIMARY KEY, title text, body text);\n"
            f"INSERT INTO docs VALUES {values};\n"
            f"INSERT INTO docs VALUES ({len(rows) + 1}, 'sans texte', NULL), ({len(rows) + 2}, 'vide', '   ');\n"
        )
        yield pg
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)


def _jdbc(pg: Postgres, **kw: object) -> JdbcSource:
    spec = {
        "kind": "jdbc",
        "name": "pg",
        "url": pg.url,
        "user_env": "RAG_TEST_PG_USER",
        "password_env": "RAG_TEST_PG_PASSWORD",
        "id_column": "id",
        "title_column": "title",
        "text_column": "body",
        **kw,
    }
    return load_config_dict({"ingest": {"sources": [spec]}}).ingest.sources[0]  # type: ignore[return-value]


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_TEST_PG_USER", "rag")
    monkeypatch.setenv("RAG_TEST_PG_PASSWORD", PASSWORD)


def test_partitioned_table_read(
    spark, postgres: Postgres, pg_env: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    src = _jdbc(postgres, table="docs", partition_column="id", lower_bound=1, upper_bound=12, num_partitions=3)
    docs, bad, uri = read_jdbc(spark, src)
    assert docs.rdd.getNumPartitions() == 3
    assert uri == f"{postgres.url}#table=docs"
    got = {r.doc_id: r for r in docs.collect()}
    assert sorted(got) == sorted(f"pg/{i}" for i in range(1, 11))
    expected = postgres.psql("SELECT title || '|' || body FROM docs WHERE id = 3").strip()
    assert f"{got['pg/3'].title}|{got['pg/3'].raw_text}" == expected
    assert sorted((r.record_id, r.reason) for r in bad.collect()) == [
        ("pg/11", "missing or empty text column 'body'"),
        ("pg/12", "missing or empty text column 'body'"),
    ]
    # Through `collect`: one `sources` row, bronze-ready rows; the password is in no row and no log line.
    cfg = load_config_dict({"ingest": {"include_dataset": False, "sources": [src.model_dump()]}}).ingest
    collected = collect(spark, str(tmp_path), cfg, "r1")
    rows = [*collected.docs.collect(), *collected.quarantine.collect(), *collected.sources.collect()]
    assert len(rows) == 10 + 2 + 1
    assert not any(PASSWORD in str(r) for r in rows)
    assert PASSWORD not in caplog.text and PASSWORD not in cfg.model_dump_json()


def test_partitioned_query_and_errors(spark, postgres: Postgres, pg_env: None, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    src = _jdbc(
        postgres,
        query="SELECT id, 'Q: ' || title AS title, body FROM docs WHERE id <= 5",
        partition_column="id",
        lower_bound=1,
        upper_bound=5,
        num_partitions=2,
    )
    docs, bad, uri = read_jdbc(spark, src)
    assert docs.rdd.getNumPartitions() == 2 and "#query-sha1=" in uri
    rows = docs.collect()
    assert sorted(r.doc_id for r in rows) == [f"pg/{i}" for i in range(1, 6)]
    assert all(r.title.startswith("Q: ") for r in rows) and bad.count() == 0

    with pytest.raises(IngestError, match="no column \\['nope'\\]"):
        read_jdbc(spark, _jdbc(postgres, table="docs", text_column="nope"))
    monkeypatch.setenv("RAG_TEST_PG_PASSWORD", "wrong-password")
    with pytest.raises(IngestError, match=r"jdbc source 'pg'.*cannot read") as err:
        read_jdbc(spark, _jdbc(postgres, table="docs"))
    assert "wrong-password" not in str(err.value)
    monkeypatch.delenv("RAG_TEST_PG_PASSWORD")
    with pytest.raises(IngestError, match="environment variable RAG_TEST_PG_PASSWORD"):
        read_jdbc(spark, _jdbc(postgres, table="docs"))


# --- incremental reads (incremental_column, watermark, source_state) ------------------------------------------


def _pipeline_cfg(tmp_path: Path, src: JdbcSource) -> PipelineConfig:
    data = tmp_path / "data"
    (data / "qrels").mkdir(parents=True, exist_ok=True)
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "Qu\'est-ce que Debian ?"}\n', encoding="utf-8")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tpg/1\t1\n")
    spec = src.model_dump()
    return PipelineConfig.model_validate(
        {
            "dataset": str(data),
            "out": str(tmp_path / "out"),
            "ingest": {"include_dataset": False, "sources": [spec]},
            "spark": {"master": "local[2]", "shuffle_partitions": 2},  # as the test session (the CLI reuses it)
        }
    )


def _merge_metrics(spark, cfg: PipelineConfig, table: str) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    row = DeltaTable.forPath(spark, f"{cfg.resolved().lake_root}/{table}").history(1).first()
    assert row is not None and row.operation == "MERGE"
    m = row.operationMetrics
    return int(m["numTargetRowsInserted"]), int(m["numTargetRowsUpdated"]), int(m["numTargetRowsDeleted"])


@pytest.mark.slow
def test_incremental_reads_from_the_watermark(
    spark, ingest_run, postgres: Postgres, pg_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    rows = [r for r in map(_record, CORPUS.read_text(encoding="utf-8").splitlines()) if r][:8]
    values = ",\n".join(
        f"({i}, $t${r['title']}$t$, $t${r['text']}$t$, TIMESTAMPTZ '2026-01-01 00:00:00+00' + interval '{i} minutes')"
        for i, r in enumerate(rows, 1)
    )
    postgres.psql(
        "CREATE TABLE articles (id integer PRIMARY KEY, title text, body text, updated_at timestamptz);\n"
        f"INSERT INTO articles VALUES {values}, (9, 'vide', NULL, TIMESTAMPTZ '2026-01-01 00:09:00+00');\n"
    )
    n = len(rows)
    src = _jdbc(postgres, table="articles", incremental_column="updated_at", partition_column="id", lower_bound=1,
                upper_bound=12, num_partitions=2)  # fmt: skip
    cfg = _pipeline_cfg(tmp_path, src)
    lake = Pipeline(cfg, spark=spark).lake

    first = ingest_run(cfg, "run-1")
    assert first == {"name": "pg", "kind": "jdbc", "mode": "full", "read_from": None, "rows_read": n + 1,
                     "watermark": "2026-01-01T00:09:00.000000+00:00"}  # fmt: skip
    assert lake.read(S.BRONZE).count() == n

    # 2 rows inserted, 1 updated (its updated_at bumped), 1 untouched row's text changed WITHOUT a bump: an
    # incremental read must not see that one (that is what full refresh is for).
    postgres.psql(
        "INSERT INTO articles VALUES (20, 'Nouveau A', 'Premier article ajouté après la première lecture.',"
        " TIMESTAMPTZ '2026-02-01 10:00:00.000001+00'),"
        " (21, 'Nouveau B', 'Second article ajouté après la première lecture.', TIMESTAMPTZ '2026-02-01 09:00:00+00');\n"
        "UPDATE articles SET body = body || ' Texte révisé.', updated_at = TIMESTAMPTZ '2026-02-01 10:00:00.000002+00'"
        " WHERE id = 3;\n"
        "UPDATE articles SET body = 'Modifié sans toucher updated_at.' WHERE id = 4;\n"
    )
    log_before = postgres.log.read_text(errors="replace")
    second = ingest_run(cfg, "run-2")
    assert second["mode"] == "incremental" and second["rows_read"] == 3
    assert second["read_from"] == first["watermark"] and second["watermark"] == "2026-02-01T10:00:00.000002+00:00"
    # The filter ran in the database, in each of the partitioned range queries.
    new_log = postgres.log.read_text(errors="replace")[len(log_before) :]
    pushed = [line for line in new_log.splitlines() if "FROM articles" in line and '"updated_at" >' in line]
    assert len(pushed) == 2, new_log[-2000:]
    assert _merge_metrics(spark, cfg, "bronze") == (2, 1, 0)
    docs = {r.doc_id: r for r in lake.read(S.BRONZE).collect()}
    assert len(docs) == n + 2 and docs["pg/3"].raw_text.endswith(" Texte révisé.") and docs["pg/3"].run_id == "run-2"
    assert docs["pg/4"].raw_text != "Modifié sans toucher updated_at." and docs["pg/1"].run_id == "run-1"
    state = lake.read(S.SOURCE_STATE).collect()
    assert [(r.source_name, r.read_mode, r.rows_read, r.watermark_type) for r in state] == [
        ("pg", "incremental", 3, "timestamp")
    ]

    assert ingest_run(cfg, "run-3")["rows_read"] == 0  # nothing changed: nothing read
    assert _merge_metrics(spark, cfg, "bronze") == (0, 0, 0) and lake.read(S.BRONZE).count() == n + 2

    # A lag re-reads the window below the watermark (rows 20 and 3, not 21 an hour earlier).
    stored = SourceState.from_row(lake.read(S.SOURCE_STATE).first())
    lagged = read_jdbc_since(spark, src.model_copy(update={"watermark_lag": 1.0}), stored)
    assert (lagged.rows_read, lagged.read_from) == (2, "2026-02-01T09:59:59.000002+00:00")
    assert sorted(r.doc_id for r in lagged.docs.collect()) == ["pg/20", "pg/3"]

    # --full-refresh through the command line (in this process: it reuses the test's SparkSession).
    config = tmp_path / "config.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    assert main(["ingest", "--config", str(config), "--full-refresh"]) == 0
    printed = capsys.readouterr().out
    assert f"pg (jdbc): full read, {n + 3} rows read" in printed and "(full refresh)" in printed
    (state,) = lake.read(S.SOURCE_STATE).collect()
    assert (state.read_mode, state.rows_read, state.watermark) == ("full", n + 3, second["watermark"])
    docs = {r.doc_id: r for r in lake.read(S.BRONZE).collect()}
    assert len(docs) == n + 2 and docs["pg/4"].raw_text == "Modifié sans toucher updated_at."

    # A changed source definition (a query instead of the table) resets the watermark: full read.
    changed = src.model_copy(update={"table": None, "query": "SELECT id, title, body, updated_at FROM articles"})
    previous = PreviousIngest(
        lake.read(S.BRONZE), lake.read(S.QUARANTINE), lake.read(S.SOURCES), lake.read(S.SOURCE_STATE)
    )
    for definition, mode in ((src, "incremental"), (changed, "full")):
        ingest_cfg = _pipeline_cfg(tmp_path, definition).ingest
        got = collect(spark, str(tmp_path / "data"), ingest_cfg, "run-5", previous=previous)
        assert got.remote[0]["mode"] == mode
        for frame in got.cached:
            frame.unpersist()


def test_watermark_literals_are_typed_not_spliced(spark, postgres: Postgres, pg_env: None) -> None:  # type: ignore[no-untyped-def]
    src = _jdbc(postgres, table="docs", incremental_column="id", partition_column="id", lower_bound=1,
                upper_bound=12, num_partitions=2)  # fmt: skip
    prev = SourceState("pg", "jdbc", "x", "h", "5", "int")
    got = read_jdbc_since(spark, src, prev)
    assert (got.mode, got.rows_read, got.state.watermark) == ("incremental", 7, "12")
    assert sorted(r.doc_id for r in got.docs.collect()) == sorted(f"pg/{i}" for i in range(6, 11))
    assert got.docs.rdd.getNumPartitions() == 2
    # A stored value is parsed as its type before it reaches a query: no SQL from the state table.
    with pytest.raises(IngestError, match="not a valid int"):
        read_jdbc_since(spark, src, SourceState("pg", "jdbc", "x", "h", "5 OR 1=1", "int"))
    # A text watermark with quotes is a literal rendered and escaped by Spark's dialect, not SQL.
    text_src = _jdbc(postgres, table="docs", incremental_column="title")
    evil = SourceState("pg", "jdbc", "x", "h", "Z' OR '1'='1", "string")
    got = read_jdbc_since(spark, text_src, evil)
    assert got.rows_read == int(postgres.psql("SELECT count(*) FROM docs WHERE title > 'Z'' OR ''1''=''1'").strip())
    assert got.rows_read < 12 and postgres.psql("SELECT count(*) FROM docs").strip() == "12"
    with pytest.raises(IngestError, match=r"no column \['nope'\]"):
        read_jdbc_since(spark, _jdbc(postgres, table="docs", incremental_column="nope"), None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"incremental_column": "updated_at; DROP TABLE docs"}, "plain column name"),
        ({"incremental_column": "updated_at", "options": {"pushDownPredicate": "false"}}, "pushDownPredicate"),
        ({"watermark_lag": 5}, "watermark_lag needs incremental_column"),
        ({"incremental_column": "updated_at", "watermark_lag": -1}, "greater than or equal to 0"),
    ],
)
def test_incremental_config_errors(extra: dict[str, object], message: str) -> None:
    spec = {"kind": "jdbc", "name": "pg", "url": "jdbc:postgresql://h/db", "table": "docs", "id_column": "id",
            "text_column": "body", **extra}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        load_config_dict({"ingest": {"sources": [spec]}})


@pytest.mark.parametrize(
    ("expr", "options", "wtype", "stored", "lag", "read_from", "top"),
    [
        ("DATE '2026-01-01' + id", {}, "date", "2026-01-07", 0, "2026-01-07", "2026-01-13"),
        ("TIMESTAMP '2026-01-01' + id * interval '1 hour'", {"preferTimestampNTZ": "true"}, "timestamp_ntz",
         "2026-01-01T07:00:00.000000", 3600, "2026-01-01T06:00:00.000000", "2026-01-01T12:00:00.000000"),
        ("id::numeric(10,2)", {}, "decimal(10,2)", "7.00", 1, "6.00", "12.00"),
    ],
)  # fmt: skip
def test_watermark_types(  # type: ignore[no-untyped-def]
    spark, postgres: Postgres, pg_env: None, expr: str, options: dict[str, str], wtype: str, stored: str,
    lag: float, read_from: str, top: str,
) -> None:  # fmt: skip
    """Each kind of column round-trips its canonical text and is compared in the database (rows 7..12 read)."""
    src = _jdbc(postgres, query=f"SELECT id, title, body, {expr} AS v FROM docs", incremental_column="v",
                watermark_lag=lag, options=options)  # fmt: skip
    got = read_jdbc_since(spark, src, SourceState("pg", "jdbc", "x", "h", stored, wtype))
    assert (got.mode, got.read_from, got.state.watermark_type, got.state.watermark) == (
        "incremental", read_from, wtype, top
    )  # fmt: skip
    assert got.rows_read == 6
    full = read_jdbc_since(spark, src, None)
    assert (full.mode, full.rows_read, full.state.watermark) == ("full", 12, top)


def test_watermark_text_arithmetic() -> None:
    assert shifted("2026-01-01T00:00:00.000001+00:00", "timestamp", 0.5) == "2025-12-31T23:59:59.500001+00:00"
    assert shifted("100", "bigint", 10) == "90" and shifted("1.5", "double", 0.25) == "1.25"
    assert larger("9", "10", "int") == "10" and larger("b", "a", "string") == "b" and larger(None, "1", "int") == "1"
    assert larger("2026-01-02", "2025-12-31", "date") == "2026-01-02"
    with pytest.raises(ValueError, match="not a valid date"):
        shifted("2026-13-01", "date", 0)
    with pytest.raises(ValueError, match="cannot apply to a string"):
        shifted("abc", "string", 1)
