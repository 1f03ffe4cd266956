import itertools

from pyspark.sql import Row

from rag_spark.clean.chunk import chunk_documents, load_tokenizer, split_tokens
from rag_spark.config import PACKAGED_MINILM, ChunkConfig
from rag_spark.embed.models import resolve_encoder

TEXT = (
    "Debian GNU/Linux est un système d'exploitation libre, développé par des bénévoles du monde entier. "
    "Il contient des milliers de paquets logiciels, précompilés et faciles à installer. "
) * 6


def test_windows_cover_text_with_overlap() -> None:
    tok = load_tokenizer(resolve_encoder(PACKAGED_MINILM))
    windows = split_tokens(TEXT, tok, size=40, overlap=10)
    assert len(windows) > 3
    assert all(n <= 40 for _, _, n in windows)
    assert windows[0][0] == 0 and windows[-1][1] == len(TEXT.rstrip())
    for (s1, e1, _), (s2, _, _) in itertools.pairwise(windows):
        assert s2 < e1, "consecutive windows overlap"
        assert s2 > s1
    # every window re-tokenizes to at most the size (it is cut at token offsets)
    for s, e, _ in windows:
        assert len(tok(TEXT[s:e], add_special_tokens=False)["input_ids"]) <= 40 + 2


def test_short_text_is_one_chunk() -> None:
    tok = load_tokenizer(resolve_encoder(PACKAGED_MINILM))
    assert split_tokens("Bonjour Debian.", tok, 40, 10) == [
        (0, 15, len(tok("Bonjour Debian.", add_special_tokens=False)["input_ids"]))
    ]


def test_chunk_documents_ids_are_stable(spark) -> None:  # type: ignore[no-untyped-def]
    silver = spark.createDataFrame(
        [Row(doc_id="faq/a.html", title="T", text=TEXT), Row(doc_id="b", title=None, text="Court texte.")]
    )
    cfg = ChunkConfig(size_tokens=40, overlap_tokens=10)
    tok = resolve_encoder(PACKAGED_MINILM)
    first = chunk_documents(silver, cfg, tok, "r1").orderBy("chunk_id").collect()
    again = chunk_documents(silver, cfg, tok, "r2").orderBy("chunk_id").collect()
    assert [r.chunk_id for r in first] == [r.chunk_id for r in again]
    assert [r.chunk_key for r in first] == [r.chunk_key for r in again]
    assert first[0].chunk_id == "b#0000" and first[1].chunk_id == "faq/a.html#0000"
    assert len({r.chunk_key for r in first}) == len(first)
    assert all(0 <= r.chunk_key < 2**60 for r in first)
    a_chunks = [r for r in first if r.doc_id == "faq/a.html"]
    assert [r.chunk_index for r in a_chunks] == list(range(len(a_chunks)))
    assert all(r.text == TEXT[r.start_char : r.end_char] for r in a_chunks)
