"""HTTP JSON API source against a local server (http.server in a thread) that paginates four ways, checks a
bearer token and fails transiently once per pagination style."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from rag_spark.config import HttpSource, load_config_dict
from rag_spark.ingest import IngestError
from rag_spark.ingest.documents import collect
from rag_spark.ingest.http import build_session, fetch_pages, map_records

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


class _Handler(BaseHTTPRequestHandler):
    failed: ClassVar[set[str]] = set()
    requests: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: Any, ctype: str = "application/json") -> None:
        data = (json.dumps(body) if ctype == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).requests.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"error": "unauthorized"})
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
