"""The Ray side of the pipeline: starting/joining Ray and running the stage callables on actor pools and tasks.

Data crosses between Spark and Ray as parquet folders staged in the lake (written and merged into Delta by
Spark, read and written by Ray workers in parallel), so neither side collects a table on its driver.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame

from rag_spark.config import PipelineConfig, RayConfig
from rag_spark.embed.models import model_id
from rag_spark.storage import arrow_location

log = logging.getLogger(__name__)

ACTOR_TASK_RETRIES = 3
"""Batch QA: times a generation actor is restarted, and a call retried on it, after the actor process died."""


def init_ray(cfg: RayConfig) -> None:
    """Connects to `cfg.address`, or starts a local Ray with an explicit CPU count (idempotent)."""
    import ray

    if ray.is_initialized():
        return
    # Workers must import rag_spark: in a source checkout, ship the project folder on the PYTHONPATH.
    project = str(Path(__file__).resolve().parent.parent)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))}}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=env, log_to_driver=True)
        return
    kwargs: dict[str, Any] = {
        "num_cpus": cfg.num_cpus or os.cpu_count() or 1,
        "include_dashboard": False,
        "runtime_env": env,
    }
    if cfg.object_store_memory_mb:
        kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
    ray.init(**kwargs)
    log.info("local Ray started with %s CPUs", kwargs["num_cpus"])


def _quiet_progress() -> None:
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("RAG_SPARK_PROGRESS", "1") == "1"
    ctx.verbose_progress = False


def map_with_actor_pool(
    staged_in: str,
    staged_out: str,
    fn: type,
    fn_kwargs: dict[str, Any],
    *,
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    batch_size: int,
    rows_per_block: int,
    column_types: dict[str, Any] | None = None,
) -> None:
    """Runs callable class `fn` over a staged parquet folder with a pool of `actors` actors (each builds `fn`
    once), and writes the outputs as parquet to `staged_out`.

    `column_types` (column name -> pyarrow type) fixes the type of output columns Ray infers per batch: a batch
    whose lists are all empty is otherwise written as `list<null>`, and Spark cannot read a folder whose files
    disagree (`PARQUET_COLUMN_DATA_TYPE_MISMATCH`)."""
    import ray

    _quiet_progress()
    # Ray's reader coalesces small files into one block; smaller blocks keep every actor busy.
    ds = ray.data.read_parquet(arrow_location(staged_in)).repartition(target_num_rows_per_block=rows_per_block)
    ds = ds.map_batches(
        fn,
        fn_constructor_kwargs=fn_kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
        # No max_restarts / max_task_retries here: Ray Data's actor pool already restarts a dead actor (OOM-killed,
        # node lost, SIGKILL) and retries its batch on the new one (max_restarts=-1, max_task_retries=-1), so every
        # row comes out exactly once (tests/test_faults.py); passing them through ray_remote_args is deprecated.
    )
    if column_types:
        cast = functools.partial(cast_columns, types=column_types)
        ds = ds.map_batches(cast, batch_format="pyarrow", batch_size=None)
    ds.write_parquet(arrow_location(staged_out))


def cast_columns(table: Any, types: dict[str, Any]) -> Any:
    """`table` (pyarrow) with each column named in `types` cast to that type (columns it lacks are left out)."""
    for name, typ in types.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, table.column(name).cast(typ))
    return table


def embed_with_ray(staged_in: str, staged_out: str, cfg: PipelineConfig, run_id: str) -> None:
    """Embeds the staged chunks with an actor pool (one model per actor) and writes parquet to `staged_out`."""
    from rag_spark.embed.ray_embed import EmbedBatch

    init_ray(cfg.ray)
    e = cfg.embed
    map_with_actor_pool(
        staged_in,
        staged_out,
        EmbedBatch,
        {"cfg": e, "run_id": run_id},
        actors=e.actors,
        cpus_per_actor=e.cpus_per_actor,
        gpus_per_actor=e.gpus_per_actor,
        # Each call encodes several encoder batches: sentence-transformers sorts a call's texts by length,
        # so bigger calls pad less.
        batch_size=e.batch_size * e.batches_per_call,
        rows_per_block=e.batch_size * e.batches_per_call,
    )


def build_index_with_ray(
    staged: str,
    embeddings: DataFrame,
    index_root: Path,
    cfg: PipelineConfig,
    *,
    run_id: str,
    source_version: int,
    config_hash: str,
) -> Any:
    """Trains once on a sample, builds every shard as a parallel Ray task, then publishes the manifest."""
    import ray

    from rag_spark.index.shards import empty_index, train_index, vectors_from_arrow

    init_ray(cfg.ray)
    icfg = cfg.index
    t0 = time.perf_counter()
    first = embeddings.select("dim", "normalized").first()
    if first is None:
        raise RuntimeError("index: the embeddings table holds no vector for this model; run the embed stage")
    dim, normalized = int(first["dim"]), bool(first["normalized"])
    sample = np.zeros((0, dim), dtype=np.float32)
    if not empty_index(icfg.factory, dim, icfg.metric).is_trained:
        total = embeddings.count()
        frac = min(1.0, icfg.train_sample / max(total, 1) * 1.2)
        rows = embeddings.sample(fraction=frac, seed=0).limit(icfg.train_sample).select("chunk_key", "vector")
        _, sample = vectors_from_arrow(rows.toArrow())
    trained = train_index(icfg.factory, dim, icfg.metric, sample)
    build_id = _new_build_id()
    build_dir = index_root / "builds" / build_id
    build_dir.mkdir(parents=True, exist_ok=True)
    trained_ref = ray.put(trained)
    task = ray.remote(num_cpus=0.5)(_build_shard_task)
    futures = [
        task.remote(trained_ref, f"{staged}/shard={i}", str(build_dir / f"shard-{i:03d}.faiss"))
        for i in range(icfg.shards)
    ]
    shards = ray.get(futures)
    return _publish_build(
        index_root,
        build_id,
        shards,
        embeddings,
        cfg,
        dim=dim,
        normalized=normalized,
        run_id=run_id,
        source_version=source_version,
        config_hash=config_hash,
        seconds=time.perf_counter() - t0,
        extra={"train_vectors": len(sample)},
    )


def update_index_with_ray(
    staged_added: str,
    removed: dict[int, np.ndarray],
    prev: Any,
    prev_dir: Path,
    embeddings: DataFrame,
    index_root: Path,
    cfg: PipelineConfig,
    *,
    run_id: str,
    source_version: int,
    config_hash: str,
) -> Any:
    """A new build from the published one: per shard (a Ray task each) removes `removed[shard]` ids and adds the
    staged vectors of that shard; published like a full build once every shard is written."""
    import ray

    from rag_spark.index.incremental import update_shard

    init_ray(cfg.ray)
    t0 = time.perf_counter()
    build_id = _new_build_id()
    build_dir = index_root / "builds" / build_id
    build_dir.mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=0.5)(update_shard)
    futures = [
        task.remote(
            str(prev_dir / info.file),
            info.sha256,
            f"{staged_added}/shard={i}",
            removed.get(i, np.zeros(0, dtype=np.int64)),
            str(build_dir / f"shard-{i:03d}.faiss"),
        )
        for i, info in enumerate(prev.shards)
    ]
    shards = ray.get(futures)
    n_removed = int(sum(len(v) for v in removed.values()))
    return _publish_build(
        index_root,
        build_id,
        shards,
        embeddings,
        cfg,
        dim=prev.dim,
        normalized=prev.normalized,
        run_id=run_id,
        source_version=source_version,
        config_hash=config_hash,
        seconds=time.perf_counter() - t0,
        extra={
            "incremental_from": prev.build_id,
            "removed": n_removed,
            "added": sum(s.count for s in shards) - prev.ntotal + n_removed,
            **{k: v for k, v in prev.extra.items() if k == "train_vectors"},
        },
    )


def _new_build_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _publish_build(
    index_root: Path,
    build_id: str,
    shards: list[Any],
    embeddings: DataFrame,
    cfg: PipelineConfig,
    *,
    dim: int,
    normalized: bool,
    run_id: str,
    source_version: int,
    config_hash: str,
    seconds: float,
    extra: dict[str, Any],
) -> Any:
    """Checks the shards hold exactly the embeddings' vectors, then writes the manifest and switches CURRENT."""
    from rag_spark.embed.models import encoder_sha256
    from rag_spark.index.manifest import Manifest, publish

    manifest = Manifest(
        build_id=build_id,
        factory=cfg.index.factory,
        metric=cfg.index.metric,
        dim=dim,
        model_id=model_id(cfg.embed.model),
        normalized=normalized,
        ntotal=sum(s.count for s in shards),
        shards=shards,
        source_table="embeddings",
        source_version=source_version,
        config_hash=config_hash,
        run_id=run_id,
        created_at=datetime.now(UTC).isoformat(),
        build_seconds=round(seconds, 3),
        extra=extra,
        model_sha256=encoder_sha256(cfg.embed),
    )
    expected = embeddings.count()
    if manifest.ntotal != expected:
        raise RuntimeError(f"index: shards hold {manifest.ntotal} vectors, embeddings has {expected}; not published")
    publish(index_root, manifest)
    log.info("published index %s: %d vectors in %d shards", build_id, manifest.ntotal, len(shards))
    return manifest


def _build_shard_task(trained: bytes, shard_dir: str, out_file: str) -> Any:
    from rag_spark.index.shards import build_shard

    return build_shard(trained, shard_dir, out_file)


def generate_with_ray(staged_in: str, staged_out: str, cfg: PipelineConfig) -> None:
    """Answers the staged questions with an actor pool of LLM engines and writes parquet to `staged_out`."""
    import pyarrow as pa

    from rag_spark.generate.ray_qa import AnswerBatch

    init_ray(cfg.ray)
    g = cfg.generate
    ids = pa.list_(pa.string())
    map_with_actor_pool(
        staged_in,
        staged_out,
        AnswerBatch,
        {"cfg": g},
        actors=g.actors,
        cpus_per_actor=g.cpus_per_actor,
        gpus_per_actor=g.gpus_per_actor,
        batch_size=g.batch_size,
        rows_per_block=g.batch_size,
        # A batch where no answer cites a chunk (the no-retrieval baseline never does) has all-empty lists.
        column_types={"cited_chunk_ids": ids, "context_chunk_ids": ids},
    )


class GenerationPool:
    """Long-lived Ray actors, one LLM engine each, for batch QA rounds (`Pipeline.qa`).

    Unlike `generate_with_ray` (one Ray Data pass over a staged folder, actors gone at the end), the actors live
    across rounds, so each engine loads once while the driver feeds bounded batches and merges each round's
    answers before reading the next. `submit` splits a round into `generate.batch_size` pieces spread over the
    actors (Ray queues calls per actor) and returns at once; `collect` waits and reassembles them in order.
    """

    def __init__(self, cfg: PipelineConfig) -> None:
        import ray

        from rag_spark.generate.ray_qa import AnswerBatch

        init_ray(cfg.ray)
        g = cfg.generate
        self._batch = g.batch_size
        # A killed engine (OOM killer, lost node) is restarted and its pending calls retried: answers are merged
        # on (config_hash, query_id), so a retried piece cannot duplicate a row.
        actor_cls = ray.remote(AnswerBatch).options(
            num_cpus=g.cpus_per_actor,
            num_gpus=g.gpus_per_actor or 0,
            max_restarts=ACTOR_TASK_RETRIES,
            max_task_retries=ACTOR_TASK_RETRIES,
        )
        self._actors: list[Any] = [actor_cls.remote(g) for _ in range(g.actors)]
        self._next = 0

    def submit(self, batch: dict[str, np.ndarray]) -> list[Any]:
        """Queues one round (columns of `AnswerBatch`'s input); returns the pending pieces."""
        n = len(batch["query_id"])
        refs = []
        for start in range(0, n, self._batch):
            piece = {k: v[start : start + self._batch] for k, v in batch.items()}
            actor = self._actors[self._next % len(self._actors)]
            self._next += 1
            refs.append(actor.answer.remote(piece))
        return refs

    @staticmethod
    def collect(refs: list[Any]) -> dict[str, np.ndarray]:
        """Waits for a round's pieces and concatenates their columns in submission order."""
        import ray

        parts = ray.get(refs)
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        """Stops the actors (and the engines they hold)."""
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def __enter__(self) -> GenerationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
