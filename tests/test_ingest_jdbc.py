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

from rag_spark.config import JdbcSource, load_config_dict
from rag_spark.ingest import IngestError
from rag_spark.ingest.documents import collect
from rag_spark.ingest.jdbc import read_jdbc

PASSWORD = "pg-Secret-4242"
CORPUS = Path(__file__).parent / "data" / "tiny" / "corpus.jsonl"


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    bindir: Path

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
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-o", opts, "-w", "-t", "60", "start")
    try:
        pg = Postgres(port, "rag", bindir)
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
