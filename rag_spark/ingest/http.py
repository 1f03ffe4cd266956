"""Documents from a paginated HTTP JSON API.

Pages are fetched on the driver, one after the other (cursor and next-link pagination are sequential by
nature), with `requests` and urllib3's `Retry`: connection errors, 429 and 5xx are retried with exponential
backoff, honouring `Retry-After`. Records are mapped to documents by dotted field paths; records without an id
or text become quarantine rows. A source that fails after its retries raises `IngestError` (merging a partial
read would delete the documents it missed). The token, read from the environment variable named in the config,
is sent as a header and never logged or stored: `source_uri` is the configured URL.
"""

from __future__ import annotations

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


def fetch_pages(src: HttpSource, session: requests.Session) -> Iterator[tuple[str, Any]]:
    """Yields (page URL without secrets, parsed JSON) for every page, following the configured pagination.

    Raises:
        IngestError: on a non-2xx status after the retries, a transport error, a body that is not JSON, or
            more than `max_pages` pages.
    """
    url: str | None = src.url
    params: dict[str, Any] = dict(src.params)
    if src.pagination == "page":
        params[src.page_param] = src.start_page
    elif src.pagination == "offset":
        params[src.offset_param] = 0
    if src.pagination in ("page", "offset") and src.limit_param:
        params[src.limit_param] = src.page_size
    for n in range(src.max_pages):
        assert url is not None
        try:
            resp = session.get(url, params=params or None, timeout=src.timeout_s)
        except requests.RequestException as err:
            raise IngestError(f"http source {src.name!r}: GET {url} failed: {type(err).__name__}: {err}") from None
        shown = resp.url
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


def read_http(spark: SparkSession, src: HttpSource) -> tuple[DataFrame, DataFrame, str]:
    """Fetches every page of the API and returns (documents, bad rows, source_uri).

    Raises:
        IngestError: if the API cannot be read completely.
    """
    with build_session(src) as session:
        docs, bad = map_records(src, fetch_pages(src, session))
    log.info("http source %s: %d records, %d rejected", src.name, len(docs), len(bad))
    return spark.createDataFrame(docs, DOCS_SCHEMA), spark.createDataFrame(bad, BAD_SCHEMA), src.url
