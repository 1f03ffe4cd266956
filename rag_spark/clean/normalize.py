"""bronze -> cleaned documents: HTML to text, repair and optional rules in one vectorized UDF, then boilerplate
lines shared by many documents, then language identification, then quality filters (length, words, symbol ratio,
language allow-list) that send documents to quarantine with the rule's name. `rule_counts` reports how often
every rule fired in a run."""

from __future__ import annotations

import logging

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType

from rag_spark.clean.text import clean_with_rules, identify_language
from rag_spark.config import CleanConfig

log = logging.getLogger(__name__)

_CLEANED = StructType(
    [
        StructField("text", StringType()),
        StructField("hyphenations", IntegerType()),
        StructField("emails", IntegerType()),
        StructField("phones", IntegerType()),
        StructField("html_title", StringType()),
    ]
)
# Quarantine reasons of the quality filters, in the order they are checked.
TOO_SHORT = "too short after cleaning"
TOO_FEW_WORDS = "too few words"
TOO_MANY_SYMBOLS = "too many symbols"
LANGUAGE_NOT_ALLOWED = "language not allowed"
_LANGUAGE = StructType([StructField("language", StringType()), StructField("language_prob", DoubleType())])


def _clean_udf(cfg: CleanConfig):  # type: ignore[no-untyped-def]
    form, fix, hyph, pii = cfg.unicode_form, cfg.fix_mojibake, cfg.join_hyphenation, cfg.mask_pii

    @F.pandas_udf(_CLEANED)  # type: ignore[call-overload]
    def clean(raw: pd.Series, fmt: pd.Series) -> pd.DataFrame:
        out = [clean_with_rules(r, f, form, fix, hyph, pii) for r, f in zip(raw, fmt, strict=True)]
        return pd.DataFrame(out, columns=["text", "hyphenations", "emails", "phones", "html_title"])

    return clean


@F.pandas_udf(_LANGUAGE)  # type: ignore[call-overload]
def _language_udf(text: pd.Series) -> pd.DataFrame:
    return pd.DataFrame([identify_language(t) for t in text], columns=["language", "language_prob"])


def _line_key(line: Column) -> Column:
    return F.lower(F.trim(line))


def remove_boilerplate(docs: DataFrame, min_docs: int, max_lines: int = 50_000) -> DataFrame:
    """Drops lines (compared trimmed and case-folded) that occur in at least `min_docs` documents.

    Navigation, cookie banners and legal footers repeat verbatim across pages of a site; real sentences rarely do.
    The set of such lines is small by construction, so it is collected and applied as a literal; adds
    `boilerplate_lines` (lines removed per document).
    """
    lines = docs.select("doc_id", F.explode(F.split("text", "\n")).alias("line"))
    keys = (
        lines.select("doc_id", _line_key(F.col("line")).alias("k"))
        .where(F.col("k") != "")
        .distinct()
        .groupBy("k")
        .count()
        .where(F.col("count") >= min_docs)
        .orderBy(F.desc("count"), "k")
        .limit(max_lines)
        .collect()
    )
    n_before = F.size(F.split("text", "\n"))
    if not keys:
        return docs.withColumn("boilerplate_lines", F.lit(0))
    log.info("boilerplate: %d distinct lines found in >= %d documents", len(keys), min_docs)
    boiler = F.array(*[F.lit(r["k"]) for r in keys])
    kept_lines = F.filter(F.split("text", "\n"), lambda line: ~F.array_contains(boiler, _line_key(line)))
    return (
        docs.withColumn("_lines", n_before)
        .withColumn("text", F.trim(F.regexp_replace(F.array_join(kept_lines, "\n"), r"\n{3,}", "\n\n")))
        .withColumn("boilerplate_lines", (F.col("_lines") - F.size(kept_lines)).cast("int"))
        .drop("_lines")
    )


def clean_documents(bronze: DataFrame, cfg: CleanConfig, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Cleans `bronze` rows into silver candidates and quarantines documents that fail a quality filter.

    Returns:
        (cleaned, quarantine): cleaned has doc_id, source_uri, format, title, text, text_hash, n_chars and the
        per-document rule counters hyphenations, emails, phones, boilerplate_lines, and language, language_prob.
    """
    # The title: the source's own (a record's title field, a PDF's metadata), else the one the document carries
    # (an HTML page's <title>); blank counts as none.
    given = F.when(F.trim("title") != "", F.trim("title"))
    cleaned = (
        bronze.select(
            "doc_id",
            "source_uri",
            "format",
            given.alias("_given_title"),
            _clean_udf(cfg)(F.col("raw_text"), F.col("format")).alias("r"),
        )
        .select("doc_id", "source_uri", "format", F.coalesce("_given_title", "r.html_title").alias("title"), "r.*")
        .drop("html_title")
    )
    if cfg.boilerplate_min_docs:
        cleaned = remove_boilerplate(cleaned, cfg.boilerplate_min_docs)
    else:
        cleaned = cleaned.withColumn("boilerplate_lines", F.lit(0))
    cleaned = cleaned.withColumn("_lang", _language_udf(F.col("text"))).select("*", "_lang.*").drop("_lang")
    # The exact-dedup key: normalized text, case-folded, whitespace-collapsed.
    cleaned = cleaned.withColumn("n_chars", F.length("text").cast("int")).withColumn(
        "text_hash", F.sha2(F.regexp_replace(F.lower("text"), r"\s+", " "), 256)
    )
    n_words = F.size(F.split(F.trim("text"), r"\s+"))
    symbols = F.length(F.regexp_replace("text", r"[\p{L}\p{N}\s]", "")) / F.greatest(F.col("n_chars"), F.lit(1))
    reason = (
        F.when(F.col("n_chars") < cfg.min_chars, F.lit(TOO_SHORT))
        .when(n_words < cfg.min_words, F.lit(TOO_FEW_WORDS))
        .when(symbols > cfg.max_symbol_ratio, F.lit(TOO_MANY_SYMBOLS))
        .when(_rejected_language(cfg), F.lit(LANGUAGE_NOT_ALLOWED))
    )
    detail = (
        F.when(
            F.col("_reason") == TOO_SHORT,
            F.format_string(f"%d characters < clean.min_chars={cfg.min_chars}", F.col("n_chars")),
        )
        .when(
            F.col("_reason") == TOO_FEW_WORDS, F.format_string(f"%d words < clean.min_words={cfg.min_words}", n_words)
        )
        .when(
            F.col("_reason") == TOO_MANY_SYMBOLS,
            F.format_string(f"symbol ratio %.2f > clean.max_symbol_ratio={cfg.max_symbol_ratio}", symbols),
        )
        .otherwise(
            F.format_string(
                f"identified as %s (p=%.2f), not in clean.languages={cfg.languages}",
                F.col("language"),
                F.col("language_prob"),
            )
        )
    )
    cleaned = cleaned.withColumn("_reason", reason)
    quarantine = cleaned.where(F.col("_reason").isNotNull()).select(
        F.lit("clean").alias("stage"),
        "source_uri",
        F.col("doc_id").alias("record_id"),
        F.col("_reason").alias("reason"),
        detail.alias("detail"),
        F.substring("text", 1, 300).alias("snippet"),
        F.lit(run_id).alias("run_id"),
    )
    return cleaned.where(F.col("_reason").isNull()).drop("_reason"), quarantine


def _rejected_language(cfg: CleanConfig) -> Column:
    """True where the allow-list is set and the identifier is sure the document is in another language."""
    if not cfg.languages:
        return F.lit(False)
    return (
        F.col("language").isNotNull()
        & ~F.col("language").isin(*cfg.languages)
        & (F.col("language_prob") >= cfg.language_min_prob)
    )


def language_counts(cleaned: DataFrame) -> dict[str, int]:
    """Documents per identified language (None: no letters to identify), most frequent first."""
    rows = cleaned.groupBy("language").count().orderBy(F.desc("count"), "language").collect()
    return {str(r["language"]): int(r["count"]) for r in rows}


def rule_counts(cleaned: DataFrame, quarantine: DataFrame) -> dict[str, int]:
    """How often each cleaning rule fired in a run: repairs summed over documents, rejections per reason."""
    sums = cleaned.agg(
        *[F.sum(c).cast("long").alias(c) for c in ("hyphenations", "emails", "phones", "boilerplate_lines")]
    ).first()
    counts = {k: int(v or 0) for k, v in (sums.asDict() if sums else {}).items()}
    for row in quarantine.groupBy("reason").count().collect():
        counts[f"quarantined: {row['reason']}"] = int(row["count"])
    return counts
