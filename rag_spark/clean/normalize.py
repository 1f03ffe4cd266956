"""bronze -> cleaned documents: HTML to text and normalization in one vectorized UDF, quality gate."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from rag_spark.clean.text import clean_document
from rag_spark.config import CleanConfig


def _clean_udf(cfg: CleanConfig):  # type: ignore[no-untyped-def]
    form, fix = cfg.unicode_form, cfg.fix_mojibake

    @F.pandas_udf(StringType())  # type: ignore[call-overload]
    def clean(raw: pd.Series, fmt: pd.Series) -> pd.Series:
        return pd.Series([clean_document(r, f, form, fix) for r, f in zip(raw, fmt, strict=True)])

    return clean


def clean_documents(bronze: DataFrame, cfg: CleanConfig, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Cleans `bronze` rows into silver candidates and quarantines documents too short after cleaning.

    Returns:
        (cleaned, quarantine): cleaned has doc_id, source_uri, format, title, text, text_hash, n_chars.
    """
    cleaned = bronze.select(
        "doc_id",
        "source_uri",
        "format",
        F.when(F.col("title").isNotNull(), F.trim("title")).alias("title"),
        _clean_udf(cfg)(F.col("raw_text"), F.col("format")).alias("text"),
    )
    # The dedup key: normalized text, case-folded, whitespace-collapsed.
    cleaned = cleaned.withColumn("n_chars", F.length("text").cast("int")).withColumn(
        "text_hash", F.sha2(F.regexp_replace(F.lower("text"), r"\s+", " "), 256)
    )
    short = F.col("n_chars") < cfg.min_chars
    quarantine = cleaned.where(short).select(
        F.lit("clean").alias("stage"),
        "source_uri",
        F.col("doc_id").alias("record_id"),
        F.lit("too short after cleaning").alias("reason"),
        F.format_string(f"%d characters < clean.min_chars={cfg.min_chars}", F.col("n_chars")).alias("detail"),
        F.substring("text", 1, 300).alias("snippet"),
        F.lit(run_id).alias("run_id"),
    )
    return cleaned.where(~short), quarantine
