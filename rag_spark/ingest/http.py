"""Documents from a paginated HTTP JSON API.

Pages are fetched on the driver, one after the other (cursor and next-link pagination are sequential by
nature), with `requests` and urllib3's `Retry`: connection errors, 429 and 5xx are retried with exponential
backoff, honouring `Retry-After`. Records are mapped to documents by dotted field paths; records without an id
or text become quarantine rows. A source that fails after its retries raises `IngestError` (merging a partial
read would delete the documents it missed). The token, read from the environment variable named in the config,
is sent as a header and never logged or stored: `source_uri` is the configured URL.

Incremental reads: with `since_param`/`updated_field`, the largest modification value read becomes the
watermark sent as `since_param` next time; with `conditional`, the first page's ETag / Last-Modified are sent
back as If-None-Match / If-Modified-Since when the same first page is asked again, and a 304 means nothing
changed (zero records, not an error).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import requests
from pyspark.sql import DataFrame, SparkSession
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from rag_spark.config import HttpSource
from rag_spark.ingest import IngestError
from rag_spark.ingest.files import BAD_SCHEMA, DOCS_SCHEMA
from rag_spark.ingest.state import RemoteRead, SourceState, identity_hash, larger

log = logging.getLogger(__name__)

RETRY_STATUS = (429, 500, 502, 503, 504)


def dig(obj: Any, path: str | None) -> Any:
    """The value at a dotted path (`data.items`, `meta.next`) of parsed JSON; None when absent."""
    if path is None:
        return obj
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def build_session(src: HttpSource) -> requests.Session:
    """A session with the source's headers, token and retry policy."""
    retry = Retry(
        total=src.retries,
        connect=src.retries,
        read=src.retries,
        status=src.retries,
        backoff_factor=src.backoff_s,
        status_forcelist=RETRY_STATUS,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"Accept": "application/json", **src.headers})
    if src.token_env is not None:
        token = os.environ.get(src.token_env)
        if token is None:
            raise IngestError(f"http source {src.name!r}: environment variable {src.token_env} (token_env) is not set")
        session.headers[src.token_header] = f"{src.token_prefix}{token}"
    return session


def _url_key(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()


def fetch_pages(
    src: HttpSource,
    session: requests.Session,
    *,
    since: str | None = None,
    previous: SourceState | None = None,
    first: dict[str, Any] | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yields (page URL without secrets, parsed JSON) for every page, following the configured pagination.

    Args:
        since: sent as `since_param` (the previous watermark); None sends nothing.
        previous: the source's stored state; its validators are sent with the first page when they answered
            the very same first-page URL.
        first: filled with what the first page answered: `etag`, `last_modified`, `validators_for` (its URL's
            sha1) and `not_modified` (a 304: nothing is yielded).

    Raises:
        IngestError: on a non-2xx status after the retries, a transport error, a body that is not JSON, or
            more than `max_pages` pages.
    """
    url: str | None = src.url
    params: dict[str, Any] = dict(src.params)
    if since is not None and src.since_param is not None:
        params[src.since_param] = since
    if src.pagination == "page":
        params[src.page_param] = src.start_page
    elif src.pagination == "offset":
        params[src.offset_param] = 0
    if src.pagination in ("page", "offset") and src.limit_param:
        params[src.limit_param] = src.page_size
    for n in range(src.max_pages):
        assert url is not None
        headers: dict[str, str] = {}
        if n == 0 and src.conditional and previous is not None and previous.validators_for:
            asked = requests.Request("GET", url, params=params or None).prepare().url or url
            if _url_key(asked) == previous.validators_for:
                if previous.etag:
                    headers["If-None-Match"] = previous.etag
                if previous.last_modified:
                    headers["If-Modified-Since"] = previous.last_modified
        try:
            resp = session.get(url, params=params or None, timeout=src.timeout_s, headers=headers or None)
        except requests.RequestException as err:
            raise IngestError(f"http source {src.name!r}: GET {url} failed: {type(err).__name__}: {err}") from None
        shown = resp.url
        if n == 0 and first is not None:
            first.update(
                etag=resp.headers.get("ETag"),
                last_modified=resp.headers.get("Last-Modified"),
                validators_for=_url_key(shown),
                not_modified=resp.status_code == 304,
            )
        if resp.status_code == 304:
            if n == 0 and headers:
                log.info("http source %s: not modified since the previous run (HTTP 304)", src.name)
                return
            raise IngestError(
                f"http source {src.name!r}: GET {shown} -> HTTP 304 to a request that was not conditional"
            )
        if not resp.ok:
            raise IngestError(
                f"http source {src.name!r}: GET {shown} -> HTTP {resp.status_code} after {src.retries} retries"
            )
        try:
            page = resp.json()
        except ValueError:
            raise IngestError(
                f"http source {src.name!r}: GET {shown} did not return JSON: {resp.text[:120]!r}"
            ) from None
        yield shown, page
        records = dig(page, src.records_field)
        n_records = len(records) if isinstance(records, list) else 0
        if src.pagination == "none":
            return
        if src.pagination == "page":
            if n_records == 0 or (src.limit_param and n_records < src.page_size):
                return
            params[src.page_param] = int(params[src.page_param]) + 1
        elif src.pagination == "offset":
            if n_records == 0 or n_records < src.page_size:
                return
            params[src.offset_param] = int(params[src.offset_param]) + n_records
        elif src.pagination == "cursor":
            cursor = dig(page, src.cursor_field)
            if cursor in (None, "") or n_records == 0:
                return
            params[src.cursor_param] = cursor
        else:  # next_link: a URL in the body, else the Link header
            nxt = dig(page, src.next_field) if src.next_field else None
            if not nxt:
                nxt = resp.links.get("next", {}).get("url")
            if not nxt:
                return
            url, params = urljoin(shown, str(nxt)), {}
        log.debug("http source %s: page %d done", src.name, n + 1)
    raise IngestError(f"http source {src.name!r}: more than max_pages={src.max_pages} pages")


def map_records(src: HttpSource, pages: Iterator[tuple[str, Any]]) -> tuple[list[tuple], list[tuple]]:
    """Pages -> (document rows, bad rows) as plain tuples in the DOCS_SCHEMA / BAD_SCHEMA column order."""
    docs: list[tuple] = []
    bad: list[tuple] = []
    for page_url, page in pages:
        records = dig(page, src.records_field)
        if not isinstance(records, list):
            bad.append(
                (
                    src.url,
                    f"page:{page_url}",
                    "no record list in the page",
                    f"records_field={src.records_field!r}",
                    json.dumps(page)[:300],
                )
            )
            continue
        for rec in records:
            raw = json.dumps(rec, ensure_ascii=False, sort_keys=True)
            rid = dig(rec, src.id_field) if isinstance(rec, dict) else None
            text = dig(rec, src.text_field) if isinstance(rec, dict) else None
            title = dig(rec, src.title_field) if isinstance(rec, dict) and src.title_field else None
            ref = f"{src.name}/{rid}" if rid not in (None, "") else f"record:{page_url}#{len(docs) + len(bad)}"
            if not isinstance(rec, dict):
                bad.append((src.url, ref, "record is not a JSON object", None, raw[:300]))
            elif rid in (None, "") or isinstance(rid, (dict, list)):
                bad.append((src.url, ref, f"missing id field '{src.id_field}'", None, raw[:300]))
            elif not isinstance(text, str) or not text.strip():
                bad.append((src.url, ref, f"missing or empty text field '{src.text_field}'", None, raw[:300]))
            else:
                docs.append((ref, src.url, "json", None if title is None else str(title), text, len(raw.encode())))
    return docs, bad


def _max_updated(src: HttpSource, pages: list[tuple[str, Any]]) -> tuple[str | None, str | None, int]:
    """(largest `updated_field` value as text, "number" or "string", records lacking it) over the pages.

    Numbers compare as numbers; anything else as text, which orders ISO-8601 timestamps of one format."""
    values: list[Any] = []
    missing = 0
    for _, page in pages:
        records = dig(page, src.records_field)
        for rec in records if isinstance(records, list) else []:
            v = dig(rec, src.updated_field) if isinstance(rec, dict) else None
            if v is None or isinstance(v, (dict, list)):
                missing += 1
            else:
                values.append(v)
    if not values:
        return None, None, missing
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return str(max(values)), "number", missing
    return max(str(v) for v in values), "string", missing


def read_http(spark: SparkSession, src: HttpSource) -> tuple[DataFrame, DataFrame, str]:
    """Fetches every page of the API and returns (documents, bad rows, source_uri); see `read_http_since`."""
    got = read_http_since(spark, src, None)
    return got.docs, got.bad, got.uri


def read_http_since(spark: SparkSession, src: HttpSource, previous: SourceState | None) -> RemoteRead:
    """Fetches the API's pages (only records changed since the stored watermark when `since_param` is set and
    `previous` holds one; nothing on a 304) and returns the documents, bad rows and the source's next state.

    Raises:
        IngestError: if the API cannot be read completely.
    """
    since = previous.watermark if previous is not None and src.since_param is not None else None
    first: dict[str, Any] = {}
    with build_session(src) as session:
        pages = list(fetch_pages(src, session, since=since, previous=previous, first=first))
    docs, bad = map_records(src, iter(pages))
    n_read = len(docs) + len(bad)
    watermark: str | None = None
    wtype: str | None = None
    if since is not None and previous is not None:
        watermark, wtype = previous.watermark, previous.watermark_type
    if src.updated_field is not None:
        top, top_type, missing = _max_updated(src, pages)
        if top is not None and top_type is not None:
            if wtype is not None and wtype != top_type:
                wtype = "string"  # mixed kinds of values: text order, like the API's own string parameter
            wtype = wtype or top_type
            watermark = larger(watermark, top, wtype)
        if missing:
            log.warning(
                "http source %s: %d record(s) without '%s': their later changes cannot be seen incrementally",
                src.name, missing, src.updated_field,
            )  # fmt: skip
    mode = "not_modified" if first.get("not_modified") else ("incremental" if since is not None else "full")
    if mode == "not_modified":
        assert previous is not None
        state = previous
    else:
        state = SourceState(
            src.name,
            "http",
            src.url,
            identity_hash(src),
            watermark,
            wtype,
            first.get("etag"),
            first.get("last_modified"),
            first.get("validators_for"),
        )
    log.info("http source %s: %s, %d records, %d rejected", src.name, mode, len(docs), len(bad))
    return RemoteRead(
        spark.createDataFrame(docs, DOCS_SCHEMA),
        spark.createDataFrame(bad, BAD_SCHEMA),
        src.url,
        mode,
        n_read,
        state,
        since,
    )
