"""Index backends behind one interface: FAISS (the sharded builds), OpenSearch and Milvus.

Every backend holds, per chunk, its vector and its ids (chunk_id, the primary key; chunk_key, the int64 the
retrievers and the `retrievals` table use; doc_id; text_hash, which says whether a stored chunk is current).
Searches return chunk keys, so the retrievers of rag_spark.retrieve work unchanged on any backend.

OpenSearch and Milvus keep each build in a physical index/collection named after its settings hash and a build
id, behind an alias (`index.opensearch.index`, `index.milvus.collection`): a rebuild fills a new physical
index while the alias keeps serving the old one, then swaps the alias in one call and drops the old one. An
incremental update (`sync`) compares the stored (chunk_id, text_hash) pairs with the tables' and upserts the
changed chunks and deletes the removed ones, by id, in the live index; rerunning it changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from rag_spark import storage
from rag_spark.config import IndexConfig, MilvusConfig, OpenSearchConfig
from rag_spark.index.search import SearchResult

log = logging.getLogger(__name__)

COLUMNS = ["chunk_id", "chunk_key", "doc_id", "title", "text", "text_hash", "vector"]
"""Columns of the batches a backend indexes (the `embeddings` table joined with `chunks`)."""


@dataclass(frozen=True)
class IndexStats:
    """What a backend holds and what it costs on disk (None where the engine does not say)."""

    backend: str
    name: str
    count: int
    bytes: int | None
    physical: str = ""


@dataclass
class SyncReport:
    """What `sync` did."""

    mode: str
    """`full` (a new physical index behind the alias) or `incremental` (upserts/deletes in the live one)."""
    reason: str | None
    upserted: int = 0
    deleted: int = 0
    physical: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Index(Protocol):
    """A vector index of chunks (see the module docstring)."""

    backend: str
    name: str

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k chunk keys and scores per query vector (-1 pads a short result), and the wall time."""
        ...

    def stats(self) -> IndexStats: ...

    def close(self) -> None: ...


class ExternalIndex(Index, Protocol):
    """A backend that stores chunks by id in an engine with aliases (OpenSearch, Milvus)."""

    def prefix(self, dim: int) -> str:
        """Start of the physical names of builds with this configuration (name + settings hash)."""
        ...

    def live(self) -> str | None:
        """The physical index the alias points to (None: no build yet)."""
        ...

    def drop(self, physical: str) -> None:
        """Deletes a physical index that never went live."""
        ...

    def create(self, dim: int, texts: Sequence[str]) -> str:
        """A new, empty physical index for vectors of `dim` (texts: a sample, for language detection)."""
        ...

    def upsert(self, batch: pa.Table, target: str | None = None) -> int:
        """Inserts or replaces the batch's chunks by chunk_id (in `target`, default: the live index)."""
        ...

    def delete(self, chunk_ids: Sequence[str]) -> int:
        """Deletes chunks by chunk_id from the live index; ids not present are ignored."""
        ...

    def refresh(self, physical: str | None = None) -> None:
        """Makes the writes so far searchable at full speed (OpenSearch: refresh; Milvus: flush the memtable,
        which Milvus Lite otherwise converts on every search)."""
        ...

    def publish(self, physical: str) -> None:
        """Points the alias at `physical` in one step and drops the physical indexes it pointed to before."""
        ...

    def keys(self) -> dict[str, str]:
        """chunk_id -> text_hash of every chunk in the live index."""
        ...


def settings_hash(backend: str, settings: dict[str, Any], model_id: str, dim: int, metric: str) -> str:
    """What decides whether a live build can be updated in place: 8 hex chars in the physical name."""
    payload = {"backend": backend, "settings": settings, "model": model_id, "dim": dim, "metric": metric}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]


def new_build_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]


def vectors_of(batch: pa.Table) -> np.ndarray:
    col = batch.column("vector").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def sync(
    index: ExternalIndex,
    batches: Callable[[set[str] | None], Iterator[pa.Table]],
    table_keys: dict[str, str],
    *,
    dim: int,
    incremental: bool,
    rebuild_fraction: float,
    sample_texts: Callable[[], Sequence[str]] = tuple,
) -> SyncReport:
    """Makes the index hold exactly the chunks of `table_keys` (chunk_id -> text_hash).

    Args:
        batches: yields the chunks to index as Arrow tables with `COLUMNS`; given a set of chunk ids, only those.
        table_keys: every chunk the index must hold when this returns.
        incremental: update the live build in place when its settings match (else always rebuild).
        rebuild_fraction: rebuild instead when the change set exceeds this fraction of the live build.
        sample_texts: called only when a new physical index is created (OpenSearch picks its analyzer language
            from them), so incremental and unchanged runs do not read a sample.
    """
    t0 = time.perf_counter()
    live = index.live()
    reason: str | None = None
    if not incremental:
        reason = "index.incremental is false"
    elif live is None:
        reason = "no live build"
    elif not live.startswith(index.prefix(dim)):  # type: ignore[attr-defined]
        reason = f"live build {live} has other settings than {index.prefix(dim)}"
    stored: dict[str, str] = {}
    if reason is None:
        stored = index.keys()
        changed = {c for c, h in table_keys.items() if stored.get(c) != h}
        gone = sorted(set(stored) - set(table_keys))
        if len(changed) + len(gone) > rebuild_fraction * max(len(stored), 1):
            reason = f"{len(changed)} changed + {len(gone)} removed > index.rebuild_fraction of {len(stored)}"
        else:
            n_up = sum(index.upsert(b) for b in batches(changed)) if changed else 0
            n_del = index.delete(gone) if gone else 0
            if n_up or n_del:
                index.refresh()
            log.info("%s %s: +%d upserted, -%d deleted", index.backend, live, n_up, n_del)
            return SyncReport("incremental", None, n_up, n_del, live or "", time.perf_counter() - t0)
    physical = index.create(dim, sample_texts())
    try:
        n_up = sum(index.upsert(b, target=physical) for b in batches(None))
        index.refresh(physical)
    except BaseException:
        index.drop(physical)
        raise
    index.publish(physical)
    log.info("%s: full build %s with %d chunks (%s)", index.backend, physical, n_up, reason)
    return SyncReport("full", reason, n_up, 0, physical, time.perf_counter() - t0)


# -- Milvus --------------------------------------------------------------------------------------------------


class MilvusIndex:
    """Chunks in a Milvus collection (Milvus Lite by default) behind an alias."""

    backend = "milvus"

    def __init__(self, cfg: MilvusConfig, metric: str, model_id: str, default_uri: str | Path) -> None:
        from pymilvus import MilvusClient

        self.cfg, self.metric_name, self.model_id = cfg, metric, model_id
        self.metric = "IP" if metric == "ip" else "L2"
        self.uri = cfg.uri or str(default_uri)
        self.local = "://" not in self.uri
        if self.local:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        token = os.environ.get(cfg.token_env, "") if cfg.token_env else ""
        if cfg.token_env and not token:
            raise ValueError(f"index.milvus.token_env={cfg.token_env!r}: that environment variable is not set")
        if self.local:
            # Milvus Lite's in-process gRPC server logs a traceback for AllocTimestamp (not implemented there),
            # which the client falls back from on its own
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        opts: dict[str, Any] = {}
        if self.local:
            # Milvus Lite's gRPC server keeps gRPC's default ping policy (at most one ping per 5 min without
            # data); pymilvus pings every 10 s, so the server sends GOAWAY "too_many_pings" and a client opened
            # again later in the same process (index stage, then retrieve) fails to connect.
            opts["grpc_options"] = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}
        self.client = MilvusClient(uri=self.uri, token=token, **opts)
        self.name = cfg.collection
        self._loaded: set[str] = set()

    def prefix(self, dim: int) -> str:
        settings = {"index_type": self.cfg.index_type, "params": self.cfg.params}
        return f"{self.name}_{settings_hash('milvus', settings, self.model_id, dim, self.metric_name)}_"

    def live(self) -> str | None:
        """The collection behind the alias, loaded (a collection opened from disk, by another process or after a
        restart, starts released: Milvus refuses to search or query it until `load_collection`)."""
        for coll in self.client.list_collections():
            if self.name in self.client.list_aliases(coll).get("aliases", []):
                if coll not in self._loaded:
                    self.client.load_collection(coll)
                    self._loaded.add(coll)
                return str(coll)
        return None

    def create(self, dim: int, texts: Sequence[str] = ()) -> str:
        from pymilvus import DataType, MilvusClient

        physical = self.prefix(dim) + new_build_id()
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=1024)
        schema.add_field("chunk_key", DataType.INT64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("text_hash", DataType.VARCHAR, max_length=128)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = self.client.prepare_index_params()
        params.add_index(
            field_name="vector", index_type=self.cfg.index_type, metric_type=self.metric, params=dict(self.cfg.params)
        )
        self.client.create_collection(physical, schema=schema, index_params=params)
        return physical

    def upsert(self, batch: pa.Table, target: str | None = None) -> int:
        if batch.num_rows == 0:
            return 0
        name = target or self.name
        vecs = vectors_of(batch)
        ids, keys = batch.column("chunk_id").to_pylist(), batch.column("chunk_key").to_pylist()
        docs, hashes = batch.column("doc_id").to_pylist(), batch.column("text_hash").to_pylist()
        n = 0
        for lo in range(0, len(ids), self.cfg.batch_size):
            hi = lo + self.cfg.batch_size
            part = zip(ids[lo:hi], keys[lo:hi], docs[lo:hi], hashes[lo:hi], vecs[lo:hi].tolist(), strict=True)
            rows = [
                {"chunk_id": c, "chunk_key": int(k), "doc_id": d, "text_hash": h, "vector": v} for c, k, d, h, v in part
            ]
            n += int(self.client.upsert(name, rows)["upsert_count"])
        return n

    def delete(self, chunk_ids: Sequence[str]) -> int:
        self.live()
        n = 0
        for lo in range(0, len(chunk_ids), self.cfg.batch_size):
            n += len(self.client.delete(self.name, ids=list(chunk_ids[lo : lo + self.cfg.batch_size])))
        return n

    def refresh(self, physical: str | None = None) -> None:
        self.client.flush(physical or self.live() or self.name)

    def publish(self, physical: str) -> None:
        old = self.live()
        if old is None:
            self.client.create_alias(physical, self.name)
        else:
            self.client.alter_alias(physical, self.name)
        for coll in self.client.list_collections():
            if coll.startswith(self.name + "_") and coll != physical:
                self.client.drop_collection(coll)

    def drop(self, physical: str) -> None:
        if self.client.has_collection(physical):
            self.client.drop_collection(physical)

    def keys(self) -> dict[str, str]:
        self.live()
        it = self.client.query_iterator(self.name, batch_size=4096, output_fields=["chunk_id", "text_hash"])
        out: dict[str, str] = {}
        while batch := it.next():
            out.update((r["chunk_id"], r["text_hash"]) for r in batch)
        it.close()
        return out

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if not self._loaded:
            self.live()
        t0 = time.perf_counter()
        hits = self.client.search(
            self.name,
            data=q.tolist(),
            limit=k,
            output_fields=["chunk_key"],
            search_params={"metric_type": self.metric, "params": dict(self.cfg.search_params)},
        )
        seconds = time.perf_counter() - t0
        ids = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf if self.metric == "IP" else np.inf, dtype=np.float32)
        for i, row in enumerate(hits):
            for j, h in enumerate(row[:k]):
                ids[i, j] = int(h["entity"]["chunk_key"])
                scores[i, j] = float(h["distance"])
        return SearchResult(ids=ids, scores=scores, seconds=seconds)

    def stats(self) -> IndexStats:
        live = self.live() or ""
        count = 0
        if live:
            count = int(self.client.query(self.name, filter="", output_fields=["count(*)"])[0]["count(*)"])
        size = _dir_bytes(Path(self.uri)) if self.local else None
        return IndexStats("milvus", self.name, count, size, live)

    def close(self) -> None:
        self.client.close()


# -- OpenSearch ----------------------------------------------------------------------------------------------

# ISO 639-1 -> OpenSearch language analyzer (analysis-common).
OS_ANALYZERS = {
    "ar": "arabic", "bg": "bulgarian", "ca": "catalan", "cs": "czech", "da": "danish", "de": "german",
    "el": "greek", "en": "english", "es": "spanish", "eu": "basque", "fa": "persian", "fi": "finnish",
    "fr": "french", "ga": "irish", "gl": "galician", "hi": "hindi", "hu": "hungarian", "hy": "armenian",
    "id": "indonesian", "it": "italian", "lt": "lithuanian", "lv": "latvian", "nl": "dutch", "no": "norwegian",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sv": "swedish", "th": "thai", "tr": "turkish",
}  # fmt: skip


def opensearch_analyzer(language: str, texts: Sequence[str]) -> str:
    """The analyzer of the BM25 field: `auto` detects the chunks' language like retrieve.bm25 does."""
    if language == "auto":
        from rag_spark.retrieve.lexical import detect_language

        language = detect_language(list(texts))
    if language in ("none", "standard"):
        return "standard"
    if language in OS_ANALYZERS:
        return OS_ANALYZERS[language]
    if language in OS_ANALYZERS.values():
        return language
    raise ValueError(
        f"index.opensearch.language={language!r}: no OpenSearch analyzer; use auto, standard, an ISO code of "
        f"{sorted(OS_ANALYZERS)} or an analyzer name"
    )


def _os_score_to_metric(scores: np.ndarray, metric: str) -> np.ndarray:
    """k-NN scores back to FAISS's numbers: inner product (score = 1 + ip, or 1 / (1 - ip) below 0) or squared
    L2 distance (score = 1 / (1 + d)), so scores compare across backends."""
    s = scores.astype(np.float64)
    with np.errstate(divide="ignore"):
        if metric == "ip":
            return np.where(s >= 1.0, s - 1.0, 1.0 - 1.0 / s).astype(np.float32)
        return (1.0 / s - 1.0).astype(np.float32)


class OpenSearchIndex:
    """Chunks in an OpenSearch index behind an alias: a `knn_vector` (Lucene HNSW) field for dense search and an
    analyzed `passage` field (title + text) for BM25."""

    backend = "opensearch"

    def __init__(self, cfg: OpenSearchConfig, metric: str, model_id: str) -> None:
        from opensearchpy import OpenSearch

        self.cfg, self.metric, self.model_id = cfg, metric, model_id
        auth = None
        if cfg.user_env or cfg.password_env:
            user = os.environ.get(cfg.user_env or "", "")
            password = os.environ.get(cfg.password_env or "", "")
            if not user or not password:
                raise ValueError(
                    f"index.opensearch.user_env={cfg.user_env!r} / password_env={cfg.password_env!r}: "
                    "both environment variables must be set"
                )
            auth = (user, password)
        self.client = OpenSearch(
            hosts=[cfg.url],
            http_auth=auth,
            verify_certs=cfg.verify_certs,
            ca_certs=cfg.ca_certs,
            timeout=cfg.timeout_s,
            retry_on_timeout=True,
            max_retries=3,
            http_compress=True,
        )
        self.name = cfg.index
        # opensearch-py logs every request at INFO; the pipeline's INFO log would be mostly that
        logging.getLogger("opensearch").setLevel(logging.WARNING)

    def _settings(self) -> dict[str, Any]:
        c = self.cfg
        return {"dense": c.dense, "m": c.hnsw_m, "efc": c.ef_construction, "lang": c.language, "shards": c.shards}

    def prefix(self, dim: int) -> str:
        return f"{self.name}-{settings_hash('opensearch', self._settings(), self.model_id, dim, self.metric)}-"

    def live(self) -> str | None:
        if not self.client.indices.exists_alias(name=self.name):
            return None
        return str(next(iter(self.client.indices.get_alias(name=self.name))))

    def create(self, dim: int, texts: Sequence[str] = ()) -> str:
        c = self.cfg
        physical = self.prefix(dim) + new_build_id()
        analyzer = opensearch_analyzer(c.language, texts)
        space = "innerproduct" if self.metric == "ip" else "l2"
        vector: dict[str, Any] = {"type": "knn_vector", "dimension": dim}
        if c.dense == "knn":
            vector["method"] = {
                "name": "hnsw",
                "engine": "lucene",
                "space_type": space,
                "parameters": {"m": c.hnsw_m, "ef_construction": c.ef_construction},
            }
        body = {
            "settings": {
                "index": {"number_of_shards": c.shards, "number_of_replicas": c.replicas, "knn": c.dense == "knn"}
            },
            "mappings": {
                "_meta": {"model_id": self.model_id, "metric": self.metric, "analyzer": analyzer},
                "properties": {
                    "chunk_id": {"type": "keyword"},
                    "chunk_key": {"type": "long"},
                    "doc_id": {"type": "keyword"},
                    "text_hash": {"type": "keyword"},
                    "passage": {"type": "text", "analyzer": analyzer},
                    "vector": vector,
                },
            },
        }
        self.client.indices.create(index=physical, body=body)
        log.info("opensearch: created %s (analyzer %s, dense %s)", physical, analyzer, c.dense)
        return physical

    def _bulk(self, actions: Iterable[dict[str, Any]]) -> int:
        from opensearchpy import helpers

        n = 0
        for ok, _item in helpers.streaming_bulk(
            self.client,
            actions,
            chunk_size=self.cfg.bulk_chunk,
            max_retries=self.cfg.max_retries,
            initial_backoff=1,
            max_backoff=30,
            raise_on_error=True,
            raise_on_exception=True,
        ):
            n += int(ok)
        return n

    def upsert(self, batch: pa.Table, target: str | None = None) -> int:
        from rag_spark.embed.encoders import passage_text

        if batch.num_rows == 0:
            return 0
        name = target or self.name
        vecs = vectors_of(batch).tolist()
        cols = {c: batch.column(c).to_pylist() for c in COLUMNS if c != "vector"}

        def actions() -> Iterator[dict[str, Any]]:
            for i, cid in enumerate(cols["chunk_id"]):
                yield {
                    "_op_type": "index",  # whole-document replace by id: reruns are idempotent
                    "_index": name,
                    "_id": cid,
                    "_source": {
                        "chunk_id": cid,
                        "chunk_key": int(cols["chunk_key"][i]),
                        "doc_id": cols["doc_id"][i],
                        "text_hash": cols["text_hash"][i],
                        "passage": passage_text(cols["title"][i], cols["text"][i]),
                        "vector": vecs[i],
                    },
                }

        n = self._bulk(actions())
        self.client.indices.refresh(index=name)
        return n

    def delete(self, chunk_ids: Sequence[str]) -> int:
        from opensearchpy import helpers

        n = 0
        for ok, item in helpers.streaming_bulk(
            self.client,
            ({"_op_type": "delete", "_index": self.name, "_id": c} for c in chunk_ids),
            chunk_size=self.cfg.bulk_chunk,
            max_retries=self.cfg.max_retries,
            raise_on_error=False,  # a missing id (404) is not an error for a delete by id
        ):
            status = item["delete"].get("status", 0)
            if not ok and status != 404:
                raise RuntimeError(f"opensearch: delete failed: {item}")
            n += int(ok)
        self.client.indices.refresh(index=self.name)
        return n

    def refresh(self, physical: str | None = None) -> None:
        self.client.indices.refresh(index=physical or self.name)

    def publish(self, physical: str) -> None:
        old = list(self.client.indices.get_alias(name=self.name)) if self.live() else []
        actions: list[dict[str, Any]] = [{"remove": {"index": o, "alias": self.name}} for o in old]
        actions.append({"add": {"index": physical, "alias": self.name}})
        self.client.indices.update_aliases(body={"actions": actions})  # one atomic cluster-state update
        for o in old:
            if o != physical:
                self.client.indices.delete(index=o)

    def drop(self, physical: str) -> None:
        self.client.indices.delete(index=physical, ignore_unavailable=True)

    def keys(self) -> dict[str, str]:
        from opensearchpy import helpers

        hits = helpers.scan(self.client, index=self.name, query={"_source": ["text_hash"]}, size=2000)
        return {h["_id"]: h["_source"]["text_hash"] for h in hits}

    def _dense_query(self, vec: list[float], k: int) -> dict[str, Any]:
        if self.cfg.dense == "knn":
            knn = {"vector": vec, "k": k, "method_parameters": {"ef_search": max(self.cfg.ef_search, k)}}
            return {"size": k, "query": {"knn": {"vector": knn}}}
        space = "innerproduct" if self.metric == "ip" else "l2"
        script = {
            "source": "knn_score",
            "lang": "knn",
            "params": {"field": "vector", "query_value": vec, "space_type": space},
        }
        return {"size": k, "query": {"script_score": {"query": {"match_all": {}}, "script": script}}}  # fmt: skip

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Dense top-k through `_msearch` (one request for all query vectors)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        body: list[dict[str, Any]] = []
        for vec in q.tolist():
            body += [{"index": self.name}, {**self._dense_query(vec, k), "_source": ["chunk_key"]}]
        t0 = time.perf_counter()
        resp = self.client.msearch(body=body)
        seconds = time.perf_counter() - t0
        ids = np.full((len(q), k), -1, dtype=np.int64)
        raw = np.full((len(q), k), np.nan, dtype=np.float64)
        for i, r in enumerate(resp["responses"]):
            if "error" in r:
                raise RuntimeError(f"opensearch: search failed: {r['error']}")
            for j, h in enumerate(r["hits"]["hits"][:k]):
                ids[i, j] = int(h["_source"]["chunk_key"])
                raw[i, j] = float(h["_score"])
        scores = _os_score_to_metric(raw, self.metric)
        scores[ids < 0] = -np.inf if self.metric == "ip" else np.inf
        return SearchResult(ids=ids, scores=scores, seconds=seconds)

    def search_text(self, text: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-k (chunk keys, scores) for one question, through the `passage` field's analyzer."""
        resp = self.client.search(
            index=self.name, body={"size": k, "query": {"match": {"passage": text}}, "_source": ["chunk_key"]}
        )
        hits = resp["hits"]["hits"]
        keys = np.array([int(h["_source"]["chunk_key"]) for h in hits], dtype=np.int64)
        return keys, np.array([float(h["_score"]) for h in hits], dtype=np.float32)

    def stats(self) -> IndexStats:
        live = self.live()
        if live is None:
            return IndexStats("opensearch", self.name, 0, 0, "")
        count = int(self.client.count(index=self.name)["count"])
        st = self.client.indices.stats(index=live, metric="store")
        return IndexStats("opensearch", self.name, count, int(st["_all"]["primaries"]["store"]["size_in_bytes"]), live)

    def close(self) -> None:
        self.client.close()


class OpenSearchBM25:
    """retrieve.retriever bm25 (and the lexical half of hybrid) on the OpenSearch backend."""

    name = "bm25"

    def __init__(self, index: OpenSearchIndex) -> None:
        self.index = index

    def search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search_text(text, n)


# -- FAISS ---------------------------------------------------------------------------------------------------


class FaissIndex:
    """The published sharded FAISS build (rag_spark.index.search.ShardedIndex) behind the `Index` interface.

    Builds, incremental updates and deletions of FAISS stay the index stage's manifest builds (Ray tasks per
    shard, `rag_spark.index.incremental`); this adapter searches the published build and reports its size."""

    backend = "faiss"

    def __init__(self, index_root: str | Path, cfg: IndexConfig, embed: Any = None) -> None:
        from rag_spark.index.search import ShardedIndex

        self.root = Path(index_root)
        self.sharded = ShardedIndex(self.root, cfg, embed)
        self.manifest = self.sharded.manifest
        self.name = self.manifest.build_id

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        return self.sharded.search(queries, k)

    def stats(self) -> IndexStats:
        size = _dir_bytes(self.root / "builds" / self.manifest.build_id)
        return IndexStats("faiss", self.name, self.sharded.ntotal, size, self.manifest.build_id)

    def close(self) -> None:
        pass


def open_external(cfg: IndexConfig, model_id: str, index_base: str | Path) -> ExternalIndex:
    """The configured OpenSearch or Milvus index (`index.backend`)."""
    if cfg.backend == "opensearch":
        return OpenSearchIndex(cfg.opensearch, cfg.metric, model_id)  # type: ignore[return-value]
    if cfg.backend == "milvus":
        db = storage.local_path(str(index_base), "index_dir") / "milvus.db"  # Milvus Lite needs a local file
        return MilvusIndex(cfg.milvus, cfg.metric, model_id, db)  # type: ignore[return-value]
    raise ValueError(f"index.backend={cfg.backend!r} is not an external backend (opensearch, milvus)")
