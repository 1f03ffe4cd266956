from pyspark.sql import Row
from pyspark.testing import assertDataFrameEqual

from rag_spark.clean.dedup_exact import dedup_exact
from rag_spark.clean.normalize import clean_documents
from rag_spark.clean.text import html_to_text, normalize_text
from rag_spark.config import CleanConfig


def test_normalize_text() -> None:
    raw = "Ｄebian\u200b  est   libre.\r\n\r\n\r\n\r\nﬁn\x07 "
    assert normalize_text(raw) == "Debian est libre.\n\nfin"
    assert normalize_text("Ã©tÃ©") == "été"  # mojibake repaired by ftfy
    assert normalize_text("Ã©tÃ©", fix_mojibake=False) != "été"


def test_html_to_text_drops_scripts_and_navigation() -> None:
    html = (
        "<html><head><title>t</title><script>alert(1)</script></head><body>"
        "<nav>Accueil | Menu</nav><p>Debian est un système libre.</p><p>Second paragraphe.</p></body></html>"
    )
    text = html_to_text(html)
    assert "Debian est un système libre." in text and "Second paragraphe." in text
    assert "alert" not in text and "Menu" not in text


def test_clean_documents_quarantines_short(spark) -> None:  # type: ignore[no-untyped-def]
    bronze = spark.createDataFrame(
        [
            Row(
                doc_id="a",
                source_uri="u/a",
                format="html",
                title=None,
                raw_text="<p>Un texte assez long pour rester.</p>",
            ),
            Row(doc_id="b", source_uri="u/b", format="txt", title=" T ", raw_text="court"),
        ]
    )
    kept, bad = clean_documents(bronze, CleanConfig(min_chars=10), "r1")
    assert [(r.doc_id, r.text) for r in kept.collect()] == [("a", "Un texte assez long pour rester.")]
    assert [(r.record_id, r.reason, r.stage) for r in bad.collect()] == [("b", "too short after cleaning", "clean")]


def test_dedup_exact_keeps_smallest_id(spark) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([("b", "h1"), ("a", "h1"), ("c", "h2"), ("d", "h1")], "doc_id string, text_hash string")
    kept, dups = dedup_exact(df, "r1")
    assertDataFrameEqual(kept, spark.createDataFrame([("a", "h1"), ("c", "h2")], "doc_id string, text_hash string"))
    assertDataFrameEqual(
        dups.select("doc_id", "duplicate_of", "similarity", "method"),
        spark.createDataFrame(
            [("b", "a", 1.0, "exact"), ("d", "a", 1.0, "exact")],
            "doc_id string, duplicate_of string, similarity double, method string",
        ),
    )
