"""Near-duplicate removal with MinHash + LSH banding, done in Spark.

The job, all lazy DataFrame transformations (no I/O here):

1. **Normalize** (Arrow string kernels inside the signature UDF): NFKD, combining marks removed (accents stripped),
   lowercase, every run of non-letter/non-digit characters collapsed to one space.
2. **Shingle + MinHash** (`mapInArrow`, numpy over the whole Arrow batch): a batch's normalized texts are one UTF-8
   byte buffer; shingles are character n-grams (byte windows) or word n-grams, hashed with a polynomial hash from
   prefix sums, so there is no Python loop over rows or shingles. The signature is one-permutation hashing with
   optimal densification by default (one hash per shingle picks a bin and a value; `minhash_signatures`), or
   `num_perm` multiply-add bijections of 32-bit keys with the per-permutation minimum.
3. **LSH banding**: the signature is cut into `bands` bands of `num_perm / bands` rows, each band hashed (with its
   index) to one 64-bit bucket key. Documents sharing a key are candidates: one shuffle by key with Spark's sort
   within partitions, then the pairs of each sorted run generated with numpy (no per-bucket arrays). Buckets
   larger than `max_bucket_size` only pair each member with the bucket's smallest id, so a pathological bucket
   costs linear, not quadratic, work.
4. **Verify**: each candidate pair's Jaccard similarity is estimated from the two signatures (fraction of equal
   values, standard error <= 0.5/sqrt(num_perm), compared with numpy); pairs below `threshold` are dropped. Only
   the low `signature_bits` of each value travel to this step (b-bit MinHash: 128 bytes a document at 8 bits
   instead of 512), the estimate corrected for the values that agree by chance.
5. **Connected components** of the verified pairs by iterative min-label propagation with pointer jumping
   (Spark joins, `localCheckpoint` per round). The label of a component is its smallest id. When there are at
   most `local_components_max_edges` verified pairs (the usual case: near duplicates are a minority), the
   components are computed on the driver with scipy instead, the same labels without Spark rounds.
6. **Representative**: the smallest id of each cluster (the same rule as exact dedup), so the choice does not
   depend on partitioning or input order. Every other member is a duplicate of it, with the estimated Jaccard
   similarity *to the representative* (transitively linked members can be below `threshold`).

Small inputs (at most `local_max_documents` rows) run steps 3-6 on the driver instead (`near_duplicates_local`):
the same sorted buckets, pairs, b-bit verification, components and representatives with numpy over the collected
signatures, giving the same rows without five Spark jobs whose fixed cost dominates at that size.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, IntegerType, LongType, StringType, StructField, StructType

from rag_spark.config import NearDedupConfig

log = logging.getLogger(__name__)

_U64 = np.uint64
# Fixed odd multipliers: the string hash base and a final 64-bit mixer (splitmix64 / Murmur3 finalizer constants).
_BASE = 0x100000001B3
_MIX1 = _U64(0xFF51AFD7ED558CCD)
_MIX2 = _U64(0xC4CEB9FE1A85EC53)
# The value of a signature slot no shingle reached (documents without shingles keep it everywhere).
_EMPTY = np.uint32(0xFFFFFFFF)
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


def minhash_signatures(
    doc: np.ndarray, hashes: np.ndarray, n_docs: int, num_perm: int, seed: int, method: str = "one_permutation"
) -> np.ndarray:
    """MinHash signatures (n_docs x num_perm, uint32) from shingle hashes grouped by document.

    `method` picks how the num_perm minima are drawn (both estimate Jaccard similarity as the fraction of equal
    signature values, and both are what LSH banding needs):

    - "one_permutation" (default): one hash per shingle, which picks one of num_perm bins and gives the value
      whose per-bin minimum is kept (Li, Owen & Zhang 2012, "One Permutation Hashing"); bins a document leaves
      empty are filled by optimal densification (Shrivastava 2017): an empty bin copies the value of the first
      non-empty bin of a fixed pseudo-random probe sequence of its own, the same sequence for every document,
      so equal shingle sets still get equal signatures. O(shingles) instead of O(shingles x num_perm).
    - "permutations": num_perm 32-bit bijections (a*x + b) mod 2^32 applied to every shingle, per-permutation
      minimum: the textbook estimator, num_perm times the arithmetic.

    Documents without shingles keep the all-ones sentinel; the caller excludes them from banding.
    """
    if method == "one_permutation":
        return _one_permutation_signatures(doc, hashes, n_docs, num_perm, seed)
    if method != "permutations":
        raise ValueError(f"unknown MinHash method {method!r}: use 'one_permutation' or 'permutations'")
    a, b = permutations(num_perm, seed)
    sig = np.full((n_docs, num_perm), _EMPTY, dtype=np.uint32)
    # The keys are the high 32 bits of well-mixed 64-bit shingle hashes, so the cheap bijections behave as random
    # permutations for the minimum (checked against exact Jaccard in the tests and by the benchmark's F1).
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


@lru_cache(maxsize=8)
def _probe_table(num_bins: int, seed: int) -> np.ndarray:
    """Densification probe sequences: row t holds every bin's t-th donor candidate (8 * num_bins attempts)."""
    rng = np.random.default_rng([seed, num_bins, 0xD0])
    return rng.integers(0, num_bins, size=(8 * num_bins, num_bins), dtype=np.int32)


def _copy_from_donors(
    sig: np.ndarray, empty: np.ndarray, rows: np.ndarray, cols: np.ndarray, donor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fills sig[rows, cols] from sig[rows, donor] where the donor bin was non-empty originally (so its value is an
    original minimum, never a copy); returns the (rows, cols) still empty."""
    ok = ~empty[rows, donor]
    sig[rows[ok], cols[ok]] = sig[rows[ok], donor[ok]]
    return rows[~ok], cols[~ok]


def _one_permutation_signatures(doc: np.ndarray, hashes: np.ndarray, n_docs: int, k: int, seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = _mix64(hashes ^ _mix64(np.array([seed], dtype=_U64))[0])
    # Bin from the high 32 bits (multiply-shift range reduction, any k), value from the independent low 32 bits.
    bins = (((h >> _U64(32)) * _U64(k)) >> _U64(32)).astype(np.int64)
    flat = np.full(n_docs * k, _EMPTY, dtype=np.uint32)
    np.minimum.at(flat, doc.astype(np.int64) * k + bins, (h & _U64(0xFFFFFFFF)).astype(np.uint32))
    sig = flat.reshape(n_docs, k)
    empty = sig == _EMPTY
    has = ~empty.all(axis=1)
    rows, cols = np.nonzero(empty & has[:, None])
    probes = _probe_table(k, seed)
    for t in range(probes.shape[0]):
        if not rows.size:
            break
        rows, cols = _copy_from_donors(sig, empty, rows, cols, probes[t, cols])
    # Still empty after 8k probes (documents with one or two non-empty bins): the next non-empty bin, circularly.
    for step in range(1, k):
        if not rows.size:
            break
        rows, cols = _copy_from_donors(sig, empty, rows, cols, (cols + step) % k)
    return sig


def band_hashes(sig: np.ndarray, bands: int, seed: int) -> np.ndarray:
    """One int64 bucket key per band (n_docs x bands): rows of a band combined with fixed odd multipliers, the band's
    index mixed in, so one 64-bit key names a (band, bucket) pair (equal keys in different bands have chance 2^-64)."""
    n, p = sig.shape
    rows = p // bands
    rng = np.random.default_rng(seed + 1)
    mult = rng.integers(0, 1 << 63, size=rows, dtype=np.int64).astype(_U64) * _U64(2) + _U64(1)
    with np.errstate(over="ignore"):
        acc = (sig.reshape(n, bands, rows).astype(_U64) * mult[None, None, :]).sum(axis=2, dtype=_U64)
        acc += np.arange(bands, dtype=_U64)[None, :] * _U64(0x9E3779B97F4A7C15)
        return _mix64(acc).view(np.int64)


_SIG_SCHEMA = StructType(
    [
        StructField("id", StringType(), False),
        StructField("sig", BinaryType(), False),
        StructField("bands", ArrayType(LongType(), False), False),
        StructField("n_shingles", IntegerType(), False),
    ]
)


def normalize_arrow(texts: pa.Array) -> pa.Array:
    """`normalize_for_dedup` with Arrow's vectorized string kernels, inside the signature UDF (2-3x faster than the
    JVM's regexes here): NFKD, combining marks removed (every script, not only Latin), lowercase, every run of
    non-letter/non-digit characters to one space, trimmed. Nulls become empty strings."""
    t = pc.utf8_normalize(texts.fill_null(""), "NFKD")
    t = pc.replace_substring_regex(t, r"\p{M}+", "")
    t = pc.utf8_lower(t)
    t = pc.replace_substring_regex(t, r"[^\p{L}\p{N}]+", " ")
    return pc.utf8_trim(t, " ")


_BIT_TYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def low_bits(sig: np.ndarray, bits: int) -> np.ndarray:
    """The low `bits` of every uint32 MinHash value (b-bit MinHash), as the smallest unsigned type holding them."""
    return sig.astype(_BIT_TYPES[bits])  # unsigned narrowing keeps the low bits


def bbit_similarity(equal_fraction: np.ndarray, bits: int) -> np.ndarray:
    """Jaccard estimate from the fraction of equal b-bit values: P(equal) = J + (1 - J) 2^-bits, solved for J."""
    chance = 2.0**-bits
    return np.clip((equal_fraction - chance) / (1.0 - chance), 0.0, 1.0)


def estimate_similarity(sa: np.ndarray, sb: np.ndarray, bits: int) -> np.ndarray:
    """Row-wise Jaccard estimates from two (n, num_perm) b-bit signature matrices."""
    return bbit_similarity((sa == sb).mean(axis=1), bits)


def _binary_rows(values: np.ndarray) -> pa.Array:
    """Each row of a 2-D array as one binary value (its bytes, row-major)."""
    n, width = values.shape[0], values.shape[1] * values.itemsize
    offsets = np.arange(n + 1, dtype=np.int32) * width
    data = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _rows_of_binary(column: pa.Array, num_perm: int, bits: int) -> np.ndarray:
    """The inverse of `_binary_rows`: an (n, num_perm) array of the b-bit values of a binary column."""
    n = len(column)
    if column.null_count:
        raise ValueError("a MinHash signature is null")
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1], dtype=offset_type)[column.offset : column.offset + n + 1]
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    width = num_perm * bits // 8
    if data.size != n * width or (n and not (np.diff(offsets) == width).all()):
        raise ValueError(f"MinHash signatures are not {width} bytes each ({num_perm} values of {bits} bits)")
    return data.view(_BIT_TYPES[bits]).reshape(n, num_perm)


def _signature_batches(cfg: NearDedupConfig) -> object:
    kind, size, num_perm, bands, seed = cfg.shingle, cfg.shingle_size, cfg.num_perm, cfg.bands, cfg.seed
    method, bits = cfg.hashing, cfg.signature_bits

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            n = batch.num_rows
            texts = batch.column(1)
            if not pa.types.is_large_string(texts.type):
                texts = texts.cast(pa.large_string())
            texts = normalize_arrow(texts)
            raw_offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + n + 1]
            first = int(raw_offsets[0]) if n else 0
            offsets = raw_offsets - first if n else np.zeros(1, dtype=np.int64)
            raw = texts.buffers()[2]
            total = int(offsets[-1])
            data = np.frombuffer(raw, dtype=np.uint8)[first : first + total] if total else np.zeros(0, np.uint8)
            doc, hashes = shingle_hashes(data, offsets, kind, size)
            sig = minhash_signatures(doc, hashes, n, num_perm, seed, method)
            bh = band_hashes(sig, bands, seed)
            n_sh = np.bincount(doc, minlength=n).astype(np.int32)
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column(0).cast(pa.string()),
                    _binary_rows(low_bits(sig, bits)),
                    pa.FixedSizeListArray.from_arrays(pa.array(bh.ravel()), bands).cast(
                        pa.list_(pa.field("element", pa.int64(), nullable=False))
                    ),
                    pa.array(n_sh),
                ],
                schema=pa.schema(
                    [
                        pa.field("id", pa.string(), False),
                        pa.field("sig", pa.binary(), False),
                        pa.field("bands", pa.list_(pa.field("element", pa.int64(), False)), False),
                        pa.field("n_shingles", pa.int32(), False),
                    ]
                ),
            )

    return compute


def signatures(df: DataFrame, cfg: NearDedupConfig, id_col: str = "doc_id", text_col: str = "text") -> DataFrame:
    """id, sig (the low `signature_bits` of the num_perm MinHash values, as bytes), bands (int64 per band, cut from
    the full values), n_shingles of every row of `df`."""
    src = df.select(F.col(id_col).cast("string").alias("id"), F.col(text_col).cast("string").alias("text"))
    return src.mapInArrow(_signature_batches(cfg), _SIG_SCHEMA)  # type: ignore[arg-type]


# ---------------------------------------------------------------- candidates, verification, components


def _run_pairs(keys: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of rows sharing a key in `keys` (sorted, equal keys contiguous).

    Runs of up to `max_bucket` rows give all their pairs; longer runs a star around their first row.
    """
    if keys.size < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    lengths = np.diff(np.append(starts, keys.size))
    left, right = [], []
    for length in np.unique(lengths[lengths > 1]):
        first = starts[lengths == length]
        if length <= max_bucket:
            i, j = np.triu_indices(int(length), 1)
        else:
            i, j = np.zeros(length - 1, np.int64), np.arange(1, length)
        left.append((first[:, None] + i[None, :]).ravel())
        right.append((first[:, None] + j[None, :]).ravel())
    if not left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(left), np.concatenate(right)


def _bucket_pairs(max_bucket: int) -> object:
    """mapInArrow over (key, id) rows sorted by (key, id) within a partition: the (a, b) pairs of each bucket.

    A bucket can straddle two Arrow batches: the last key's rows are held back and prepended to the next batch.
    """

    def emit(table: pa.Table) -> pa.RecordBatch:
        keys = table.column(0).to_numpy()
        i, j = _run_pairs(keys, max_bucket)
        ids = table.column(1)
        return pa.RecordBatch.from_arrays(
            [ids.take(pa.array(i)).combine_chunks(), ids.take(pa.array(j)).combine_chunks()],
            schema=_PAIR_ARROW,
        )

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        carry: pa.Table | None = None
        for batch in batches:
            table = pa.Table.from_batches([batch])
            if carry is not None:
                table = pa.concat_tables([carry, table])
            keys = table.column(0).to_numpy()
            if not keys.size:
                continue
            tail = int(np.searchsorted(keys, keys[-1], side="left"))
            carry = table.slice(tail)
            if tail:
                yield emit(table.slice(0, tail))
        if carry is not None and carry.num_rows:
            yield emit(carry)

    return compute


_PAIR_ARROW = pa.schema([pa.field("a", pa.string(), False), pa.field("b", pa.string(), False)])


def candidate_pairs(sigs: DataFrame, cfg: NearDedupConfig) -> DataFrame:
    """(a, b) with a < b sharing at least one band bucket; distinct.

    One shuffle puts every bucket in one partition, sorted by (bucket key, id) with Spark's external sort; pairs are
    generated from the sorted runs with numpy (`mapInArrow`), without collecting any bucket into an array. Buckets
    larger than `max_bucket_size` only pair each member with the bucket's smallest id (linear, not quadratic).
    """
    spark = sigs.sparkSession
    parts = int(spark.conf.get("spark.sql.shuffle.partitions") or 200)
    banded = sigs.where(F.col("n_shingles") > 0).select(F.explode("bands").alias("key"), "id")
    ordered = banded.repartition(parts, "key").sortWithinPartitions("key", "id")
    pairs = ordered.mapInArrow(_bucket_pairs(cfg.max_bucket_size), "a string, b string")  # type: ignore[arg-type]
    return pairs.where(F.col("a") != F.col("b")).distinct()


def _similarity_batches(num_perm: int, bits: int, threshold: float) -> object:
    """mapInArrow over (a, b, sig_a, sig_b): the Jaccard estimate from equal b-bit values, rows below threshold
    dropped."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            n = batch.num_rows
            if not n:
                continue
            sa = _rows_of_binary(batch.column(2), num_perm, bits)
            sb = _rows_of_binary(batch.column(3), num_perm, bits)
            sim = estimate_similarity(sa, sb, bits)
            keep = pa.array(sim >= threshold)
            yield pa.RecordBatch.from_arrays(
                [batch.column(0).filter(keep), batch.column(1).filter(keep), pa.array(sim).filter(keep)],
                names=["a", "b", "similarity"],
            )

    return compute


def pair_similarity(pairs: DataFrame, sigs: DataFrame, num_perm: int, bits: int, threshold: float = 0.0) -> DataFrame:
    """(a, b, similarity) of `pairs` whose estimated Jaccard similarity (from `sigs`' id, sig) is >= threshold."""
    s = sigs.select("id", "sig")
    joined = pairs.select("a", "b").join(s.withColumnRenamed("id", "a").withColumnRenamed("sig", "sig_a"), "a")
    joined = joined.join(s.withColumnRenamed("id", "b").withColumnRenamed("sig", "sig_b"), "b")
    verify = _similarity_batches(num_perm, bits, threshold)
    return joined.select("a", "b", "sig_a", "sig_b").mapInArrow(verify, "a string, b string, similarity double")  # type: ignore[arg-type]


def similar_pairs(sigs: DataFrame, cfg: NearDedupConfig) -> DataFrame:
    """Candidate pairs whose estimated Jaccard similarity is >= threshold: (a, b, similarity)."""
    return pair_similarity(candidate_pairs(sigs, cfg), sigs, cfg.num_perm, cfg.signature_bits, cfg.threshold)


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


def component_labels(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """For nodes 0..n-1 in id order linked by edges (a, b): each node's label, the smallest node of its connected
    component (scipy's sparse graph routine)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as cc

    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    _, comp = cc(graph, directed=False)
    # Nodes are in id order, so the first node of each component in index order is its smallest id.
    first = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n))
    return first[comp]


def components_on_driver(edges: DataFrame) -> DataFrame:
    """The same labels as `connected_components`, computed on the driver with scipy's sparse graph routine.

    Used when the verified edges are few (`local_components_max_edges`): near-duplicate edges are usually a small
    fraction of the documents, and one collect replaces several Spark rounds of joins.
    """
    spark = edges.sparkSession
    rows = edges.select("a", "b").collect()
    if not rows:
        return spark.createDataFrame([], "id string, label string")
    nodes = np.array(sorted({r[0] for r in rows} | {r[1] for r in rows}), dtype=object)
    index = {n: i for i, n in enumerate(nodes)}
    a = np.fromiter((index[r[0]] for r in rows), dtype=np.int64, count=len(rows))
    b = np.fromiter((index[r[1]] for r in rows), dtype=np.int64, count=len(rows))
    labels = nodes[component_labels(a, b, nodes.size)]
    return spark.createDataFrame(list(zip(nodes.tolist(), labels.tolist(), strict=True)), "id string, label string")


def cluster_labels(edges: DataFrame, cfg: NearDedupConfig) -> DataFrame:
    """Connected components of verified edges: on the driver when they are few, else distributed in Spark."""
    n_edges = edges.count()
    if n_edges <= cfg.local_components_max_edges:
        log.debug("connected components of %d edges on the driver", n_edges)
        return components_on_driver(edges)
    log.debug("connected components of %d edges with Spark label propagation", n_edges)
    return connected_components(edges, cfg.max_iterations)


_DUPS_SCHEMA = "doc_id string, duplicate_of string, similarity double"
# Pairs compared at a time on the driver: 1M pairs x 128 one-byte values x 2 stay ~256 MB.
_PAIR_BLOCK = 1 << 20


def _similarity_of(sig: np.ndarray, a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """Jaccard estimates of the row pairs (a, b) of an (n, num_perm) b-bit signature matrix, in blocks."""
    sim = np.empty(a.size, dtype=np.float64)
    for start in range(0, a.size, _PAIR_BLOCK):
        end = start + _PAIR_BLOCK
        sim[start:end] = estimate_similarity(sig[a[start:end]], sig[b[start:end]], bits)
    return sim


def near_duplicates_local(sigs: pa.Table, cfg: NearDedupConfig) -> pa.Table:
    """Steps 3-6 of the job on the driver with numpy, over collected signatures (`signatures`' columns): the
    same buckets, pairs, verification, components and representatives as the Spark steps, without their jobs.

    Returns:
        doc_id, duplicate_of, similarity (as `near_duplicates`).
    """
    ids = np.array(sigs.column("id").to_pylist(), dtype=object)
    order = np.argsort(ids, kind="stable")  # Python string order = code point order = Spark's UTF-8 byte order
    ids, n = ids[order], ids.size
    sig = _rows_of_binary(sigs.column("sig").combine_chunks(), cfg.num_perm, cfg.signature_bits)[order]
    bands = sigs.column("bands").combine_chunks().flatten().to_numpy().reshape(n, cfg.bands)[order]
    rows = np.flatnonzero(sigs.column("n_shingles").to_numpy()[order] > 0)
    # Buckets: (key, row) sorted by key then id order, as Spark's shuffle + sortWithinPartitions gives them.
    keys, members = bands[rows].ravel(), np.repeat(rows, cfg.bands)
    by_key = np.lexsort((members, keys))
    keys, members = keys[by_key], members[by_key]
    i, j = _run_pairs(keys, cfg.max_bucket_size)
    a, b = members[i], members[j]
    distinct = a != b
    pair = np.unique(a[distinct].astype(np.int64) * n + b[distinct])
    a, b = pair // n, pair % n
    verified = _similarity_of(sig, a, b, cfg.signature_bits) >= cfg.threshold
    label = component_labels(a[verified], b[verified], n) if n else np.zeros(0, np.int64)
    dup = np.flatnonzero(label != np.arange(n))
    return pa.table(
        {
            "doc_id": pa.array(ids[dup].tolist(), pa.string()),
            "duplicate_of": pa.array(ids[label[dup]].tolist(), pa.string()),
            "similarity": pa.array(_similarity_of(sig, dup, label[dup], cfg.signature_bits), pa.float64()),
        }
    )


def near_duplicates(df: DataFrame, cfg: NearDedupConfig, id_col: str = "doc_id", text_col: str = "text") -> DataFrame:
    """Rows of `df` that are near-duplicates of another row: (doc_id, duplicate_of, similarity).

    `duplicate_of` is the smallest id of the row's cluster (never itself a duplicate); `similarity` is the
    estimated Jaccard similarity of the row's shingles to the representative's. Ids must be unique. Signatures are
    always computed by Spark; up to `local_max_documents` rows, the rest runs on the driver (`near_duplicates_local`).
    """
    sigs = signatures(df, cfg, id_col, text_col).localCheckpoint()
    if cfg.local_max_documents and sigs.count() <= cfg.local_max_documents:
        log.debug("near duplicates: candidates, verification and components on the driver")
        return df.sparkSession.createDataFrame(near_duplicates_local(sigs.toArrow(), cfg).to_pandas(), _DUPS_SCHEMA)
    edges = similar_pairs(sigs, cfg).localCheckpoint()
    labels = cluster_labels(edges, cfg).where(F.col("id") != F.col("label"))
    members = pair_similarity(
        labels.select(F.col("id").alias("a"), F.col("label").alias("b")), sigs, cfg.num_perm, cfg.signature_bits
    )
    return members.select(F.col("a").alias("doc_id"), F.col("b").alias("duplicate_of"), "similarity")


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
