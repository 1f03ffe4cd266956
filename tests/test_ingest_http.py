"""HTTP JSON API source against a local server (http.server in a thread) that paginates four ways, checks a
bearer token and fails transiently once per pagination style."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from rag_spark import schema as S
from rag_spark.config import ConfigError, HttpSource, PipelineConfig, load_config_dict
from rag_spark.ingest import IngestError
from rag_spark.ingest.documents import collect
from rag_spark.ingest.http import build_session, fetch_pages, map_records, read_http_since
from rag_spark.ingest.state import identity_hash
from rag_spark.lake import Lake
from rag_spark.pipeline import Pipeline

TOKEN = "s3cret-token-value"
CORPUS = Path(__file__).parent / "data" / "tiny" / "corpus.jsonl"


def _records() -> list[dict[str, Any]]:
    """Real Wikipedia summaries of the tiny corpus as API records, plus one without text."""
    recs = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("_id") and r.get("text"):
            recs.append({"id": r["_id"], "attributes": {"title": r.get("title"), "body": r["text"]}})
    recs = recs[:7]
    recs.append({"id": "no-text", "attributes": {"title": "vide"}})
    return recs


RECORDS = _records()
PAGE = 3


def _items() -> list[dict[str, Any]]:
    """The records of `/items`, an API with a modification time per record (`updated`, ISO-8601)."""
    return [{**r, "updated": f"2026-01-01T00:0{i}:00Z"} for i, r in enumerate(RECORDS[:6] + RECORDS[-1:], 1)]


class _Handler(BaseHTTPRequestHandler):
    failed: ClassVar[set[str]] = set()
    requests: ClassVar[list[str]] = []
    items: ClassVar[list[dict[str, Any]]] = _items()
    conditional: ClassVar[list[tuple[str, str | None]]] = []
    """(path, If-None-Match) of each request to /items."""

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: Any, ctype: str = "application/json") -> None:
        data = (json.dumps(body) if ctype == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _items(self, q: dict[str, str]) -> None:
        """`?since=` keeps records updated after it; page pagination; an ETag per answer, 304 when it matches."""
        type(self).conditional.append((self.path, self.headers.get("If-None-Match")))
        items = [r for r in type(self).items if "since" not in q or r["updated"] > q["since"]]
        page, size = int(q.get("page", 1)), int(q.get("limit", PAGE))
        body = json.dumps({"data": {"items": items[(page - 1) * size : page * size]}}, sort_keys=True).encode()
        etag = f'"{hashlib.sha1(body).hexdigest()}"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).requests.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"error": "unauthorized"})
        if url.path == "/items":
            return self._items(q)
        if url.path == "/always500":
            return self._send(500, {"error": "down"})
        if url.path == "/notjson":
            return self._send(200, "<html>maintenance</html>", "text/html")
        # The second page of every style fails once with 503: the client must retry it.
        start = {"/page": (int(q.get("page", 1)) - 1) * PAGE, "/offset": int(q.get("offset", 0))}.get(url.path)
        if url.path in ("/cursor", "/next"):
            start = int(q.get("cursor", q.get("p", 0)))
        if start is None:
            return self._send(404, {"error": "no such endpoint"})
        if start == PAGE and url.path not in type(self).failed:
            type(self).failed.add(url.path)
            return self._send(503, {"error": "try again"})
        items = RECORDS[start : start + PAGE]
        nxt = start + PAGE if start + PAGE < len(RECORDS) else None
        if url.path == "/cursor":
            return self._send(200, {"data": {"items": items}, "next_cursor": None if nxt is None else str(nxt)})
        if url.path == "/next":
            return self._send(200, {"data": {"items": items}, "links": {"next": nxt and f"/next?p={nxt}"}})
        return self._send(200, {"data": {"items": items}})


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _source(base: str, path: str, **kw: Any) -> HttpSource:
    spec = {
        "kind": "http",
        "name": "api",
        "url": f"{base}{path}",
        "records_field": "data.items",
        "id_field": "id",
        "title_field": "attributes.title",
        "text_field": "attributes.body",
        "page_size": PAGE,
        "token_env": "RAG_TEST_API_TOKEN",
        "retries": 3,
        "backoff_s": 0.01,
        "timeout_s": 5,
        **kw,
    }
    return load_config_dict({"ingest": {"sources": [spec]}}).ingest.sources[0]  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("path", "style", "extra"),
    [
        ("/page", "page", {}),
        ("/offset", "offset", {}),
        ("/cursor", "cursor", {"cursor_field": "next_cursor"}),
        ("/next", "next_link", {"next_field": "links.next"}),
    ],
)
def test_pagination_styles_with_one_transient_failure(
    api: str, monkeypatch: pytest.MonkeyPatch, path: str, style: str, extra: dict[str, str]
) -> None:
    monkeypatch.setenv("RAG_TEST_API_TOKEN", TOKEN)
    src = _source(api, path, pagination=style, **extra)
    before = len(_Handler.requests)
    with build_session(src) as session:
        docs, bad = map_records(src, fetch_pages(src, session))
    want = [f"api/{r['id']}" for r in RECORDS if "body" in r["attributes"]]
    assert [d[0] for d in docs] == want
    assert docs[0][3] == RECORDS[0]["attributes"]["title"] and docs[0][4] == RECORDS[0]["attributes"]["body"]
    assert [(b[1], b[2]) for b in bad] == [("api/no-text", "missing or empty text field 'attributes.body'")]
    assert path in _Handler.failed  # the 503 happened and was retried
    # 3 pages of 3, 3, 2 records (+1 retried request); page/offset stop on the short last page.
    assert len(_Handler.requests) - before == 4


def test_api_through_collect_and_failures(
    spark, api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RAG_TEST_API_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    src = _source(api, "/page", pagination="page")
    cfg = load_config_dict({"ingest": {"include_dataset": False, "sources": [src.model_dump()]}}).ingest
    got = collect(spark, str(tmp_path), cfg, "r1")
    docs = {r.doc_id: r for r in got.docs.collect()}
    assert len(docs) == 7 and all(r.source_uri == f"{api}/page" and r.format == "json" for r in docs.values())
    bad = got.quarantine.collect()
    assert [(r.record_id, r.reason) for r in bad] == [("api/no-text", "missing or empty text field 'attributes.body'")]
    assert [r.kind for r in got.sources.collect()] == ["http"]

    with pytest.raises(IngestError, match=r"HTTP 500 after 3 retries") as err:
        with build_session(_source(api, "/always500")) as session:
            list(fetch_pages(_source(api, "/always500"), session))
    with pytest.raises(IngestError, match="did not return JSON"):
        with build_session(_source(api, "/notjson")) as session:
            list(fetch_pages(_source(api, "/notjson"), session))
    monkeypatch.setenv("RAG_TEST_API_TOKEN", "wrong")
    with pytest.raises(IngestError, match="HTTP 401"):
        with build_session(src) as session:
            list(fetch_pages(src, session))
    monkeypatch.delenv("RAG_TEST_API_TOKEN")
    with pytest.raises(IngestError, match="environment variable RAG_TEST_API_TOKEN"):
        build_session(src)
    # The token never reaches a log line, an error or a row.
    assert TOKEN not in caplog.text and TOKEN not in str(err.value)
    assert not any(TOKEN in str(r) for r in [*docs.values(), *bad])


# --- incremental reads (since_param / updated_field, conditional requests, source_state) ------------------------


@pytest.mark.slow
def test_incremental_api_since_watermark_and_304(
    spark, ingest_run, api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RAG_TEST_API_TOKEN", TOKEN)
    _Handler.items = _items()
    data = tmp_path / "data"
    (data / "qrels").mkdir(parents=True)
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "Debian ?"}\n', encoding="utf-8")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tapi/x\t1\n")
    src = _source(api, "/items", pagination="page", since_param="since", updated_field="updated")
    cfg = PipelineConfig.model_validate(
        {"dataset": str(data), "out": str(tmp_path / "out"),
         "ingest": {"include_dataset": False, "sources": [src.model_dump()]}}
    )  # fmt: skip
    lake = Pipeline(cfg, spark=spark).lake
    n = len(_Handler.items) - 1  # the last record has no text: quarantined

    first = ingest_run(cfg, "run-1")
    assert (first["mode"], first["rows_read"], first["watermark"]) == ("full", n + 1, "2026-01-01T00:07:00Z")
    assert all("since=" not in path for path, _ in _Handler.conditional)

    # 2 records added, 1 changed (its `updated` bumped).
    new = [dict(r, id=f"new-{i}", updated=f"2026-02-01T00:00:0{i}Z") for i, r in enumerate(_Handler.items[:2])]
    changed = dict(_Handler.items[2], updated="2026-02-01T00:00:05Z")
    changed["attributes"] = {**changed["attributes"], "body": changed["attributes"]["body"] + " Révisé."}
    _Handler.items = [*_Handler.items[:2], changed, *_Handler.items[3:], *new]
    # A crash after bronze's MERGE, before the state's: bronze holds the 3 rows, the watermark did not move.
    real_merge = Lake.merge

    def crash_on_state(self: Lake, table: S.Table, *args: Any, **kw: Any) -> int:
        if table == S.SOURCE_STATE:
            raise RuntimeError("injected crash before source_state")
        return real_merge(self, table, *args, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(Lake, "merge", crash_on_state)
        with pytest.raises(RuntimeError, match="injected crash"):
            Pipeline(cfg, spark=spark, run_id="run-crash").ingest()
    assert lake.read(S.BRONZE).count() == n + 2
    assert lake.read(S.SOURCE_STATE).first().watermark == first["watermark"]
    mark = len(_Handler.conditional)
    second = ingest_run(cfg, "run-2")  # reads the same 3 rows again (never skips them); MERGE absorbs them
    assert (second["mode"], second["rows_read"]) == ("incremental", 3)
    assert (second["read_from"], second["watermark"]) == ("2026-01-01T00:07:00Z", "2026-02-01T00:00:05Z")
    assert all("since=2026-01-01T00%3A07%3A00Z" in path for path, _ in _Handler.conditional[mark:])
    docs = {r.doc_id: r for r in lake.read(S.BRONZE).collect()}
    assert len(docs) == n + 2 and docs[f"api/{changed['id']}"].raw_text.endswith(" Révisé.")

    third = ingest_run(cfg, "run-3")  # nothing changed since: an empty answer (a new URL, so no validators)
    assert (third["mode"], third["rows_read"]) == ("incremental", 0)
    mark = len(_Handler.conditional)
    fourth = ingest_run(cfg, "run-4")  # the same first page again: If-None-Match -> 304
    assert (fourth["mode"], fourth["rows_read"], fourth["watermark"]) == ("not_modified", 0, "2026-02-01T00:00:05Z")
    assert len(_Handler.conditional) == mark + 1 and _Handler.conditional[mark][1] is not None
    assert lake.read(S.BRONZE).count() == n + 2  # carried over, nothing lost


def test_conditional_request_without_watermark(spark, api: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RAG_TEST_API_TOKEN", TOKEN)
    _Handler.items = _items()
    src = _source(api, "/items", pagination="page")
    first = read_http_since(spark, src, None)
    assert (first.mode, first.rows_read, first.state.watermark) == ("full", len(_Handler.items), None)
    assert first.state.etag and first.state.validators_for
    again = read_http_since(spark, src, first.state)
    assert (again.mode, again.rows_read, again.docs.count()) == ("not_modified", 0, 0)
    assert again.state == first.state
    _Handler.items = _Handler.items[1:]  # changed: the ETag differs, a 200 and a full read
    third = read_http_since(spark, src, first.state)
    assert (third.mode, third.rows_read) == ("full", len(_Handler.items))
    assert third.state.etag != first.state.etag
    # Without `conditional`, no validators are sent at all.
    mark = len(_Handler.conditional)
    read_http_since(spark, _source(api, "/items", pagination="page", conditional=False), third.state)
    assert [h for _, h in _Handler.conditional[mark:]] == [None, None, None]
    # A changed definition is another identity (the pipeline then ignores the stored state).
    assert identity_hash(src) != identity_hash(_source(api, "/items?v=2", pagination="page"))
    assert identity_hash(src) == identity_hash(_source(api, "/items", pagination="page", retries=1))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"since_param": "since"}, "since_param and updated_field go together"),
        ({"updated_field": "updated"}, "since_param and updated_field go together"),
        ({"since_param": "since", "updated_field": "u", "params": {"since": "x"}}, "also set in params"),
    ],
)
def test_incremental_config_errors(extra: dict[str, Any], message: str) -> None:
    spec = {"kind": "http", "name": "api", "url": "http://h/x", **extra}
    with pytest.raises(ConfigError, match=message):
        load_config_dict({"ingest": {"sources": [spec]}})
