"""Standalone deduplication of any JSONL file: `rag-spark dedup --input FILE.jsonl --out DIR`.

Reads the records with the ingest JSONL reader (malformed lines, missing ids/texts and repeated ids go to
quarantine), removes exact duplicates of the normalized text, then near-duplicates (MinHash + LSH, see
`rag_spark.clean.dedup_minhash`), and writes under DIR the Delta tables `silver` (kept records), `duplicates`
(each dropped record, the kept record it duplicates, the similarity and the method) and `quarantine`, plus
`DIR/clusters.tsv` (`id`, `representative_id`) for every accepted record, kept records mapping to themselves.
Rows are accounted for: non-blank input lines = kept + duplicates + quarantined, or `AccountingError`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.clean.dedup_exact import dedup_exact
from rag_spark.clean.dedup_minhash import dedup_near, normalize_for_dedup
from rag_spark.config import IngestConfig, NearDedupConfig
from rag_spark.ingest.documents import dedup_ids, quarantine_rows
from rag_spark.ingest.files import FieldMap, read_jsonl, to_uri
from rag_spark.lake import Lake

log = logging.getLogger(__name__)


class AccountingError(RuntimeError):
    """Rows in != rows kept + duplicates + quarantined: something was dropped silently."""


@dataclass
class DedupSummary:
    """What one standalone dedup run read, kept, dropped and quarantined."""

    run_id: str
    input: str
    lines: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    quarantined: int = 0
    clusters_tsv: str = ""
    seconds: float = 0.0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)


def resolve_duplicates(exact: DataFrame, near: DataFrame) -> DataFrame:
    """Exact and near duplicates as one `duplicates` frame where `duplicate_of` is always a kept record.

    An exact copy of a record that is itself a near duplicate points at that record's representative, with the
    near similarity (the copy's text equals the record's after normalization).
    """
    hop = near.select(
        F.col("doc_id").alias("duplicate_of"), F.col("duplicate_of").alias("_rep"), F.col("similarity").alias("_sim")
    )
    exact = exact.join(hop, "duplicate_of", "left").select(
        "doc_id",
        F.coalesce("_rep", "duplicate_of").alias("duplicate_of"),
        F.coalesce("_sim", "similarity").alias("similarity"),
        "method",
        "run_id",
    )
    return exact.unionByName(near.select(*exact.columns))


def dedup_jsonl(
    spark: SparkSession,
    input_path: str,
    out: str,
    cfg: NearDedupConfig,
    *,
    id_field: str = "id",
    text_field: str = "text",
    run_id: str | None = None,
) -> DedupSummary:
    """Deduplicates one JSONL file into Delta tables and `clusters.tsv` under `out` (see the module docstring).

    Raises:
        FileNotFoundError: if `input_path` does not exist.
        AccountingError: if input lines != kept + duplicates + quarantined.
    """
    src = Path(input_path)
    if "://" not in input_path and not src.is_file():
        raise FileNotFoundError(f"dedup input not found: {input_path}")
    t0 = time.perf_counter()
    run_id = run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-dedup-{uuid.uuid4().hex[:4]}"
    summary = DedupSummary(run_id=run_id, input=input_path)
    lake = Lake(spark, out)
    meta = {"run_id": run_id, "stage": "dedup", "input": input_path, "near_dedup": cfg.model_dump()}

    ingest_cfg = IngestConfig(id_field=id_field, text_field=text_field)
    fields = FieldMap(id_field=id_field, title_field=ingest_cfg.title_field, text_field=text_field)
    docs, bad_rows = read_jsonl(spark, [to_uri(str(input_path))], fields)
    bad = quarantine_rows(bad_rows, run_id)
    docs, bad_ids = dedup_ids(docs, run_id)
    quarantine = bad.unionByName(bad_ids).withColumn("stage", F.lit("dedup")).cache()
    docs = docs.select(
        "doc_id",
        "source_uri",
        "format",
        "title",
        F.col("raw_text").alias("text"),
        F.sha2(normalize_for_dedup(F.col("raw_text")), 256).alias("text_hash"),
        F.length("raw_text").cast("int").alias("n_chars"),
        F.lit(run_id).alias("run_id"),
        # Standalone dedup does not clean or identify languages: silver's language columns stay empty.
        F.lit(None).cast("string").alias("language"),
        F.lit(None).cast("double").alias("language_prob"),
    ).cache()
    kept, exact = dedup_exact(docs, run_id)
    if cfg.enabled:
        kept, near = dedup_near(kept, cfg, run_id)
        duplicates = resolve_duplicates(exact, near)
    else:
        duplicates = exact
    v = summary.versions
    v["silver"] = lake.merge(
        S.SILVER,
        kept,
        meta=meta,
        changed="t.text_hash <> s.text_hash OR NOT (t.title <=> s.title)",
        delete_missing=True,
    )
    v["duplicates"] = lake.merge(
        S.DUPLICATES,
        duplicates,
        meta=meta,
        changed="t.duplicate_of <> s.duplicate_of OR t.method <> s.method OR t.similarity <> s.similarity",
        delete_missing=True,
    )
    v["quarantine"] = lake.merge(
        S.QUARANTINE, quarantine, meta=meta, changed="t.reason <> s.reason", delete_missing=True
    )
    silver = lake.read(S.SILVER, v["silver"])
    dups = lake.read(S.DUPLICATES, v["duplicates"])
    bad_rows = lake.read(S.QUARANTINE, v["quarantine"])
    clusters = silver.select(F.col("doc_id").alias("id"), F.col("doc_id").alias("representative_id")).unionByName(
        dups.select(F.col("doc_id").alias("id"), F.col("duplicate_of").alias("representative_id"))
    )
    summary.clusters_tsv = lake.export_tsv(clusters, f"{out.rstrip('/')}/clusters.tsv", sort_by="id")

    summary.lines = spark.read.text(input_path).where(F.trim("value") != "").count()
    summary.kept = silver.count()
    by_method = {r["method"]: r["count"] for r in dups.groupBy("method").count().collect()}
    summary.exact_duplicates = int(by_method.get("exact", 0))
    summary.near_duplicates = int(by_method.get("near", 0))
    summary.quarantine_reasons = {r["reason"]: int(r["count"]) for r in bad_rows.groupBy("reason").count().collect()}
    summary.quarantined = sum(summary.quarantine_reasons.values())
    docs.unpersist()
    quarantine.unpersist()
    dropped = summary.exact_duplicates + summary.near_duplicates
    if summary.lines != summary.kept + dropped + summary.quarantined:
        raise AccountingError(
            f"dedup {input_path}: {summary.lines} lines != {summary.kept} kept + {dropped} duplicates + "
            f"{summary.quarantined} quarantined"
        )
    summary.seconds = time.perf_counter() - t0
    log.info("dedup %s: %s", input_path, summary)
    return summary
