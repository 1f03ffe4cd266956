"""Near-duplicate removal with MinHash + LSH banding, done in Spark.

The job, all lazy DataFrame transformations (no I/O here):

1. **Normalize** (Spark built-ins): lowercase, accents stripped (precomposed letters through `translate`, combining
   marks removed), every run of non-letter/non-digit characters collapsed to one space.
2. **Shingle + MinHash** (`mapInArrow`, numpy over the whole Arrow batch): a batch's normalized texts are one UTF-8
   byte buffer; shingles are character n-grams (byte windows) or word n-grams, hashed with a polynomial hash from
   prefix sums, so there is no Python loop over rows or shingles. Each of `num_perm` permutations is a
   multiply-add bijection of 32-bit keys; a document's signature is the per-permutation minimum (`np.minimum.reduceat`).
3. **LSH banding**: the signature is cut into `bands` bands of `num_perm / bands` rows, each band hashed to one
   64-bit value. Documents sharing a band hash are candidates: the equi-self-join on (band, hash) is done as one
   hash aggregation per bucket (sorted id list) and pairs generated from that list, buckets of one dropped.
   Buckets larger than `max_bucket_size` only pair each member with the bucket's smallest id, so a pathological
   bucket costs linear, not quadratic, work.
4. **Verify**: each candidate pair's Jaccard similarity is estimated from the two full signatures (fraction of
   equal MinHash values, standard error <= 0.5/sqrt(num_perm)); pairs below `threshold` are dropped.
5. **Connected components** of the verified pairs by iterative min-label propagation with pointer jumping
   (Spark joins, `localCheckpoint` per round). The label of a component is its smallest id. When there are at
   most `local_components_max_edges` verified pairs (the usual case: near duplicates are a minority), the
   components are computed on the driver with scipy instead, the same labels without Spark rounds.
6. **Representative**: the smallest id of each cluster (the same rule as exact dedup), so the choice does not
   depend on partitioning or input order. Every other member is a duplicate of it, with the estimated Jaccard
   similarity *to the representative* (transitively linked members can be below `threshold`).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, IntegerType, LongType, StringType, StructField, StructType

from rag_spark.config import NearDedupConfig

log = logging.getLogger(__name__)

_U64 = np.uint64
# Fixed odd multipliers: the string hash base and a final 64-bit mixer (splitmix64 / Murmur3 finalizer constants).
_BASE = 0x100000001B3
_MIX1 = _U64(0xFF51AFD7ED558CCD)
_MIX2 = _U64(0xC4CEB9FE1A85EC53)
# Shingles per block of the MinHash matrix: block x num_perm uint64 stays ~32 MB at 128 permutations.
_BLOCK = 1 << 15


# ---------------------------------------------------------------- normalization (Spark built-ins)


@lru_cache(maxsize=1)
def _accent_table() -> tuple[str, str]:
    """(from, to) strings for `translate`: Latin letters with diacritics -> their base letter."""
    src, dst = [], []
    for cp in range(0x00C0, 0x0250):
        ch = chr(cp)
        base = unicodedata.normalize("NFD", ch)[0]
        if base != ch and base.isascii() and base.isalpha():
            src.append(ch)
            dst.append(base)
    return "".join(src), "".join(dst)


def normalize_for_dedup(text: Column) -> Column:
    """Lowercase, strip accents, collapse punctuation and whitespace: the text that is shingled.

    Spark has no Unicode decomposition function; `translate` maps precomposed Latin letters (U+00C0-U+024F, which
    covers French, Spanish, German, Portuguese, ...) and combining marks of decomposed input are deleted.
    """
    src, dst = _accent_table()
    t = F.lower(text)
    t = F.translate(t, src, dst)
    t = F.regexp_replace(t, r"\p{M}+", "")
    t = F.regexp_replace(t, r"[^\p{L}\p{N}]+", " ")
    return F.trim(t)


# ---------------------------------------------------------------- shingles and signatures (numpy over a batch)


def _mix64(x: np.ndarray) -> np.ndarray:
    """Murmur3's 64-bit finalizer: spreads polynomial hashes over all bits (vectorized, wrapping uint64)."""
    x = x ^ (x >> _U64(33))
    x = x * _MIX1
    x = x ^ (x >> _U64(33))
    x = x * _MIX2
    return x ^ (x >> _U64(33))


def _prefix_hash(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prefix sums of data[i] * B^i (mod 2^64) and B^-i, so any span's hash is (C[e] - C[s]) * B^-s.

    The polynomial hash of a span is independent of where it sits in the buffer; B is odd, so invertible mod 2^64.
    """
    n = data.size
    with np.errstate(over="ignore"):
        powers = np.empty(n, dtype=_U64)
        if n:
            powers[0] = 1
            powers[1:] = _U64(_BASE)
            powers = np.cumprod(powers, dtype=_U64)
        inv_base = pow(_BASE, -1, 1 << 64)
        inv = np.empty(n + 1, dtype=_U64)
        inv[0] = 1
        inv[1:] = _U64(inv_base)
        inv = np.cumprod(inv, dtype=_U64)
        prefix = np.zeros(n + 1, dtype=_U64)
        np.cumsum((data.astype(_U64) + _U64(1)) * powers, dtype=_U64, out=prefix[1:])
    return prefix, inv


def _span_hash(prefix: np.ndarray, inv: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix64((prefix[end] - prefix[start]) * inv[start] + (end - start).astype(_U64))


def _windows(starts: np.ndarray, ends: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All windows of k consecutive units inside each [start, end) segment (one whole-segment window when the
    segment is shorter than k; none when it is empty). Returns (segment index, window start, window end)."""
    lengths = ends - starts
    counts = np.where(lengths >= k, lengths - k + 1, (lengths > 0).astype(lengths.dtype))
    seg = np.repeat(np.arange(starts.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    w_start = starts[seg] + (np.arange(seg.size) - first)
    w_end = np.minimum(w_start + k, ends[seg])
    return seg, w_start, w_end


def shingle_hashes(data: np.ndarray, offsets: np.ndarray, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every shingle of a batch of normalized texts (UTF-8 bytes `data`, Arrow `offsets`).

    Returns:
        (doc index per shingle, uint64 shingle hash), ordered by document.
    """
    starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    prefix, inv = _prefix_hash(data)
    if kind == "char":
        doc, s, e = _windows(starts, ends, size)
        return doc, _span_hash(prefix, inv, s, e)
    if data.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_U64)
    # Words: maximal runs of non-space bytes (normalized text has single spaces, no leading/trailing ones).
    is_space = data == 32
    byte_doc = np.repeat(np.arange(starts.size), ends - starts)
    begins = np.flatnonzero(~is_space & np.concatenate(([True], is_space[:-1] | (np.diff(byte_doc) != 0))))
    stops = np.flatnonzero(~is_space & np.concatenate((is_space[1:] | (np.diff(byte_doc) != 0), [True]))) + 1
    word_doc = byte_doc[begins] if begins.size else np.zeros(0, dtype=np.int64)
    word_hash = _span_hash(prefix, inv, begins, stops)
    # Word n-grams: a polynomial hash over consecutive word hashes, windows inside each document.
    first_word = np.searchsorted(word_doc, np.arange(starts.size), side="left")
    last_word = np.searchsorted(word_doc, np.arange(starts.size), side="right")
    doc, s, e = _windows(first_word, last_word, size)
    wprefix, winv = _prefix_hash(word_hash)
    return doc, _span_hash(wprefix, winv, s, e)


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the hashes h(x) = (a*x + b) mod 2^32 over 32-bit keys (a odd, so each h is a bijection)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 31, size=num_perm, dtype=np.int64).astype(np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.int64).astype(np.uint32)
    return a, b


def minhash_signatures(doc: np.ndarray, hashes: np.ndarray, n_docs: int, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (n_docs x num_perm, uint32) from shingle hashes grouped by document.

    The keys are the high 32 bits of well-mixed 64-bit shingle hashes, so the cheap bijections
    (a*x + b) mod 2^32 behave as random permutations for the minimum (checked against exact Jaccard in the
    tests and by the benchmark's F1); 32-bit arithmetic moves half the bytes of 64-bit multiply-shift.
    Documents without shingles keep the all-ones sentinel; the caller excludes them from banding.
    """
    a, b = permutations(num_perm, seed)
    sig = np.full((n_docs, num_perm), 0xFFFFFFFF, dtype=np.uint32)
    keys = (hashes >> _U64(32)).astype(np.uint32)
    h = np.empty((min(_BLOCK, keys.size), num_perm), dtype=np.uint32)
    for lo in range(0, keys.size, _BLOCK):
        k = keys[lo : lo + _BLOCK]
        d = doc[lo : lo + _BLOCK]
        out = h[: k.size]
        np.multiply(k[:, None], a[None, :], out=out)
        np.add(out, b[None, :], out=out)
        # Rows are grouped by document: one minimum per run of equal doc index.
        run_start = np.flatnonzero(np.concatenate(([True], d[1:] != d[:-1])))
        mins = np.minimum.reduceat(out, run_start, axis=0)
        docs = d[run_start]
        sig[docs] = np.minimum(sig[docs], mins)
    return sig


def band_hashes(sig: np.ndarray, bands: int, seed: int) -> np.ndarray:
    """One int64 hash per band (n_docs x bands): rows of a band combined with fixed odd multipliers."""
    n, p = sig.shape
    rows = p // bands
    rng = np.random.default_rng(seed + 1)
    mult = rng.integers(0, 1 << 63, size=rows, dtype=np.int64).astype(_U64) * _U64(2) + _U64(1)
    with np.errstate(over="ignore"):
        acc = (sig.reshape(n, bands, rows).astype(_U64) * mult[None, None, :]).sum(axis=2, dtype=_U64)
        return _mix64(acc).view(np.int64)


_SIG_SCHEMA = StructType(
    [
        StructField("id", StringType(), False),
        StructField("sig", ArrayType(IntegerType(), False), False),
        StructField("bands", ArrayType(LongType(), False), False),
        StructField("n_shingles", IntegerType(), False),
    ]
)


def _signature_batches(cfg: NearDedupConfig) -> object:
    kind, size, num_perm, bands, seed = cfg.shingle, cfg.shingle_size, cfg.num_perm, cfg.bands, cfg.seed

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            n = batch.num_rows
            texts = batch.column(1)
            if not pa.types.is_large_string(texts.type):
                texts = texts.cast(pa.large_string())
            texts = texts.fill_null("")
            raw_offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + n + 1]
            first = int(raw_offsets[0]) if n else 0
            offsets = raw_offsets - first if n else np.zeros(1, dtype=np.int64)
            raw = texts.buffers()[2]
            total = int(offsets[-1])
            data = np.frombuffer(raw, dtype=np.uint8)[first : first + total] if total else np.zeros(0, np.uint8)
            doc, hashes = shingle_hashes(data, offsets, kind, size)
            sig = minhash_signatures(doc, hashes, n, num_perm, seed)
            bh = band_hashes(sig, bands, seed)
            n_sh = np.bincount(doc, minlength=n).astype(np.int32)
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column(0).cast(pa.string()),
                    pa.FixedSizeListArray.from_arrays(pa.array(sig.view(np.int32).ravel()), num_perm).cast(
                        pa.list_(pa.field("element", pa.int32(), nullable=False))
                    ),
                    pa.FixedSizeListArray.from_arrays(pa.array(bh.ravel()), bands).cast(
                        pa.list_(pa.field("element", pa.int64(), nullable=False))
                    ),
                    pa.array(n_sh),
                ],
                schema=pa.schema(
                    [
                        pa.field("id", pa.string(), False),
                        pa.field("sig", pa.list_(pa.field("element", pa.int32(), False)), False),
                        pa.field("bands", pa.list_(pa.field("element", pa.int64(), False)), False),
                        pa.field("n_shingles", pa.int32(), False),
                    ]
                ),
            )

    return compute


def signatures(df: DataFrame, cfg: NearDedupConfig, id_col: str = "doc_id", text_col: str = "text") -> DataFrame:
    """id, sig (num_perm int32 MinHash values), bands (int64 per band), n_shingles of every row of `df`."""
    src = df.select(F.col(id_col).cast("string").alias("id"), normalize_for_dedup(F.col(text_col)).alias("norm"))
    return src.mapInArrow(_signature_batches(cfg), _SIG_SCHEMA)  # type: ignore[arg-type]


# ---------------------------------------------------------------- candidates, verification, components


def candidate_pairs(sigs: DataFrame, cfg: NearDedupConfig) -> DataFrame:
    """(a, b) with a < b sharing at least one band hash; distinct.

    One hash aggregation per (band, hash) collects the bucket's sorted ids (no sort-based window or self-join);
    pairs are generated from each bucket's array with SQL higher-order functions.
    """
    banded = sigs.where(F.col("n_shingles") > 0).select("id", F.posexplode("bands").alias("band", "h"))
    buckets = banded.groupBy("band", "h").agg(F.array_sort(F.collect_list("id")).alias("ids")).where(F.size("ids") > 1)
    all_pairs = F.expr(
        "explode(flatten(transform(sequence(1, size(ids) - 1), "
        "i -> transform(slice(ids, i + 1, size(ids) - i), y -> named_struct('a', ids[i - 1], 'b', y)))))"
    )
    # Buckets past max_bucket_size: a star around the smallest id (linear in the bucket, not quadratic).
    star = F.expr("explode(transform(slice(ids, 2, size(ids) - 1), y -> named_struct('a', ids[0], 'b', y)))")
    small = buckets.where(F.size("ids") <= cfg.max_bucket_size).select(all_pairs.alias("p"))
    large = buckets.where(F.size("ids") > cfg.max_bucket_size).select(star.alias("p"))
    return small.unionByName(large).select("p.a", "p.b").distinct()


def _jaccard(left: str, right: str, num_perm: int) -> Column:
    equal = F.expr(f"size(filter(zip_with({left}, {right}, (x, y) -> x = y), e -> e))")
    return (equal / F.lit(float(num_perm))).cast("double")


def similar_pairs(sigs: DataFrame, cfg: NearDedupConfig) -> DataFrame:
    """Candidate pairs whose estimated Jaccard similarity is >= threshold: (a, b, similarity)."""
    pairs = candidate_pairs(sigs, cfg)
    s = sigs.select("id", "sig")
    joined = pairs.join(s.withColumnRenamed("id", "a").withColumnRenamed("sig", "sig_a"), "a").join(
        s.withColumnRenamed("id", "b").withColumnRenamed("sig", "sig_b"), "b"
    )
    scored = joined.select("a", "b", _jaccard("sig_a", "sig_b", cfg.num_perm).alias("similarity"))
    return scored.where(F.col("similarity") >= cfg.threshold)


def connected_components(edges: DataFrame, max_iterations: int = 30) -> DataFrame:
    """Component label (smallest node id) of every node of an undirected edge list (a, b): (id, label).

    Min-label propagation: each round a node takes the smallest label among itself and its neighbours, then
    jumps to its label's label (pointer jumping), which halves path lengths; rounds stop when no label changes.
    Each round is materialized with `localCheckpoint` so the plan does not grow with the number of rounds.
    """
    both = edges.select("a", "b").unionByName(edges.select(F.col("b").alias("a"), F.col("a").alias("b")))
    both = both.localCheckpoint()
    labels = both.groupBy("a").agg(F.least(F.min("b"), F.first("a")).alias("label")).withColumnRenamed("a", "id")
    labels = labels.localCheckpoint()
    for round_ in range(1, max_iterations + 1):
        neigh = (
            both.join(labels.withColumnRenamed("id", "b").withColumnRenamed("label", "nl"), "b")
            .groupBy("a")
            .agg(F.min("nl").alias("nl"))
            .withColumnRenamed("a", "id")
        )
        step = labels.join(neigh, "id").select("id", F.least("label", "nl").alias("label"))
        jumped = (
            step.alias("s")
            .join(step.alias("p"), F.col("s.label") == F.col("p.id"), "left")
            .select(F.col("s.id").alias("id"), F.least(F.col("s.label"), F.col("p.label")).alias("label"))
            .localCheckpoint()
        )
        changed = jumped.join(labels.withColumnRenamed("label", "old"), "id").where("label <> old").count()
        labels = jumped
        log.debug("connected components: round %d, %d labels changed", round_, changed)
        if changed == 0:
            return labels
    raise RuntimeError(
        f"connected components did not converge in {max_iterations} rounds; raise clean.near_dedup.max_iterations"
    )


def components_on_driver(edges: DataFrame) -> DataFrame:
    """The same labels as `connected_components`, computed on the driver with scipy's sparse graph routine.

    Used when the verified edges are few (`local_components_max_edges`): near-duplicate edges are usually a small
    fraction of the documents, and one collect replaces several Spark rounds of joins.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as cc

    spark = edges.sparkSession
    rows = edges.select("a", "b").collect()
    if not rows:
        return spark.createDataFrame([], "id string, label string")
    nodes = np.array(sorted({r[0] for r in rows} | {r[1] for r in rows}), dtype=object)
    index = {n: i for i, n in enumerate(nodes)}
    a = np.fromiter((index[r[0]] for r in rows), dtype=np.int64, count=len(rows))
    b = np.fromiter((index[r[1]] for r in rows), dtype=np.int64, count=len(rows))
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (a, b)), shape=(nodes.size, nodes.size))
    _, comp = cc(graph, directed=False)
    # Nodes are sorted, so the first node of each component in index order is its smallest id.
    first = np.full(comp.max() + 1, nodes.size, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(nodes.size))
    labels = nodes[first[comp]]
    return spark.createDataFrame(list(zip(nodes.tolist(), labels.tolist(), strict=True)), "id string, label string")


def cluster_labels(edges: DataFrame, cfg: NearDedupConfig) -> DataFrame:
    """Connected components of verified edges: on the driver when they are few, else distributed in Spark."""
    n_edges = edges.count()
    if n_edges <= cfg.local_components_max_edges:
        log.debug("connected components of %d edges on the driver", n_edges)
        return components_on_driver(edges)
    log.debug("connected components of %d edges with Spark label propagation", n_edges)
    return connected_components(edges, cfg.max_iterations)


def near_duplicates(df: DataFrame, cfg: NearDedupConfig, id_col: str = "doc_id", text_col: str = "text") -> DataFrame:
    """Rows of `df` that are near-duplicates of another row: (doc_id, duplicate_of, similarity).

    `duplicate_of` is the smallest id of the row's cluster (never itself a duplicate); `similarity` is the
    estimated Jaccard similarity of the row's shingles to the representative's. Ids must be unique.
    """
    sigs = signatures(df, cfg, id_col, text_col).localCheckpoint()
    edges = similar_pairs(sigs, cfg).localCheckpoint()
    labels = cluster_labels(edges, cfg).where(F.col("id") != F.col("label"))
    s = sigs.select("id", "sig")
    members = labels.join(s, "id").join(s.withColumnRenamed("id", "label").withColumnRenamed("sig", "rep_sig"), "label")
    return members.select(
        F.col("id").alias("doc_id"),
        F.col("label").alias("duplicate_of"),
        _jaccard("sig", "rep_sig", cfg.num_perm).alias("similarity"),
    )


def dedup_near(
    kept: DataFrame, cfg: NearDedupConfig, run_id: str, id_col: str = "doc_id", text_col: str = "text"
) -> tuple[DataFrame, DataFrame]:
    """Splits `kept` into (representatives and singletons, near duplicates as `duplicates` rows).

    Returns:
        (kept, duplicates): duplicates has doc_id, duplicate_of, similarity, method ("near"), run_id.
    """
    dups = near_duplicates(kept, cfg, id_col, text_col).localCheckpoint()
    remaining = kept.join(dups.select(F.col("doc_id").alias(id_col)), id_col, "left_anti")
    return remaining, dups.select(
        "doc_id", "duplicate_of", "similarity", F.lit("near").alias("method"), F.lit(run_id).alias("run_id")
    )
