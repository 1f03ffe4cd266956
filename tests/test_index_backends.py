"""Index backends against real engines: Milvus Lite (embedded) and an OpenSearch node this module starts.

The chunks are sentences of the tiny corpus's real documents, embedded with the real MiniLM encoder; every
backend is checked against an exact FAISS Flat search of the same vectors."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rag_spark.config import MilvusConfig, OpenSearchConfig, load_config_dict
from rag_spark.index.backends import COLUMNS, MilvusIndex, OpenSearchIndex, opensearch_analyzer, sync

TINY = Path(__file__).parent / "data" / "tiny"


def _chunks() -> list[dict[str, str]]:
    """Sentences (>= 30 chars) of the tiny corpus's documents, ids like the chunk stage's (`<doc_id>#<n>`); the
    corpus's duplicate documents are left out (the clean stage drops them too), so no two vectors tie."""
    out, seen = [], set()
    for line in (TINY / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:  # the corpus holds a deliberately malformed line
            continue
        if not isinstance(doc, dict) or not doc.get("text"):
            continue
        sentences = [s.strip() for s in doc["text"].replace("\n", " ").split(". ") if len(s.strip()) >= 30]
        if doc["text"] in seen:
            continue
        seen.add(doc["text"])
        for i, s in enumerate(sentences):
            out.append({"chunk_id": f"{doc['_id']}#{i}", "doc_id": doc["_id"], "title": doc.get("title"), "text": s})
    return out


def _key(chunk_id: str) -> int:
    """chunk_key as rag_spark.clean.chunk derives it (60 bits of the id's SHA-256)."""
    return int(hashlib.sha256(chunk_id.encode()).hexdigest()[:15], 16)


@pytest.fixture(scope="module")
def data(encoder) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from rag_spark.embed.encoders import passage_text

    chunks = _chunks()
    vecs = encoder.encode_passages([passage_text(c["title"], c["text"]) for c in chunks]).astype(np.float32)
    queries = [json.loads(line)["text"] for line in (TINY / "queries.jsonl").read_text().splitlines()]
    qv = encoder.encode_queries(queries).astype(np.float32)
    table = pa.table(
        {
            "chunk_id": [c["chunk_id"] for c in chunks],
            "chunk_key": pa.array([_key(c["chunk_id"]) for c in chunks], pa.int64()),
            "doc_id": [c["doc_id"] for c in chunks],
            "title": [c["title"] for c in chunks],
            "text": [c["text"] for c in chunks],
            "text_hash": [hashlib.sha256(c["text"].encode()).hexdigest() for c in chunks],
            "vector": pa.array(list(vecs), pa.list_(pa.float32())),
        }
    ).select(COLUMNS)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(vecs.shape[1]))
    flat.add_with_ids(vecs, table.column("chunk_key").to_numpy())
    exact_scores, exact_ids = flat.search(qv, 5)
    assert len(chunks) >= 20
    return {"table": table, "queries": qv, "exact_ids": exact_ids, "exact_scores": exact_scores, "dim": vecs.shape[1]}


def _batches(table: pa.Table):  # type: ignore[no-untyped-def]
    def batches(only: set[str] | None) -> Iterator[pa.Table]:
        t = table if only is None else table.filter(pc.is_in(table.column("chunk_id"), pa.array(sorted(only))))
        for b in t.to_batches(max_chunksize=16):
            yield pa.Table.from_batches([b])

    return batches


def _keys(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("chunk_id").to_pylist(), table.column("text_hash").to_pylist(), strict=True))


def _sync(index, table: pa.Table, dim: int, incremental: bool = True):  # type: ignore[no-untyped-def]
    return sync(index, _batches(table), _keys(table), dim=dim, incremental=incremental, rebuild_fraction=0.5)


def test_backend_config_validation() -> None:
    cfg = load_config_dict({"index": {"backend": "milvus", "milvus": {"index_type": "hnsw"}}})
    assert cfg.index.milvus.index_type == "HNSW"
    with pytest.raises(ValueError, match="index_type"):
        load_config_dict({"index": {"backend": "milvus", "milvus": {"index_type": "SCANN2"}}})
    with pytest.raises(ValueError, match="credentials"):
        load_config_dict({"index": {"opensearch": {"url": "https://u:p@host:9200"}}})
    with pytest.raises(ValueError, match="environment variable"):
        load_config_dict({"index": {"opensearch": {"password_env": "not a name"}}})
    with pytest.raises(ValueError, match="backend"):
        load_config_dict({"index": {"backend": "pinecone"}})
    # the backend settings are part of the index stage's hash; the default (faiss) keeps the hashes lakes have
    base = load_config_dict({})
    assert load_config_dict({"index": {"backend": "faiss"}}).stage_hash("index") == base.stage_hash("index")
    assert load_config_dict({"index": {"backend": "milvus"}}).stage_hash("index") != base.stage_hash("index")


def test_opensearch_analyzer_names() -> None:
    assert opensearch_analyzer("fr", []) == "french"
    assert opensearch_analyzer("english", []) == "english"
    assert opensearch_analyzer("none", []) == "standard"
    assert opensearch_analyzer("auto", ["Le système d'exploitation libre est développé par des bénévoles."] * 5) == (
        "french"
    )
    with pytest.raises(ValueError, match="no OpenSearch analyzer"):
        opensearch_analyzer("xx", [])


# -- Milvus Lite -----------------------------------------------------------------------------------------------


@pytest.fixture
def milvus(tmp_path: Path) -> Iterator[MilvusIndex]:
    index = MilvusIndex(MilvusConfig(), "ip", "minilm", tmp_path / "milvus.db")
    yield index
    index.close()


def test_milvus_matches_faiss_flat_and_upserts_deletes_by_id(milvus: MilvusIndex, data) -> None:  # type: ignore[no-untyped-def]
    table, dim = data["table"], data["dim"]
    first = _sync(milvus, table, dim)
    assert first.mode == "full" and first.upserted == table.num_rows
    res = milvus.search(data["queries"], 5)
    assert (res.ids[:, 0] == data["exact_ids"][:, 0]).all()  # same top-1 as FAISS Flat
    np.testing.assert_allclose(res.scores, data["exact_scores"], atol=1e-4)
    assert milvus.stats().count == table.num_rows and milvus.stats().bytes

    again = _sync(milvus, table, dim)  # idempotent: nothing changed, nothing written
    assert (again.mode, again.upserted, again.deleted) == ("incremental", 0, 0)
    assert milvus.upsert(table.slice(0, 5)) == 5  # replacing by id does not add rows
    assert milvus.stats().count == table.num_rows

    top1 = data["exact_ids"][0, 0]
    gone = table.filter(pc.equal(table.column("chunk_key"), top1)).column("chunk_id").to_pylist()
    assert milvus.delete(gone) == 1
    assert milvus.stats().count == table.num_rows - 1
    assert top1 not in milvus.search(data["queries"][:1], 5).ids

    changed = table.filter(pc.invert(pc.is_in(table.column("chunk_id"), pa.array(gone))))
    report = _sync(milvus, table, dim)  # the deleted chunk is back: one upsert, same build
    assert (report.mode, report.upserted, report.physical) == ("incremental", 1, first.physical)
    report = _sync(milvus, changed, dim)
    assert (report.mode, report.deleted) == ("incremental", 1)
    assert set(milvus.keys()) == set(changed.column("chunk_id").to_pylist())


def test_milvus_reopened_later_serves_the_same_build(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    """The index stage and the retrieve stage open the Milvus Lite folder separately: the second client must find
    the build (loaded again: it starts released) and leave it unchanged."""
    table, dim = data["table"], data["dim"]
    first = MilvusIndex(MilvusConfig(), "ip", "minilm", tmp_path / "milvus.db")
    built = _sync(first, table, dim).physical
    first.close()
    again = MilvusIndex(MilvusConfig(), "ip", "minilm", tmp_path / "milvus.db")
    try:
        assert again.live() == built
        assert (again.search(data["queries"], 1).ids[:, 0] == data["exact_ids"][:, 0]).all()
        report = _sync(again, table, dim)
        assert (report.mode, report.upserted, report.deleted) == ("incremental", 0, 0)
    finally:
        again.close()


def test_milvus_rebuild_swaps_alias(milvus: MilvusIndex, data) -> None:  # type: ignore[no-untyped-def]
    table, dim = data["table"], data["dim"]
    old = _sync(milvus, table, dim).physical
    new = _sync(milvus, table, dim, incremental=False)
    assert new.mode == "full" and new.physical != old
    assert milvus.live() == new.physical
    assert old not in milvus.client.list_collections()
    assert (milvus.search(data["queries"], 1).ids[:, 0] == data["exact_ids"][:, 0]).all()


# -- OpenSearch ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def opensearch_url() -> Iterator[str]:
    from rag_spark.index.opensearch_node import LocalOpenSearch, artifacts_dir

    if not (artifacts_dir() / ".fetched").exists():
        pytest.skip(f"OpenSearch artifacts not in {artifacts_dir()} (`make opensearch` fetches them)")
    with LocalOpenSearch() as node:
        yield node.url


@pytest.fixture
def opensearch(opensearch_url: str, request: pytest.FixtureRequest) -> Iterator[OpenSearchIndex]:
    name = "t_" + request.node.name.lower().replace("test_", "")[:40]
    index = OpenSearchIndex(OpenSearchConfig(url=opensearch_url, index=name, language="auto"), "ip", "minilm")
    yield index
    live = index.live()
    if live:
        index.client.indices.delete(index=live)
    index.close()


def test_opensearch_bm25_dense_and_idempotent_upsert(opensearch: OpenSearchIndex, data) -> None:  # type: ignore[no-untyped-def]
    table, dim = data["table"], data["dim"]
    texts = table.column("text").to_pylist()
    samples: list[int] = []

    def sample() -> list[str]:
        samples.append(1)
        return texts

    report = sync(opensearch, _batches(table), _keys(table), dim=dim, incremental=True, rebuild_fraction=0.5,
                  sample_texts=sample)  # fmt: skip
    assert samples == [1]
    assert report.mode == "full" and report.upserted == table.num_rows
    mapping = opensearch.client.indices.get_mapping(index=opensearch.name)
    assert next(iter(mapping.values()))["mappings"]["_meta"]["analyzer"] == "french"  # detected from the chunks

    # BM25: a word found in exactly one chunk ranks that chunk first (asked in upper case: the analyzer folds it)
    passages = [f"{t} {x}".lower() for t, x in zip(table.column("title").to_pylist(), texts, strict=True)]
    words = Counter(w for p in passages for w in set(re.findall(r"[a-zà-ÿ]{7,}", p)))
    word = sorted(w for w, n in words.items() if n == 1)[0]
    i = next(i for i, p in enumerate(passages) if word in re.findall(r"[a-zà-ÿ]{7,}", p))
    keys, scores = opensearch.search_text(word.upper(), 3)
    assert keys[0] == table.column("chunk_key")[i].as_py() and scores[0] > 0
    tokens = opensearch.client.indices.analyze(index=opensearch.name, body={"field": "passage", "text": "chevaux"})
    assert [t["token"] for t in tokens["tokens"]] == ["cheval"]  # the french analyzer's stemmer

    res = opensearch.search(data["queries"], 5)
    assert (res.ids[:, 0] == data["exact_ids"][:, 0]).all()  # same top-1 as FAISS Flat
    np.testing.assert_allclose(res.scores[:, 0], data["exact_scores"][:, 0], atol=1e-4)  # scores mapped back to ip

    before = opensearch.stats()
    assert opensearch.upsert(table.slice(0, 10)) == 10
    assert opensearch.stats().count == before.count == table.num_rows
    again = sync(opensearch, _batches(table), _keys(table), dim=dim, incremental=True, rebuild_fraction=0.5,
                 sample_texts=sample)  # fmt: skip
    assert (again.mode, again.upserted, again.deleted, again.physical) == ("incremental", 0, 0, report.physical)
    assert samples == [1]  # no new index, no sample read
    gone = table.column("chunk_id").to_pylist()[:2]
    assert opensearch.delete([*gone, "no-such-chunk#0"]) == 2
    assert opensearch.stats().count == table.num_rows - 2


def test_opensearch_rebuild_swaps_alias_atomically(opensearch: OpenSearchIndex, data) -> None:  # type: ignore[no-untyped-def]
    table, dim = data["table"], data["dim"]
    old = _sync(opensearch, table, dim).physical
    # a rebuild in progress: the new physical index fills while the alias still serves the old one
    physical = opensearch.create(dim, table.column("text").to_pylist())
    opensearch.upsert(table.slice(0, 4), target=physical)
    assert opensearch.live() == old and opensearch.stats().count == table.num_rows
    opensearch.drop(physical)
    new = _sync(opensearch, table, dim, incremental=False)
    assert new.mode == "full" and new.physical not in (old, physical)
    assert opensearch.live() == new.physical
    assert not opensearch.client.indices.exists(index=old)
    assert (opensearch.search(data["queries"], 1).ids[:, 0] == data["exact_ids"][:, 0]).all()


def test_opensearch_exact_dense_matches_flat(opensearch_url: str, data) -> None:  # type: ignore[no-untyped-def]
    index = OpenSearchIndex(OpenSearchConfig(url=opensearch_url, index="t_exact", dense="exact", language="fr"),
                            "ip", "minilm")  # fmt: skip
    try:
        _sync(index, data["table"], data["dim"])
        res = index.search(data["queries"], 5)
        np.testing.assert_array_equal(res.ids, data["exact_ids"])
        np.testing.assert_allclose(res.scores, data["exact_scores"], atol=1e-4)
    finally:
        index.drop(index.live() or "t_exact-none")
        index.close()
