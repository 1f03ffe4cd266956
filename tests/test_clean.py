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


def test_html_title_becomes_the_document_title_unless_the_source_gave_one(spark) -> None:  # type: ignore[no-untyped-def]
    page = (
        "<html><head><title>  Outils de gestion\n des paquets &amp; d&#x27;APT </title></head>"
        "<body><p>APT est une interface avancée pour le système de gestion des paquets.</p></body></html>"
    )
    bronze = spark.createDataFrame(
        [
            Row(doc_id="html", source_uri="u/1", format="html", title=None, raw_text=page),
            Row(doc_id="blank", source_uri="u/2", format="html", title="  ", raw_text=page),
            Row(doc_id="given", source_uri="u/3", format="html", title=" Titre donné ", raw_text=page),
            Row(doc_id="notitle", source_uri="u/4", format="html", title=None, raw_text=page.replace("title", "x")),
            Row(doc_id="txt", source_uri="u/5", format="txt", title=None, raw_text="<title>pas du HTML</title> texte"),
        ]
    )
    kept, bad = clean_documents(bronze, CleanConfig(min_chars=5, min_words=1), "r1")
    assert bad.count() == 0
    titles = {r.doc_id: r.title for r in kept.collect()}
    chapter = "Outils de gestion des paquets & d'APT"
    assert titles == {"html": chapter, "blank": chapter, "given": "Titre donné", "notitle": None, "txt": None}
    assert all("Outils de gestion" not in r.text for r in kept.collect() if r.doc_id in ("html", "given"))


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


def test_dehyphenate_joins_words_cut_at_line_breaks() -> None:
    from rag_spark.clean.text import dehyphenate

    text, n = dehyphenate("une infor-\nmation, Jean-\nPierre et 1935-\n1940")
    assert (text, n) == ("une information, Jean-\nPierre et 1935-\n1940", 1)


def test_mask_pii_emails_and_phones_only() -> None:
    from rag_spark.clean.text import mask_pii

    text, emails, phones = mask_pii(
        "Écrire à jean.dupont@example.fr ou au +33 6 12 34 56 78 ; (555) 123-4567 ; né en 1935, le 12 08 2014, "
        "1 000 000 habitants"
    )
    assert (emails, phones) == (1, 2)
    assert text == ("Écrire à <EMAIL> ou au <PHONE> ; <PHONE> ; né en 1935, le 12 08 2014, 1 000 000 habitants")


def test_clean_rules_counted_and_quarantined(spark) -> None:  # type: ignore[no-untyped-def]
    from rag_spark.clean.normalize import rule_counts

    nav = "Accueil | Plan du site | Contact"
    prose = "Debian est un système d'exploitation libre, développé par une communauté de bénévoles depuis 1993."
    rows = [
        ("a", f"{nav}\n{prose}\nÉcrire à admin@debian.org pour une infor-\nmation."),
        ("b", f"{nav}\nLe projet publie une nouvelle version stable tous les deux ans environ, avec des mises à jour."),
        ("c", f"{nav}\nLes paquets sont construits automatiquement pour de nombreuses architectures matérielles."),
        ("d", "|| == ++ ** ## @@ !! ?? // \\\\ -- __ ;; :: ,, .. ~~ ^^ && %% $$ ** ++ == || <> [] {} ()"),
        ("e", "Trois mots seulement ici."),
    ]
    bronze = spark.createDataFrame(
        [(i, f"u/{i}", "txt", None, t) for i, t in rows],
        "doc_id string, source_uri string, format string, title string, raw_text string",
    )
    cfg = CleanConfig(min_chars=10, min_words=5, max_symbol_ratio=0.5, boilerplate_min_docs=3, mask_pii=True)
    kept, bad = clean_documents(bronze, cfg, "r1")
    texts = {r.doc_id: r.text for r in kept.collect()}
    assert set(texts) == {"a", "b", "c"}
    assert texts["a"] == f"{prose}\nÉcrire à <EMAIL> pour une information."  # boilerplate line gone
    assert {r.record_id: r.reason for r in bad.collect()} == {"d": "too many symbols", "e": "too few words"}
    counts = rule_counts(kept, bad)
    assert counts == {
        "hyphenations": 1,
        "emails": 1,
        "phones": 0,
        "boilerplate_lines": 3,
        "quarantined: too many symbols": 1,
        "quarantined: too few words": 1,
    }


def test_language_is_identified_and_the_allow_list_quarantines_only_sure_rejections(spark) -> None:  # type: ignore[no-untyped-def]
    rows = [
        ("fr", "Debian est un système d'exploitation libre, développé par une communauté de bénévoles depuis 1993."),
        ("en", "Debian is a free operating system, developed by a community of volunteers since 1993 and still alive."),
        (
            "de",
            "Debian ist ein freies Betriebssystem, das seit 1993 von einer Gemeinschaft Freiwilliger entwickelt wird.",
        ),
        ("digits", "1993 2001 2005 2007 2009 2011 2013 2015 2017 2019 2021 2023 2025 - 12 34 56 78 90"),
        ("unsure", "apt-get install foo bar baz"),
    ]
    bronze = spark.createDataFrame(
        [(i, f"u/{i}", "txt", None, t) for i, t in rows],
        "doc_id string, source_uri string, format string, title string, raw_text string",
    )
    kept, bad = clean_documents(bronze, CleanConfig(min_chars=10, languages=["fr", "EN"]), "r1")
    langs = {r.doc_id: (r.language, r.language_prob) for r in kept.collect()}
    assert set(langs) == {"fr", "en", "digits", "unsure"}
    assert langs["fr"][0] == "fr" and langs["en"][0] == "en" and langs["fr"][1] > 0.9
    assert langs["digits"] == (None, 0.0)  # nothing to identify: kept, not guessed
    assert langs["unsure"][1] < 0.8  # a guess below language_min_prob never rejects
    (rejected,) = bad.collect()
    assert rejected.record_id == "de" and rejected.reason == "language not allowed"
    assert rejected.detail.startswith("identified as de (p=") and "['en', 'fr']" in rejected.detail
    # Without an allow-list the language is still identified, and nothing is rejected for it.
    kept_all, bad_all = clean_documents(bronze, CleanConfig(min_chars=10), "r1")
    assert bad_all.count() == 0
    assert {r.doc_id: r.language for r in kept_all.collect()}["de"] == "de"


def test_language_allow_list_is_validated() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not ISO 639-1"):
        CleanConfig(languages=["french"])
    with pytest.raises(ValidationError, match="py3langid"):
        CleanConfig(languages=["xx"])
    assert CleanConfig(languages=[" FR", "en", "fr"]).languages == ["en", "fr"]
