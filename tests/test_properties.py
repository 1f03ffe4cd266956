"""Property-based tests (hypothesis) of the pure text functions: normalization, token windows, MinHash."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag_spark.clean.chunk import load_tokenizer, split_tokens
from rag_spark.clean.dedup_minhash import minhash_signatures, shingle_hashes
from rag_spark.clean.text import normalize_text
from rag_spark.config import PACKAGED_MINILM
from rag_spark.embed.models import resolve_encoder

# Text as documents hold it: letters of several scripts, accents, digits, punctuation, spaces, line breaks,
# control and zero-width characters, ligatures and full-width forms (NFKC changes those).
TEXT = st.text(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(list("  \n\t\r\u00a0\u200béèçàÉœﬁＡ１２,.;:!?'\"-–—()[]")),
    ),
    max_size=300,
)
WORDS = st.lists(
    st.text(st.sampled_from(list("abcdefghijklmnopqrstuvwxyzéèàç0123456789")), min_size=1, max_size=12),
    min_size=0,
    max_size=120,
)
SEPARATORS = st.sampled_from([" ", "  ", "\n", ", ", ". ", " - ", "\n\n"])


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_normalization_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert once == once.strip() and "\r" not in once and "\n\n\n" not in once


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer(resolve_encoder(PACKAGED_MINILM))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=WORDS, seps=st.lists(SEPARATORS, min_size=1), size=st.integers(4, 40), data=st.data())
def test_chunks_cover_the_document_with_the_configured_overlap(tokenizer, words, seps, size, data) -> None:  # type: ignore[no-untyped-def]
    overlap = data.draw(st.integers(0, size - 1), label="overlap")
    text = "".join(w + seps[i % len(seps)] for i, w in enumerate(words))
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    windows = split_tokens(text, tokenizer, size, overlap)
    if not text.strip():
        assert windows == []
        return
    assert windows, "a non-blank document has at least one chunk"
    # No text before the first chunk, after the last one, or between two chunks (only whitespace may fall there).
    assert text[: windows[0][0]].strip() == "" and text[windows[-1][1] :].strip() == ""
    for (s1, e1, n1), (s2, e2, _) in itertools.pairwise(windows):
        assert n1 == size  # only the last window may be shorter
        assert s1 < s2 and e1 < e2
        if overlap:
            assert s2 < e1  # consecutive chunks share text
        else:
            assert text[e1:s2].strip() == ""
    # Token accounting: every token is in a chunk, and consecutive chunks share exactly `overlap` tokens.
    assert sum(n for _, _, n in windows) - overlap * (len(windows) - 1) == len(offsets)
    step = size - overlap
    for i, (s, e, n) in enumerate(windows):
        assert (s, e) == (offsets[i * step][0], offsets[i * step + n - 1][1])
    assert all(n <= size for _, _, n in windows)


def _arrow(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    arr = pa.array(texts, pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[: len(texts) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[: offsets[-1]] if offsets[-1] else np.zeros(0, np.uint8)
    return data, offsets


POOL = [f"w{i}" for i in range(400)]


@settings(max_examples=100, deadline=None)
@given(
    a=st.sets(st.sampled_from(POOL), min_size=1, max_size=200),
    b=st.sets(st.sampled_from(POOL), min_size=1, max_size=200),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("method", ["one_permutation", "permutations"])
def test_minhash_estimates_jaccard(method: str, a: set[str], b: set[str], seed: int) -> None:
    # Word 1-shingles of space-joined distinct words: the shingle sets are exactly `a` and `b`.
    texts = [" ".join(sorted(a)), " ".join(sorted(b)), " ".join(sorted(a))]
    data, offsets = _arrow(texts)
    doc, h = shingle_hashes(data, offsets, "word", 1)
    num_perm = 256
    sig = minhash_signatures(doc, h, len(texts), num_perm, seed, method)
    est = float((sig[0] == sig[1]).mean())
    exact = len(a & b) / len(a | b)
    assert 0.0 <= est <= 1.0
    assert (sig[0] == sig[2]).all()  # identical texts: similarity exactly 1.0
    # The estimate is a mean of num_perm Bernoulli(J) draws: sd <= 0.5 / 16 = 0.031; 0.16 is over 5 sd.
    tolerance = 0.16
    if method == "one_permutation":
        # Shingles of the union that fall into one bin act as one element (with 3 shingles in 256 bins, about one
        # case in 85), which moves J by up to ~1/|a | b|: noticeable only for tiny sets, which real documents
        # (hundreds of shingles) are not.
        tolerance += 1 / len(a | b)
    assert abs(est - exact) <= tolerance, (est, exact)
    if not a & b:
        assert est <= 0.1
    if a == b:
        assert est == 1.0


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(TEXT, min_size=2, max_size=6), seed=st.integers(0, 2**16))
@pytest.mark.parametrize("method", ["one_permutation", "permutations"])
def test_minhash_char_shingles_bounds_and_identity(method: str, texts: list[str], seed: int) -> None:
    texts = [t.encode("utf-8", "ignore").decode("utf-8") for t in texts] + [texts[0]]
    data, offsets = _arrow(texts)
    doc, h = shingle_hashes(data, offsets, "char", 5)
    sig = minhash_signatures(doc, h, len(texts), 64, seed, method)
    for i in range(len(texts)):
        sim = (sig[i][None, :] == sig).mean(axis=1)
        assert ((sim >= 0) & (sim <= 1)).all()
    assert (sig[0] == sig[-1]).all()
