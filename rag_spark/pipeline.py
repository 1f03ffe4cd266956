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
from rag_spark import storage
from rag_spark.clean.chunk import chunk_documents
from rag_spark.clean.dedup_exact import dedup_exact
from rag_spark.clean.dedup_minhash import dedup_near
from rag_spark.clean.normalize import clean_documents, language_counts, rule_counts
from rag_spark.config import PipelineConfig
from rag_spark.dedup import AccountingError, resolve_duplicates
from rag_spark.embed.models import chunk_tokenizer, model_id
from rag_spark.generate.prompts import context_text, context_text_column
from rag_spark.ingest.documents import PreviousIngest, collect
from rag_spark.ingest.qa import read_answers, read_qrels, read_queries
from rag_spark.ingest.state import describe
from rag_spark.lake import Lake

log = logging.getLogger(__name__)

STAGES = ["ingest", "clean", "chunk", "embed", "index", "retrieve", "generate", "evaluate", "report"]


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

    def __init__(
        self,
        cfg: PipelineConfig,
        spark: SparkSession | None = None,
        run_id: str | None = None,
        *,
        sweep_id: str | None = None,
        variant: str | None = None,
        full_refresh: bool = False,
    ) -> None:
        self.cfg = cfg.resolved()
        self.full_refresh = full_refresh
        """Ingest reads every source in full in this run (file fingerprints and stored watermarks ignored); the
        state it then stores is the starting point of the next incremental run."""
        self.run_id = run_id or new_run_id(cfg)
        self.sweep_id = sweep_id
        self.variant = variant
        """A sweep's id and this variant's name (recorded in the `runs` table), None outside a sweep."""
        self._spark = spark
        self._lake: Lake | None = None
        self.results: dict[str, StageResult] = {}
        self.reused: list[str] = []

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
        return storage.local_path(self.cfg.index_base, "index_dir") / model_id(self.cfg.embed.model)

    @property
    def bm25_root(self) -> Path:
        """BM25 builds, one folder per (settings, chunks version), beside the FAISS builds."""
        return storage.local_path(self.cfg.out, "out") / "index" / "bm25"

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
        incremental = self.cfg.ingest.incremental and not self.full_refresh
        if incremental and self.lake.exists(S.SOURCES) and self.lake.exists(S.BRONZE):
            # Read at fixed versions: the MERGE below rewrites the very tables the carried rows come from.
            previous = PreviousIngest(
                bronze=self.lake.read(S.BRONZE, self.lake.version(S.BRONZE)),
                quarantine=self.lake.read(S.QUARANTINE, self.lake.version(S.QUARANTINE)).where("stage = 'ingest'"),
                sources=self.lake.read(S.SOURCES, self.lake.version(S.SOURCES)),
                source_state=(
                    self.lake.read(S.SOURCE_STATE, self.lake.version(S.SOURCE_STATE))
                    if self.lake.exists(S.SOURCE_STATE)
                    else None
                ),
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
        # Only now that bronze committed: a crash before this line leaves the old watermarks, so the next run
        # reads those rows again (the MERGE absorbs them) instead of skipping them.
        assert got.source_state is not None
        res.outputs["source_state"] = self.lake.merge(S.SOURCE_STATE, got.source_state, meta=meta, delete_missing=True)
        for table, df in (
            (S.QUERIES, read_queries(self.spark, self.cfg.dataset)),
            (S.QRELS, read_qrels(self.spark, self.cfg.dataset)),
            (S.GOLD_ANSWERS, read_answers(self.spark, self.cfg.dataset)),
        ):
            res.outputs[table.name] = self.lake.merge(table, df, meta=meta, delete_missing=True)
        res.rows = n_docs
        res.info = {
            "documents_in": n_docs + n_bad,
            "bronze": n_docs,
            "quarantined": n_bad,
            **got.stats,
            "full_refresh": self.full_refresh,
            "sources": got.remote,
        }
        for line in map(describe, got.remote):
            log.info("ingest: %s", line)
        docs.unpersist()
        bad.unpersist()
        for frame in got.cached:
            frame.unpersist()
        return self._finish(res, t0)

    def clean(self) -> StageResult:
        """bronze -> silver (normalized, exact-deduplicated), duplicates, quarantine (clean)."""
        t0 = time.perf_counter()
        res = StageResult("clean")
        bronze = self._read(S.BRONZE, res.inputs)
        meta = self._meta("clean", res.inputs)
        cleaned, bad = clean_documents(bronze, self.cfg.clean, self.run_id)
        cleaned = cleaned.cache()
        rules = rule_counts(cleaned, bad)
        kept, dups = dedup_exact(cleaned, self.run_id)
        if self.cfg.clean.near_dedup.enabled:
            kept, near = dedup_near(kept, self.cfg.clean.near_dedup, self.run_id)
            dups = resolve_duplicates(dups, near)
        kept = kept.withColumn("run_id", F.lit(self.run_id))
        res.outputs["silver"] = self.lake.merge(
            S.SILVER,
            kept,
            meta=meta,
            changed="t.text_hash <> s.text_hash OR NOT (t.title <=> s.title) OR NOT (t.language <=> s.language)",
            delete_missing=True,
        )
        res.outputs["duplicates"] = self.lake.merge(
            S.DUPLICATES,
            dups,
            meta=meta,
            changed="t.duplicate_of <> s.duplicate_of OR t.method <> s.method OR t.similarity <> s.similarity",
            delete_missing=True,
        )
        res.outputs["quarantine"] = self.lake.merge(
            S.QUARANTINE, bad, meta=meta, changed="t.reason <> s.reason", delete_missing="t.stage = 'clean'"
        )
        n_in = bronze.count()
        silver = self.lake.read(S.SILVER, res.outputs["silver"])
        n_kept = silver.count()
        by_method = {
            r["method"]: int(r["count"])
            for r in self.lake.read(S.DUPLICATES, res.outputs["duplicates"]).groupBy("method").count().collect()
        }
        n_dup = sum(by_method.values())
        n_bad = self.lake.read(S.QUARANTINE, res.outputs["quarantine"]).where("stage = 'clean'").count()
        cleaned.unpersist()
        if n_in != n_kept + n_dup + n_bad:
            raise AccountingError(
                f"clean: {n_in} bronze rows != {n_kept} kept + {n_dup} duplicates + {n_bad} quarantined"
            )
        res.rows = n_kept
        res.info = {
            "bronze": n_in,
            "silver": n_kept,
            "duplicates": n_dup,
            "exact_duplicates": by_method.get("exact", 0),
            "near_duplicates": by_method.get("near", 0),
            "quarantined": n_bad,
            "rules": rules,
            "languages": language_counts(silver),
        }
        log.info("clean rules: %s; silver languages: %s", rules, res.info["languages"])
        return self._finish(res, t0)

    def chunk(self) -> StageResult:
        """silver -> chunks (token windows of the embedding model's tokenizer)."""
        t0 = time.perf_counter()
        res = StageResult("chunk")
        silver = self._read(S.SILVER, res.inputs)
        meta = self._meta("chunk", res.inputs)
        tokenizer = self.cfg.chunk.tokenizer or chunk_tokenizer(self.cfg.embed)
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
        # Staged sorted by length: every actor call then holds texts of similar length, so the encoder pads as
        # little as one global `encode` call (which sorts all its texts) would.
        with self._staged(todo.orderBy(F.length("text"), "chunk_id"), "embed") as (staged_in, staged_out):
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
        """embeddings (this model) -> sharded FAISS index + manifest, published atomically; with
        `index.backend` opensearch or milvus, the engine's index instead (`_index_external`).

        With `index.incremental`, the published build is updated with the embeddings changed since its source
        version (a new build folder; the old one keeps serving until the switch); unchanged input reuses it.
        """
        from rag_spark.index.incremental import rebuild_reason, supports_remove
        from rag_spark.index.manifest import current_manifest
        from rag_spark.raycluster import build_index_with_ray, update_index_with_ray

        t0 = time.perf_counter()
        res = StageResult("index")
        icfg = self.cfg.index
        mid = model_id(self.cfg.embed.model)
        emb = self._read(S.EMBEDDINGS, res.inputs).where(F.col("model_id") == mid)
        first = emb.select("dim").first()
        dim = int(first["dim"]) if first else 0
        if icfg.backend != "faiss":
            return self._index_external(res, t0, emb, mid, dim)
        try:
            prev, prev_dir = current_manifest(self.index_root)
        except FileNotFoundError:
            prev, prev_dir = None, None
        reason = rebuild_reason(prev, icfg, mid, dim)
        added = removed = old_keys = None
        if prev is not None and reason is None:
            try:
                old = self.lake.read(S.EMBEDDINGS, prev.source_version).where(F.col("model_id") == mid)
                old_keys = old.select("chunk_key", "text_hash").cache()
                old_keys.count()
            except Exception as err:  # time travel fails once the old version is vacuumed
                old_keys, reason = None, f"embeddings version {prev.source_version} unreadable ({type(err).__name__})"
            if old_keys is not None:
                added = emb.join(old_keys, ["chunk_key", "text_hash"], "left_anti")
                removed = old_keys.join(emb.select("chunk_key", "text_hash"), ["chunk_key", "text_hash"], "left_anti")
                n_add, n_rm = added.count(), removed.count()
                if n_add == 0 and n_rm == 0:
                    old_keys.unpersist()
                    log.info("index: build %s already holds embeddings v%s", prev.build_id, res.inputs["embeddings"])
                    res.rows, res.info = prev.ntotal, {"build_id": prev.build_id, "reused": True}
                    res.outputs[f"index:{prev.build_id}"] = prev.ntotal
                    return self._finish(res, t0)
                if n_rm and not supports_remove(icfg.factory):
                    reason = f"{n_rm} vectors to remove and {icfg.factory} cannot remove"
                elif n_add + n_rm > icfg.rebuild_fraction * max(prev.ntotal, 1):
                    reason = f"{n_add} added + {n_rm} removed > index.rebuild_fraction of {prev.ntotal}"
        n = icfg.shards
        shard_col = F.pmod(F.col("chunk_key"), F.lit(n)).cast("int").alias("shard")
        source = emb if reason is not None or added is None else added
        staged = self.lake.staging_dir("index-in")
        source.select("chunk_key", "vector", shard_col).repartition(n, "shard").write.partitionBy("shard").parquet(
            staged
        )
        common = {
            "run_id": self.run_id,
            "source_version": res.inputs["embeddings"],
            "config_hash": self.cfg.stage_hash("index"),
        }
        try:
            if reason is None and prev is not None and prev_dir is not None and removed is not None:
                by_shard: dict[int, list[int]] = {}
                for row in removed.select("chunk_key", shard_col).toLocalIterator():
                    by_shard.setdefault(int(row["shard"]), []).append(int(row["chunk_key"]))
                gone = {s: np.array(v, dtype=np.int64) for s, v in by_shard.items()}
                manifest = update_index_with_ray(
                    staged,
                    gone,
                    prev,
                    prev_dir,
                    emb,
                    self.index_root,
                    self.cfg,
                    **common,  # type: ignore[arg-type]
                )
            else:
                log.info("index: full build (%s)", reason)
                manifest = build_index_with_ray(staged, emb, self.index_root, self.cfg, **common)  # type: ignore[arg-type]
        finally:
            self.lake.drop_staging(staged)
            if old_keys is not None:
                old_keys.unpersist()
        res.rows = manifest.ntotal
        res.info = {
            "build_id": manifest.build_id,
            "shards": [s.count for s in manifest.shards],
            "mode": "full" if reason is not None else "incremental",
            "rebuild_reason": reason,
            **{k: v for k, v in manifest.extra.items() if k in ("added", "removed", "incremental_from")},
        }
        res.outputs[f"index:{manifest.build_id}"] = manifest.ntotal
        return self._finish(res, t0)

    def _index_external(self, res: StageResult, t0: float, emb: DataFrame, mid: str, dim: int) -> StageResult:
        """embeddings + chunks -> the OpenSearch/Milvus index of `index.backend` (rag_spark.index.backends.sync):
        the changed chunks are upserted and the removed ones deleted by id in the live build, or a new build is
        filled and swapped in behind the alias. The lineage row records the physical index and its count."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        from rag_spark.index.backends import COLUMNS, open_external, sync

        icfg = self.cfg.index
        if dim == 0:
            raise RuntimeError(f"index: the embeddings table holds no vector for {mid}; run the embed stage")
        chunks = self._read(S.CHUNKS, res.inputs)
        rows = emb.select("chunk_id", "chunk_key", "text_hash", "vector").join(
            chunks.select("chunk_id", "doc_id", "title", "text"), "chunk_id"
        )
        keys = {r.chunk_id: r.text_hash for r in emb.select("chunk_id", "text_hash").toLocalIterator()}

        def sample() -> list[str]:
            # OpenSearch's analyzer language is detected from a sample, read only when a new index is created.
            if icfg.backend != "opensearch":
                return []
            return [r.text for r in chunks.select("text").orderBy("chunk_id").limit(2000).collect()]

        batch_rows = icfg.milvus.batch_size if icfg.backend == "milvus" else icfg.opensearch.bulk_chunk * 4
        staged: list[str] = []  # staged on first use: an unchanged rerun writes nothing

        def batches(only: set[str] | None) -> Iterator[pa.Table]:
            if not staged:
                staged.append(self.lake.write_staging(rows.select(*COLUMNS), "index-ext-in"))
            fs, path = storage.arrow_filesystem(staged[0])  # staging may be on an object store
            ds = pads.dataset(path, filesystem=fs, format="parquet")
            flt = None if only is None else pc.field("chunk_id").isin(sorted(only))
            for b in ds.to_batches(batch_size=batch_rows, filter=flt):
                if b.num_rows:
                    yield pa.Table.from_batches([b]).select(COLUMNS)

        index = open_external(icfg, mid, self.cfg.index_base)
        try:
            report = sync(
                index,
                batches,
                keys,
                dim=dim,
                incremental=icfg.incremental,
                rebuild_fraction=icfg.rebuild_fraction,
                sample_texts=sample,
            )
            stats = index.stats()
        finally:
            index.close()
            for path in staged:
                self.lake.drop_staging(path)
        if stats.count != len(keys):
            raise RuntimeError(
                f"index: {icfg.backend} {stats.physical} holds {stats.count} chunks, the embeddings table {len(keys)}"
            )
        res.rows = stats.count
        res.info = {
            "backend": icfg.backend,
            "name": stats.name,
            "physical": report.physical,
            "mode": report.mode,
            "rebuild_reason": report.reason,
            "upserted": report.upserted,
            "deleted": report.deleted,
            "bytes": stats.bytes,
            "sync_seconds": round(report.seconds, 3),
        }
        res.outputs[f"{icfg.backend}:{report.physical}"] = stats.count
        return self._finish(res, t0)

    def _external_index(self, res: StageResult, encoder: Any) -> Any:
        """The live OpenSearch/Milvus build for retrieval, checked to be this model's (the physical name carries
        the settings hash: model, dim, metric, index settings); recorded as a stage input."""
        from rag_spark.index.backends import open_external
        from rag_spark.index.search import IndexIntegrityError

        icfg = self.cfg.index
        index = open_external(icfg, model_id(self.cfg.embed.model), self.cfg.index_base)
        live = index.live()
        if live is None:
            index.close()
            raise FileNotFoundError(f"{icfg.backend} has no build behind {index.name!r}; run the index stage")
        dim = int(encoder.encode_queries(["dimension"]).shape[1])
        if not live.startswith(index.prefix(dim)):
            index.close()
            raise IndexIntegrityError(
                f"{icfg.backend} build {live} was made with other settings or another model than "
                f"{index.prefix(dim)}* (embed.model={self.cfg.embed.model!r}); rerun the index stage"
            )
        res.inputs[f"{icfg.backend}:{live}"] = index.stats().count
        return index

    def retrieve(self) -> StageResult:
        """queries -> retrievals: top-k documents per question, with the best chunk and the latency."""
        from rich.progress import track

        from rag_spark.retrieve.dense import collapse_to_documents
        from rag_spark.retrieve.retrievers import search_queries

        t0 = time.perf_counter()
        res = StageResult("retrieve")
        queries = self._read(S.QUERIES, res.inputs).orderBy("query_id").collect()
        chunks = self._read(S.CHUNKS, res.inputs)
        k = self.cfg.retrieve.k
        with self._retriever(chunks, res) as retriever:
            hits = list(
                search_queries(
                    track([(r.query_id, r.text) for r in queries], description="retrieve", transient=True),
                    retriever,
                    k * self.cfg.retrieve.chunk_headroom,
                )
            )
        hits_df = self._hits_frame(hits)
        h = self.cfg.stage_hash("retrieve")
        docs = collapse_to_documents(hits_df, chunks, k).select(
            F.lit(h).alias("config_hash"), "*", F.lit(self.run_id).alias("run_id")
        )
        res.outputs["retrievals"] = self.lake.merge(
            S.RETRIEVALS, docs, meta=self._meta("retrieve", res.inputs), delete_missing=f"t.config_hash = '{h}'"
        )
        res.rows = len(queries)
        res.info = {"retriever": retriever.name}
        return self._finish(res, t0)

    @contextmanager
    def _retriever(self, chunks: DataFrame, res: StageResult) -> Iterator[Any]:
        """The configured retriever (see rag_spark.retrieve.retrievers); records the index builds it reads as
        stage inputs and closes a reranker's engine afterwards."""
        from rag_spark.embed.encoders import passage_text
        from rag_spark.retrieve.retrievers import (
            BM25Retriever,
            ChunkTexts,
            DenseRetriever,
            HybridRetriever,
            RerankedRetriever,
            Retriever,
        )

        rcfg = self.cfg.retrieve
        reranker: Any = None
        if rcfg.rerank.method != "none":
            from rag_spark.retrieve.rerank import build_reranker

            # Built first: a bad reranker setting (a model path that is not there) fails before any table is read
            reranker = build_reranker(rcfg.rerank, self.cfg.generate)
            assert reranker is not None
        external: Any = None
        try:
            # A reranker reads every chunk's text; read the table once for it and for a BM25 build that needs them
            def chunk_texts() -> Iterator[tuple[int, str]]:
                for r in chunks.select("chunk_key", "title", "text").toLocalIterator():
                    yield int(r.chunk_key), passage_text(r.title, r.text)

            texts = dict(chunk_texts()) if reranker is not None else None
            retriever: Retriever | None = None
            dense: Retriever | None = None
            lexical: Any = None
            backend = self.cfg.index.backend
            if rcfg.retriever in ("dense", "hybrid") or (backend == "opensearch" and rcfg.retriever == "bm25"):
                from rag_spark.embed.encoders import build_encoder

                encoder = build_encoder(self.cfg.embed)
                if backend == "faiss":
                    from rag_spark.index.search import ShardedIndex

                    index = ShardedIndex(self.index_root, self.cfg.index, self.cfg.embed)
                    res.inputs[f"index:{index.manifest.build_id}"] = index.ntotal
                    dense = DenseRetriever(encoder, index)
                else:
                    external = self._external_index(res, encoder)
                    dense = DenseRetriever(encoder, external)
            if backend == "opensearch" and rcfg.retriever in ("bm25", "hybrid"):
                from rag_spark.index.backends import OpenSearchBM25

                lexical = OpenSearchBM25(external)  # the engine's BM25 over the same index
            elif rcfg.retriever in ("bm25", "hybrid"):
                from rag_spark.retrieve.lexical import build_key, load_or_build

                source = f"{self.lake.path(S.CHUNKS)}@v{res.inputs['chunks']}"
                rows = iter(texts.items()) if texts is not None else chunk_texts()
                bm25 = load_or_build(self.bm25_root, rcfg.bm25, source, rows, {"run_id": self.run_id})
                res.inputs[f"bm25:{build_key(rcfg.bm25, source)}"] = bm25.ntotal
                lexical = BM25Retriever(bm25)
            if rcfg.retriever == "dense":
                retriever = dense
            elif rcfg.retriever == "bm25":
                retriever = lexical
            else:
                f = rcfg.fusion
                assert dense is not None and lexical is not None
                retriever = HybridRetriever(dense, lexical, f.method, f.dense_weight, f.rrf_k, f.depth)
            assert retriever is not None
            if reranker is not None:
                assert texts is not None
                retriever = RerankedRetriever(
                    retriever, reranker, ChunkTexts(texts), rcfg.rerank.top_n, rcfg.rerank.blend
                )
            yield retriever
        finally:
            close = getattr(reranker, "close", None)
            if close is not None:
                close()
            if external is not None:
                external.close()

    def _hits_frame(self, hits: list[Any]) -> DataFrame:
        """Chunk hits (`retrieve.dense.ChunkHit`) as a small Spark DataFrame."""
        return self.spark.createDataFrame(
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

    def generate(self) -> StageResult:
        """retrievals + chunks + queries -> answers, with an actor pool of LLM engines (vLLM).

        With `evaluate.no_retrieval_baseline`, the same generator also answers every question without context
        (`generate.no_retrieval`), under `PipelineConfig.baseline_hash`; answers already there are kept.
        """
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
        ctx = (
            retrievals.where(F.col("rank") <= gcfg.context_chunks)
            .join(chunks.select("chunk_id", "title", "text"), "chunk_id")
            .withColumn("context_text", context_text_column())
            .groupBy("query_id")
            .agg(F.sort_array(F.collect_list(F.struct("rank", "chunk_id", "context_text"))).alias("ctx"))
        )
        variants: list[tuple[str, DataFrame | None]] = [(h, ctx)]
        baseline = self.cfg.evaluate.no_retrieval_baseline and not gcfg.no_retrieval
        if baseline:
            variants.append((self.cfg.baseline_hash, None))
        counts = self._answer(res, queries, variants)
        res.info["to_answer"] = counts[h]
        if baseline:
            res.info["baseline_to_answer"] = counts[self.cfg.baseline_hash]
        if "answers" not in res.outputs and self.lake.exists(S.ANSWERS):
            res.outputs["answers"] = self.lake.version(S.ANSWERS) or 0
        res.rows = sum(counts.values())
        return self._finish(res, t0)

    def _answer(
        self, res: StageResult, queries: DataFrame, variants: list[tuple[str, DataFrame | None]]
    ) -> dict[str, int]:
        """Answers the questions that have no current answer under each variant's config hash, all in one pass of
        the actor pool (one engine load for the answers and the no-retrieval baseline); returns how many it answered
        per config hash.

        An answer is current when it was given the context the question has now: its `context_hash` equals the
        `prompts.context_fingerprint` of today's context (chunk ids and texts). After a document changes, or the
        retrieval does, the questions whose context changed are answered again (MERGE replaces their rows); the
        others are kept. Rows without a context_hash (lakes written before it existed) are answered again once.

        Args:
            res: The generate stage's result (its `answers` output version is updated; `info["context_changed"]`
                counts the re-answered questions).
            queries: query_id, text.
            variants: (config hash the answers are stored under, ctx) pairs; ctx holds query_id, ctx (sorted
                structs of rank, chunk_id, context_text), or is None to answer without context
                (`generate.no_retrieval`, the baseline).
        """
        from rag_spark.generate.prompts import context_fingerprint

        @F.pandas_udf("string")  # type: ignore[call-overload]
        def fingerprint(ids: pd.Series, texts: pd.Series) -> pd.Series:
            return pd.Series([context_fingerprint(list(i), list(t)) for i, t in zip(ids, texts, strict=True)])

        empty = F.array().cast("array<string>")
        todo: DataFrame | None = None
        for h, ctx in variants:
            stored = (
                self.lake.read(S.ANSWERS)
                .where(F.col("config_hash") == h)
                .select("query_id", F.col("context_hash").alias("_stored"))
            )
            part = queries
            ids = texts = empty
            if ctx is not None:
                part = part.join(ctx, "query_id", "left")
                ids, texts = F.coalesce(F.col("ctx.chunk_id"), empty), F.coalesce(F.col("ctx.context_text"), empty)
            part = (
                part.select(
                    "query_id",
                    F.col("text").alias("question"),
                    ids.alias("context_chunk_ids"),
                    texts.alias("context_texts"),
                    F.lit(ctx is None).alias("no_retrieval"),
                    F.lit(h).alias("config_hash"),
                )
                .withColumn("_fp", fingerprint("context_chunk_ids", "context_texts"))
                .join(stored, "query_id", "left")
                .where(F.col("_stored").isNull() | (F.col("_stored") != F.col("_fp")))
                .withColumn("_changed", F.col("_stored").isNotNull())
                .drop("_stored", "_fp")
            )
            todo = part if todo is None else todo.unionByName(part)
        assert todo is not None
        # Counted, then staged: cached so the context fingerprints are computed once.
        todo = todo.cache()
        try:
            counts = {h: 0 for h, _ in variants}
            changed = 0
            for r in todo.groupBy("config_hash", "_changed").count().collect():
                counts[r["config_hash"]] += int(r["count"])
                changed += int(r["count"]) if r["_changed"] else 0
            res.info["context_changed"] = changed
            if changed:
                log.info("generate: %d questions are answered again: their context changed", changed)
            if not any(counts.values()):
                return counts
            from rag_spark.raycluster import generate_with_ray

            with self._staged(todo.drop("_changed"), "generate") as (staged_in, staged_out):
                generate_with_ray(staged_in, staged_out, self.cfg)
                # config_hash came through the actors with each row (AnswerBatch passes extra columns on).
                new = self.lake.read_staging(staged_out).withColumn("run_id", F.lit(self.run_id))
                # Resumable: current answers of each config stay; new questions are added, stale ones replaced.
                res.outputs["answers"] = self.lake.merge(S.ANSWERS, new, meta=self._meta("generate", res.inputs))
            return counts
        finally:
            todo.unpersist()

    def qa(self, questions: str | None = None, limit: int | None = None) -> StageResult:
        """Batch QA: questions (a file, or the `queries` table) -> retrievals + answers, one bounded round at a time.

        The questions without an answer for this configuration are staged once as parquet (Spark, no collect),
        then read back `qa.batch_size` at a time: each round is retrieved on the driver (encoder + sharded index),
        answered by a pool of long-lived Ray actors (one engine each), and merged into `retrievals` and `answers`
        (one commit each) while the next round is being retrieved. A killed run loses at most the rounds in
        flight; a rerun answers only the questions still missing, and MERGE on (config_hash, query_id) keeps the
        table free of duplicates.

        Args:
            questions: A JSONL/TSV questions file (see `ingest.qa.read_question_file`); None uses `qa.questions`,
                and if that is None too, the `queries` table.
            limit: Answer at most this many new questions (None uses `qa.limit`: all of them).
        """
        import pyarrow.dataset as pads

        from rag_spark.ingest.qa import read_question_file
        from rag_spark.raycluster import GenerationPool
        from rag_spark.retrieve.dense import collapse_to_documents
        from rag_spark.retrieve.retrievers import search_queries

        t0 = time.perf_counter()
        res = StageResult("qa")
        gcfg, qcfg = self.cfg.generate, self.cfg.qa
        if gcfg.backend == "none":
            raise ValueError("qa: generate.backend is 'none'; choose 'auto', 'vllm' or 'llamacpp'")
        source = questions or qcfg.questions
        limit = limit or qcfg.limit
        if source:
            qdf = read_question_file(self.spark, source)
            res.info["questions"] = str(source)
        else:
            qdf = self._read(S.QUERIES, res.inputs)
            res.info["questions"] = "queries table"
        chunks = self._read(S.CHUNKS, res.inputs)
        h, rh = self.cfg.stage_hash("generate"), self.cfg.stage_hash("retrieve")
        answered = self.lake.read(S.ANSWERS).where(F.col("config_hash") == h).select("query_id")
        todo = qdf.join(answered, "query_id", "left_anti").orderBy("query_id")
        if limit:
            todo = todo.limit(limit)
        retriever_cm = self._retriever(chunks, res)
        retriever = retriever_cm.__enter__()
        k = self.cfg.retrieve.k
        meta = self._meta("generate", res.inputs)
        staged = self.lake.write_staging(todo.coalesce(1), "qa-in")
        rounds = answered_rows = 0

        def prepare(batch: Any) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
            """One round's retrievals (pandas) and the generator's input columns."""
            qids, texts = batch.column("query_id").to_pylist(), batch.column("text").to_pylist()
            hits = list(search_queries(zip(qids, texts, strict=True), retriever, k * self.cfg.retrieve.chunk_headroom))
            docs: pd.DataFrame = collapse_to_documents(self._hits_frame(hits), chunks, k).toPandas()  # type: ignore[assignment]
            top = docs[docs["rank"] <= gcfg.context_chunks].sort_values(["query_id", "rank"])
            wanted = sorted(set(top["chunk_id"]))
            texts_by_id: dict[str, str] = {}
            if wanted:
                for row in chunks.where(F.col("chunk_id").isin(wanted)).select("chunk_id", "title", "text").collect():
                    texts_by_id[row.chunk_id] = context_text(row.title, row.text)
            ctx_ids = {q: list(g["chunk_id"]) for q, g in top.groupby("query_id")}
            column = np.empty(len(qids), dtype=object)
            column_texts = np.empty(len(qids), dtype=object)
            for i, q in enumerate(qids):
                column[i] = ctx_ids.get(q, [])
                column_texts[i] = [texts_by_id[c] for c in column[i]]
            return docs, {
                "query_id": np.array(qids, dtype=object),
                "question": np.array(texts, dtype=object),
                "context_chunk_ids": column,
                "context_texts": column_texts,
            }

        def commit(docs: pd.DataFrame, refs: list[Any]) -> None:
            nonlocal rounds, answered_rows
            out = GenerationPool.collect(refs)
            if not docs.empty:
                rdf = self.spark.createDataFrame(docs.assign(config_hash=rh, run_id=self.run_id))
                res.outputs["retrievals"] = self.lake.merge(S.RETRIEVALS, rdf, meta=self._meta("retrieve", res.inputs))
            adf = pd.DataFrame({c: list(v) for c, v in out.items()}).assign(config_hash=h, run_id=self.run_id)
            adf = adf.astype({"tokens_in": "int32", "tokens_out": "int32", "latency_ms": "float64"})
            res.outputs["answers"] = self.lake.merge(
                S.ANSWERS, self.spark.createDataFrame(adf[S.ANSWERS.schema.fieldNames()], S.ANSWERS.schema), meta=meta
            )
            rounds += 1
            answered_rows += len(adf)
            log.info("qa: round %d merged, %d questions answered in this run", rounds, answered_rows)

        try:
            with GenerationPool(self.cfg) as pool:
                pending: tuple[pd.DataFrame, list[Any]] | None = None
                for batch in pads.dataset(storage.arrow_location(staged), format="parquet").to_batches(
                    batch_size=qcfg.batch_size
                ):
                    if batch.num_rows == 0:
                        continue
                    docs, inputs = prepare(batch)
                    refs = pool.submit(inputs)
                    if pending is not None:
                        commit(*pending)  # the previous round merges while this one generates
                    pending = (docs, refs)
                if pending is not None:
                    commit(*pending)
        finally:
            self.lake.drop_staging(staged)
            retriever_cm.__exit__(None, None, None)
        if "answers" not in res.outputs:
            res.outputs["answers"] = self.lake.version(S.ANSWERS) or 0
        res.rows = answered_rows
        res.info |= {"answered": answered_rows, "rounds": rounds}
        return self._finish(res, t0)

    def evaluate(self) -> StageResult:
        """retrievals + answers vs qrels + gold answers -> metrics, eval_details, metrics.json."""
        from rag_spark.evaluate.run import evaluate_run, record_run

        t0 = time.perf_counter()
        res = StageResult("evaluate")
        summary = evaluate_run(self, res)
        res.rows = int(summary["counts"]["queries"])
        summary["timings_s"]["evaluate"] = round(time.perf_counter() - t0, 3)
        res.outputs["runs"] = record_run(self, summary, self._meta("evaluate", res.inputs))
        self._finish(res, t0)
        out = storage.local_path(self.cfg.out, "out")
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
        path = write_report(inputs, storage.local_path(self.cfg.out, "out") / "report.html")
        res.info = {"path": str(path)}
        res.rows = len(inputs.cases)
        return self._finish(res, t0)

    def reusable(self, stage: str) -> bool:
        """Whether `stage`'s outputs in the lake are already those of this configuration.

        ingest..index: the latest lineage row of the stage (whoever wrote the stage's tables last) has this
        stage's config hash, which covers its own section and every upstream one. retrieve: `retrievals` holds
        every question under this config hash (retrievals are keyed by it, so other configurations never
        overwrite them). Later stages are never reused here (generate is incremental by itself). Reuse trusts the
        lake: files of the dataset edited since the last ingest are not looked at (a plain `run` re-reads them).
        """
        lake = self.lake
        h = self.cfg.stage_hash(stage)
        if stage in ("ingest", "clean", "chunk", "embed", "index"):
            if not lake.exists(S.LINEAGE):
                return False
            last = (
                lake.read(S.LINEAGE)
                .where(F.col("stage") == stage)
                .orderBy(F.col("finished_at").desc())
                .select("config_hash")
                .first()
            )
            if last is None or last["config_hash"] != h:
                return False
            if stage != "index":
                return True
            if self.cfg.index.backend == "faiss":
                return (self.index_root / "CURRENT").exists()
            from rag_spark.index.backends import open_external

            index = open_external(self.cfg.index, model_id(self.cfg.embed.model), self.cfg.index_base)
            try:
                return index.live() is not None
            finally:
                index.close()
        if stage == "retrieve":
            if not lake.exists(S.RETRIEVALS) or not lake.exists(S.QUERIES):
                return False
            done = lake.read(S.RETRIEVALS).where(F.col("config_hash") == h).select("query_id").distinct().count()
            return done > 0 and done == lake.read(S.QUERIES).count()
        return False

    def run(self, stages: list[str] | None = None, *, reuse: bool = False) -> dict[str, StageResult]:
        """Runs the given stages (default: all) in pipeline order.

        Args:
            stages: Subset of `STAGES`; None runs all.
            reuse: Skip the leading stages whose outputs are already this configuration's (`reusable`): a
                sweep variant that only changes `retrieve.k` starts at retrieve. Once a stage runs, every later
                one runs too. Skipped stages are listed in `self.reused`.
        """
        for stage in stages or STAGES:
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        self.reused = []
        skipping = reuse
        for stage in STAGES:
            if stages is None or stage in stages:
                if skipping and self.reusable(stage):
                    log.info("== %s: reused (outputs of config %s are current)", stage, self.cfg.stage_hash(stage))
                    self.reused.append(stage)
                    continue
                skipping = False
                log.info("== %s", stage)
                getattr(self, stage)()
        return self.results
