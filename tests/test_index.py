"""FAISS shards on seeded clustered vectors, checked against an exact unsharded Flat search (faiss TestMerge)."""

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rag_spark.config import IndexConfig
from rag_spark.index.manifest import Manifest, current_manifest, publish
from rag_spark.index.search import IndexIntegrityError, ShardedIndex
from rag_spark.index.shards import build_shard, empty_index, train_index


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(32, d)).astype(np.float32)
    x = centers[rng.integers(0, 32, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stage_shards(tmp: Path, ids: np.ndarray, x: np.ndarray, n_shards: int) -> Path:
    root = tmp / "staged"
    for s in range(n_shards):
        sel = ids % n_shards == s
        (root / f"shard={s}").mkdir(parents=True)
        table = pa.table({"chunk_key": ids[sel], "vector": pa.array(list(x[sel]), pa.list_(pa.float32()))})
        pq.write_table(table, root / f"shard={s}" / "part-0.parquet")
    return root


def build(tmp: Path, factory: str, x: np.ndarray, ids: np.ndarray, n_shards: int) -> Path:
    staged = stage_shards(tmp, ids, x, n_shards)
    trained = train_index(factory, x.shape[1], "ip", x[:2000])
    index_root = tmp / "index"
    build_dir = index_root / "builds" / f"b-{factory.replace(',', '_')}"
    build_dir.mkdir(parents=True)
    shards = [
        build_shard(trained, str(staged / f"shard={s}"), str(build_dir / f"shard-{s}.faiss")) for s in range(n_shards)
    ]
    m = Manifest(
        build_id=build_dir.name,
        factory=factory,
        metric="ip",
        dim=x.shape[1],
        model_id="m",
        normalized=True,
        ntotal=sum(s.count for s in shards),
        shards=shards,
        source_table="embeddings",
        source_version=0,
        config_hash="h",
        run_id="r",
        created_at="now",
        build_seconds=0.0,
    )
    publish(index_root, m)
    return index_root


def test_sharded_flat_equals_unsharded_flat(tmp_path: Path) -> None:
    x = clustered(3000, 32, 0)
    q = clustered(50, 32, 1)
    ids = np.random.default_rng(2).choice(2**40, size=len(x), replace=False).astype(np.int64)
    root = build(tmp_path, "Flat", x, ids, n_shards=3)
    index = ShardedIndex(root, IndexConfig())
    assert index.ntotal == len(x)
    res = index.search(q, 10)
    ref = faiss.IndexFlatIP(32)
    ref.add(x)
    d_ref, i_ref = ref.search(q, 10)
    np.testing.assert_array_equal(res.ids, ids[i_ref])
    np.testing.assert_allclose(res.scores, d_ref, rtol=1e-5)


def test_ivf_recall_against_flat(tmp_path: Path) -> None:
    x = clustered(5000, 32, 3)
    q = clustered(100, 32, 4)
    ids = np.arange(len(x), dtype=np.int64) * 7 + 11
    root = build(tmp_path, "IVF32,Flat", x, ids, n_shards=2)
    res = ShardedIndex(root, IndexConfig(nprobe=8)).search(q, 10)
    ref = faiss.IndexFlatIP(32)
    ref.add(x)
    _, i_ref = ref.search(q, 10)
    recall = np.mean([len(set(a) & set(ids[b])) / 10 for a, b in zip(res.ids, i_ref, strict=True)])
    assert recall >= 0.9


def test_flat_and_hnsw_accept_ids(tmp_path: Path) -> None:
    for factory in ("Flat", "HNSW16"):
        idx = empty_index(factory, 8, "ip")
        idx.add_with_ids(clustered(20, 8, 5), np.arange(100, 120, dtype=np.int64))
        _, found = idx.search(clustered(1, 8, 5), 3)
        assert set(found[0]) <= set(range(100, 120))
    with pytest.raises(ValueError, match="factory"):
        empty_index("NotAnIndex", 8, "ip")


def test_corrupt_shard_is_refused_and_publish_switches_atomically(tmp_path: Path) -> None:
    x = clustered(500, 16, 6)
    ids = np.arange(500, dtype=np.int64)
    root = build(tmp_path, "Flat", x, ids, n_shards=2)
    first, build_dir = current_manifest(root)
    assert json.loads((root / "CURRENT").read_text())["build_id"] == first.build_id
    shard = build_dir / first.shards[0].file
    shard.write_bytes(shard.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(IndexIntegrityError, match="checksum"):
        ShardedIndex(root, IndexConfig())
    with pytest.raises(FileNotFoundError, match="no published index"):
        ShardedIndex(tmp_path / "empty", IndexConfig())


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_incremental_update_equals_a_full_rebuild(tmp_path: Path, factory: str) -> None:
    """Remove 40 vectors (10 of them changed, re-added with new values) and add 60 new ones to a published
    build: searching the updated build gives the same results as building the final set from scratch."""
    from rag_spark.index.incremental import update_shard

    x = clustered(1200, 16, 7)
    ids = np.arange(1200, dtype=np.int64) * 3 + 5
    old_root = build(tmp_path / "old", factory, x, ids, n_shards=2)
    prev, prev_dir = current_manifest(old_root)
    gone, changed = ids[:30], ids[30:40]
    new_ids = np.concatenate([changed, np.arange(60, dtype=np.int64) * 3 + 100_000])
    new_x = clustered(len(new_ids), 16, 8)
    staged = stage_shards(tmp_path / "delta", new_ids, new_x, 2)
    out = tmp_path / "new"
    out.mkdir()
    removed = np.concatenate([gone, changed])
    infos = [
        update_shard(
            str(prev_dir / s.file),
            s.sha256,
            str(staged / f"shard={i}"),
            removed[removed % 2 == i],
            str(out / f"shard-{i}.faiss"),
        )
        for i, s in enumerate(prev.shards)
    ]
    assert sum(s.count for s in infos) == 1200 - 30 + 60
    final_ids = np.concatenate([ids[40:], new_ids])
    final_x = np.vstack([x[40:], new_x])
    q = clustered(40, 16, 9)
    # The same trained quantizer as the old build (an IVF trained on the old sample), so results must match.
    merged = faiss.IndexShards(16, True, False)
    parts = [faiss.read_index(str(out / s.file)) for s in infos]
    for p in parts:
        merged.add_shard(p)
    ref = faiss.read_index(str(prev_dir / prev.shards[0].file))
    ref.reset()
    ref.add_with_ids(final_x, final_ids)
    if factory != "Flat":
        for idx in (*parts, ref):
            faiss.extract_index_ivf(idx).nprobe = 16
    d_got, i_got = merged.search(q, 10)
    d_ref, i_ref = ref.search(q, 10)
    np.testing.assert_array_equal(np.sort(i_got, axis=1), np.sort(i_ref, axis=1))
    np.testing.assert_allclose(np.sort(d_got, axis=1), np.sort(d_ref, axis=1), rtol=1e-5)
    with pytest.raises(RuntimeError, match="checksum"):
        update_shard(
            str(prev_dir / prev.shards[0].file), "0" * 64, str(staged / "shard=0"), removed[:0], str(out / "x")
        )


def test_reader_during_a_rebuild_sees_the_old_complete_build(tmp_path: Path) -> None:
    """Shards of a new build are written before its manifest: until `publish`, readers load the old build."""
    x = clustered(800, 16, 10)
    ids = np.arange(800, dtype=np.int64)
    root = build(tmp_path, "Flat", x, ids, n_shards=2)
    old, _ = current_manifest(root)
    trained = train_index("Flat", 16, "ip", x[:0])
    staged = stage_shards(tmp_path / "next", ids[:500], x[:500], 2)
    new_dir = root / "builds" / "b-next"
    new_dir.mkdir()
    shards = [build_shard(trained, str(staged / f"shard={i}"), str(new_dir / f"shard-{i}.faiss")) for i in range(2)]
    during = ShardedIndex(root, IndexConfig())  # the new shard files exist, the switch has not happened
    assert (during.manifest.build_id, during.ntotal) == (old.build_id, 800)
    publish(root, Manifest(**{**old.__dict__, "build_id": "b-next", "shards": shards, "ntotal": 500}))
    after = ShardedIndex(root, IndexConfig())
    assert (after.manifest.build_id, after.ntotal) == ("b-next", 500)
    assert during.search(x[:3], 1).ids[:, 0].tolist() == [0, 1, 2]  # the old build still serves its reader
