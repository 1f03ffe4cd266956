"""Wires the stages: each reads Delta tables at a recorded version, computes, and merges its output in one commit.

Spark stages are pure DataFrame functions; Ray stages are callable classes run by an actor pool here (the only
place, with `rag_spark.raycluster`, that imports Ray). Every stage records a lineage row: input table versions,
output versions, config hash, rows and seconds.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.clean.chunk import chunk_documents
from rag_spark.clean.dedup_exact import dedup_exact
from rag_spark.clean.normalize import clean_documents
from rag_spark.config import PipelineConfig
from rag_spark.embed.models import model_id, resolve_encoder
from rag_spark.ingest.documents import PreviousIngest, collect
from rag_spark.ingest.qa import read_answers, read_qrels, read_queries
from rag_spark.lake import Lake

log = logging.getLogger(__name__)

STAGES = ["ingest", "clean", "chunk", "embed", "index", "retrieve", "generate", "evaluate", "report"]


class AccountingError(RuntimeError):
    """Rows in != rows kept + duplicates + quarantined: something was dropped silently."""


def new_run_id(cfg: PipelineConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{cfg.config_hash[:6]}-{uuid.uuid4().hex[:4]}"


@dataclass
class StageResult:
    """What one stage did: versions read and written, rows produced, seconds taken."""

    stage: str
    inputs: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """One run of the pipeline over one dataset, writing into one lake."""

    def __init__(self, cfg: PipelineConfig, spark: SparkSession | None = None, run_id: str | None = None) -> None:
        self.cfg = cfg.resolved()
        self.run_id = run_id or new_run_id(cfg)
        self._spark = spark
        self._lake: Lake | None = None
        self.results: dict[str, StageResult] = {}

    # -- shared resources --

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            from rag_spark.spark import build_spark

            self._spark = build_spark(self.cfg.spark)
        return self._spark

    @property
    def lake(self) -> Lake:
        if self._lake is None:
            self._lake = Lake(self.spark, self.cfg.lake_root)
        return self._lake

    @property
    def index_root(self) -> Path:
        return Path(self.cfg.out) / "index" / model_id(self.cfg.embed.model)

    def _meta(self, stage: str, inputs: dict[str, int]) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "stage": stage,
            "config_hash": self.cfg.stage_hash(stage),
            "inputs": inputs,
        }

    def _read(self, table: S.Table, inputs: dict[str, int]) -> DataFrame:
        """Reads the latest version of `table` and remembers that version as a stage input."""
        version = self.lake.version(table)
        if version is None:
            raise RuntimeError(f"table '{table.name}' does not exist in {self.lake.root}: run the earlier stages first")
        inputs[table.name] = version
        return self.lake.read(table, version)

    @contextmanager
    def _staged(self, df: DataFrame, name: str) -> Iterator[tuple[str, str]]:
        """Stages `df` as parquet for Ray workers; yields (input folder, output folder); removes both after."""
        staged_in = self.lake.write_staging(df, f"{name}-in")
        staged_out = self.lake.staging_dir(f"{name}-out")
        try:
            yield staged_in, staged_out
        finally:
            self.lake.drop_staging(staged_in)
            self.lake.drop_staging(staged_out)

    def _finish(self, result: StageResult, t0: float) -> StageResult:
        result.seconds = time.perf_counter() - t0
        self.lake.record_lineage(
            run_id=self.run_id,
            stage=result.stage,
            config_hash=self.cfg.stage_hash(result.stage),
            inputs=result.inputs,
            outputs=result.outputs,
            rows=result.rows,
            seconds=result.seconds,
        )
        self.results[result.stage] = result
        log.info("stage %s: %d rows in %.1f s -> %s", result.stage, result.rows, result.seconds, result.outputs)
        return result

    # -- stages --

    def ingest(self) -> StageResult:
        """Dataset folder -> bronze, quarantine (ingest), queries, qrels, gold_answers."""
        t0 = time.perf_counter()
        res = StageResult("ingest")
        meta = self._meta("ingest", {})
        previous = None
        if self.cfg.ingest.incremental and self.lake.exists(S.SOURCES) and self.lake.exists(S.BRONZE):
            # Read at fixed versions: the MERGE below rewrites the very tables the carried rows come from.
            previous = PreviousIngest(
                bronze=self.lake.read(S.BRONZE, self.lake.version(S.BRONZE)),
                quarantine=self.lake.read(S.QUARANTINE, self.lake.version(S.QUARANTINE)).where("stage = 'ingest'"),
                sources=self.lake.read(S.SOURCES, self.lake.version(S.SOURCES)),
            )
        got = collect(
            self.spark,
            self.cfg.dataset,
            self.cfg.ingest,
            self.run_id,
            previous=previous,
            config_hash=self.cfg.stage_hash("ingest"),
        )
        docs = got.docs.cache()
        bad = got.quarantine.cache()
        n_docs, n_bad = docs.count(), bad.count()
        res.outputs["bronze"] = self.lake.merge(
            S.BRONZE,
            docs,
            meta=meta,
            changed=(
                "t.content_hash <> s.content_hash OR t.source_uri <> s.source_uri OR t.format <> s.format"
                " OR NOT (t.title <=> s.title)"
            ),
            delete_missing=True,
        )
        res.outputs["quarantine"] = self.lake.merge(
            S.QUARANTINE,
            bad,
            meta=meta,
            changed="t.reason <> s.reason OR NOT (t.detail <=> s.detail)",
            delete_missing="t.stage = 'ingest'",
        )
        res.outputs["sources"] = self.lake.merge(
            S.SOURCES,
            got.sources,
            meta=meta,
            changed="NOT (t.fingerprint <=> s.fingerprint) OR t.config_hash <> s.config_hash OR t.run_id <> s.run_id",
            delete_missing=True,
        )
        for table, df in (
            (S.QUERIES, read_queries(self.spark, self.cfg.dataset)),
            (S.QRELS, read_qrels(self.spark, self.cfg.dataset)),
            (S.GOLD_ANSWERS, read_answers(self.spark, self.cfg.dataset)),
        ):
            res.outputs[table.name] = self.lake.merge(table, df, meta=meta, delete_missing=True)
        res.rows = n_docs
        res.info = {"documents_in": n_docs + n_bad, "bronze": n_docs, "quarantined": n_bad, **got.stats}
        docs.unpersist()
        bad.unpersist()
        return self._finish(res, t0)

    def clean(self) -> StageResult:
        """bronze -> silver (normalized, exact-deduplicated), duplicates, quarantine (clean)."""
        t0 = time.perf_counter()
        res = StageResult("clean")
        bronze = self._read(S.BRONZE, res.inputs)
        meta = self._meta("clean", res.inputs)
        cleaned, bad = clean_documents(bronze, self.cfg.clean, self.run_id)
        cleaned = cleaned.cache()
        kept, dups = dedup_exact(cleaned, self.run_id)
        kept = kept.withColumn("run_id", F.lit(self.run_id))
        res.outputs["silver"] = self.lake.merge(
            S.SILVER,
            kept,
            meta=meta,
            changed="t.text_hash <> s.text_hash OR NOT (t.title <=> s.title)",
            delete_missing=True,
        )
        res.outputs["duplicates"] = self.lake.merge(
            S.DUPLICATES,
            dups,
            meta=meta,
            changed="t.duplicate_of <> s.duplicate_of",
            delete_missing="t.method = 'exact'",
        )
        res.outputs["quarantine"] = self.lake.merge(
            S.QUARANTINE, bad, meta=meta, changed="t.reason <> s.reason", delete_missing="t.stage = 'clean'"
        )
        n_in = bronze.count()
        n_kept = self.lake.read(S.SILVER, res.outputs["silver"]).count()
        n_dup = self.lake.read(S.DUPLICATES, res.outputs["duplicates"]).count()
        n_bad = self.lake.read(S.QUARANTINE, res.outputs["quarantine"]).where("stage = 'clean'").count()
        cleaned.unpersist()
        if n_in != n_kept + n_dup + n_bad:
            raise AccountingError(
                f"clean: {n_in} bronze rows != {n_kept} kept + {n_dup} duplicates + {n_bad} quarantined"
            )
        res.rows = n_kept
        res.info = {"bronze": n_in, "silver": n_kept, "duplicates": n_dup, "quarantined": n_bad}
        return self._finish(res, t0)

    def chunk(self) -> StageResult:
        """silver -> chunks (token windows of the embedding model's tokenizer)."""
        t0 = time.perf_counter()
        res = StageResult("chunk")
        silver = self._read(S.SILVER, res.inputs)
        meta = self._meta("chunk", res.inputs)
        tokenizer = self.cfg.chunk.tokenizer or resolve_encoder(self.cfg.embed.model)
        chunks = chunk_documents(silver, self.cfg.chunk, tokenizer, self.run_id)
        res.outputs["chunks"] = self.lake.merge(
            S.CHUNKS, chunks, meta=meta, changed="t.text_hash <> s.text_hash", delete_missing=True
        )
        written = self.lake.read(S.CHUNKS, res.outputs["chunks"])
        res.rows = written.count()
        keys = written.select("chunk_key").distinct().count()
        if keys != res.rows:
            raise RuntimeError(f"chunk: {res.rows - keys} chunk_key collisions among {res.rows} chunks")
        return self._finish(res, t0)

    def embed(self) -> StageResult:
        """chunks -> embeddings, with a Ray actor pool; only chunks without a current embedding are encoded."""
        from rag_spark.raycluster import embed_with_ray

        t0 = time.perf_counter()
        res = StageResult("embed")
        chunks = self._read(S.CHUNKS, res.inputs)
        mid = model_id(self.cfg.embed.model)
        existing = self.lake.read(S.EMBEDDINGS).where(F.col("model_id") == mid)
        todo = chunks.join(existing.select("chunk_id", "text_hash"), ["chunk_id", "text_hash"], "left_anti")
        todo = todo.select("chunk_id", "chunk_key", "title", "text", "text_hash")
        n_todo = todo.count()
        stale = existing.join(chunks.select("chunk_id"), "chunk_id", "left_anti").count()
        res.info = {"embedded": n_todo, "stale_removed": stale, "model_id": mid}
        if n_todo == 0 and stale == 0 and self.lake.exists(S.EMBEDDINGS):
            res.outputs["embeddings"] = self.lake.version(S.EMBEDDINGS) or 0
            log.info("embed: every chunk already has a %s embedding", mid)
            return self._finish(res, t0)
        with self._staged(todo, "embed") as (staged_in, staged_out):
            if n_todo:
                embed_with_ray(staged_in, staged_out, self.cfg, self.run_id)
                new = self.lake.read_staging(staged_out)
            else:
                new = self.spark.createDataFrame([], S.EMBEDDINGS.schema)
            # Source = new vectors + untouched current ones, so one MERGE also deletes vectors of removed chunks.
            keep = existing.join(todo.select("chunk_id"), "chunk_id", "left_anti").join(
                chunks.select("chunk_id"), "chunk_id", "left_semi"
            )
            source = new.select(*S.EMBEDDINGS.schema.fieldNames()).unionByName(
                keep.select(*S.EMBEDDINGS.schema.fieldNames())
            )
            res.outputs["embeddings"] = self.lake.merge(
                S.EMBEDDINGS,
                source,
                meta=self._meta("embed", res.inputs),
                changed="t.text_hash <> s.text_hash",
                delete_missing=f"t.model_id = '{mid}'",
            )
        res.rows = n_todo
        return self._finish(res, t0)

    def index(self) -> StageResult:
        """embeddings (this model) -> sharded FAISS index + manifest, published atomically."""
        from rag_spark.raycluster import build_index_with_ray

        t0 = time.perf_counter()
        res = StageResult("index")
        mid = model_id(self.cfg.embed.model)
        emb = self._read(S.EMBEDDINGS, res.inputs).where(F.col("model_id") == mid)
        n = self.cfg.index.shards
        staged = self.lake.staging_dir("index-in")
        emb.select("chunk_key", "vector", F.pmod(F.col("chunk_key"), F.lit(n)).cast("int").alias("shard")).repartition(
            n, "shard"
        ).write.partitionBy("shard").parquet(staged)
        try:
            manifest = build_index_with_ray(
                staged,
                emb,
                self.index_root,
                self.cfg,
                run_id=self.run_id,
                source_version=res.inputs["embeddings"],
                config_hash=self.cfg.stage_hash("index"),
            )
        finally:
            self.lake.drop_staging(staged)
        res.rows = manifest.ntotal
        res.info = {"build_id": manifest.build_id, "shards": [s.count for s in manifest.shards]}
        res.outputs[f"index:{manifest.build_id}"] = manifest.ntotal
        return self._finish(res, t0)

    def retrieve(self) -> StageResult:
        """queries -> retrievals: top-k documents per question, with the best chunk and the latency."""
        from rag_spark.embed.encoders import build_encoder
        from rag_spark.index.search import ShardedIndex
        from rag_spark.retrieve.dense import collapse_to_documents, search_queries

        t0 = time.perf_counter()
        res = StageResult("retrieve")
        queries = self._read(S.QUERIES, res.inputs).orderBy("query_id").collect()
        chunks = self._read(S.CHUNKS, res.inputs)
        encoder = build_encoder(self.cfg.embed)
        index = ShardedIndex(self.index_root, self.cfg.index)
        res.inputs[f"index:{index.manifest.build_id}"] = index.ntotal
        k = self.cfg.retrieve.k
        from rich.progress import track

        hits = list(
            search_queries(
                track([(r.query_id, r.text) for r in queries], description="retrieve", transient=True),
                encoder,
                index,
                k * self.cfg.retrieve.chunk_headroom,
            )
        )
        hits_df = self.spark.createDataFrame(
            pd.DataFrame(
                {
                    "query_id": [h.query_id for h in hits],
                    "chunk_rank": [h.chunk_rank for h in hits],
                    "chunk_key": np.array([h.chunk_key for h in hits], dtype=np.int64),
                    "score": [h.score for h in hits],
                    "latency_ms": [h.latency_ms for h in hits],
                }
            ),
            "query_id string, chunk_rank int, chunk_key long, score double, latency_ms double",
        )
        h = self.cfg.stage_hash("retrieve")
        docs = collapse_to_documents(hits_df, chunks, k).select(
            F.lit(h).alias("config_hash"), "*", F.lit(self.run_id).alias("run_id")
        )
        res.outputs["retrievals"] = self.lake.merge(
            S.RETRIEVALS, docs, meta=self._meta("retrieve", res.inputs), delete_missing=f"t.config_hash = '{h}'"
        )
        res.rows = len(queries)
        return self._finish(res, t0)

    def generate(self) -> StageResult:
        """retrievals + chunks + queries -> answers, with an actor pool of LLM engines (vLLM)."""
        from rag_spark.raycluster import generate_with_ray

        t0 = time.perf_counter()
        res = StageResult("generate")
        gcfg = self.cfg.generate
        h = self.cfg.stage_hash("generate")
        rh = self.cfg.stage_hash("retrieve")
        retrievals = self._read(S.RETRIEVALS, res.inputs).where(F.col("config_hash") == rh)
        chunks = self._read(S.CHUNKS, res.inputs)
        queries = self._read(S.QUERIES, res.inputs)
        if gcfg.backend == "none":
            res.info = {"skipped": "generate.backend=none"}
            return self._finish(res, t0)
        answered = self.lake.read(S.ANSWERS).where(F.col("config_hash") == h).select("query_id")
        ctx = (
            retrievals.where(F.col("rank") <= gcfg.context_chunks)
            .join(chunks.select("chunk_id", "title", "text"), "chunk_id")
            .withColumn("context_text", F.concat_ws("\n", F.coalesce("title", F.lit("")), "text"))
            .groupBy("query_id")
            .agg(F.sort_array(F.collect_list(F.struct("rank", "chunk_id", "context_text"))).alias("ctx"))
        )
        todo = (
            queries.join(answered, "query_id", "left_anti")
            .join(ctx, "query_id", "left")
            .select(
                "query_id",
                F.col("text").alias("question"),
                F.coalesce(F.col("ctx.chunk_id"), F.array().cast("array<string>")).alias("context_chunk_ids"),
                F.coalesce(F.col("ctx.context_text"), F.array().cast("array<string>")).alias("context_texts"),
            )
        )
        n_todo = todo.count()
        res.info = {"to_answer": n_todo}
        if n_todo == 0 and self.lake.exists(S.ANSWERS):
            res.outputs["answers"] = self.lake.version(S.ANSWERS) or 0
            return self._finish(res, t0)
        with self._staged(todo, "generate") as (staged_in, staged_out):
            generate_with_ray(staged_in, staged_out, self.cfg)
            new = self.lake.read_staging(staged_out).select(
                F.lit(h).alias("config_hash"), "*", F.lit(self.run_id).alias("run_id")
            )
            # Resumable: earlier answers of this config stay; only new questions are added.
            res.outputs["answers"] = self.lake.merge(S.ANSWERS, new, meta=self._meta("generate", res.inputs))
        res.rows = n_todo
        return self._finish(res, t0)

    def evaluate(self) -> StageResult:
        """retrievals + answers vs qrels + gold answers -> metrics, eval_details, metrics.json."""
        from rag_spark.evaluate.run import evaluate_run

        t0 = time.perf_counter()
        res = StageResult("evaluate")
        summary = evaluate_run(self, res)
        res.rows = int(summary["counts"]["queries"])
        self._finish(res, t0)
        summary["timings_s"]["evaluate"] = round(res.seconds, 3)
        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
        res.info = summary
        return res

    def report(self) -> StageResult:
        """Delta tables of this run -> one self-contained HTML report."""
        from rag_spark.report.assemble import assemble_inputs
        from rag_spark.report.html import write_report

        t0 = time.perf_counter()
        res = StageResult("report")
        inputs = assemble_inputs(self, res)
        path = write_report(inputs, Path(self.cfg.out) / "report.html")
        res.info = {"path": str(path)}
        res.rows = len(inputs.cases)
        return self._finish(res, t0)

    def run(self, stages: list[str] | None = None) -> dict[str, StageResult]:
        """Runs the given stages (default: all) in pipeline order."""
        for stage in stages or STAGES:
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        for stage in STAGES:
            if stages is None or stage in stages:
                log.info("== %s", stage)
                getattr(self, stage)()
        return self.results
