"""Names and Spark schemas of every Delta table the pipeline writes, and the keys they are merged on."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


def _s(*fields: tuple[str, object, bool]) -> StructType:
    return StructType([StructField(n, t, nullable) for n, t, nullable in fields])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Table:
    """A Delta table of the lake: its folder name, schema and merge key."""

    name: str
    schema: StructType
    key: tuple[str, ...]


BRONZE = Table(
    "bronze",
    _s(
        ("doc_id", StringType(), False),
        ("source_uri", StringType(), False),
        ("format", StringType(), False),
        ("title", StringType(), True),
        ("raw_text", StringType(), False),
        ("content_hash", StringType(), False),
        ("size_bytes", LongType(), False),
        ("run_id", StringType(), False),
    ),
    ("doc_id",),
)

# One row per ingested source (file, database table/query, API): what the next run compares to skip unchanged
# files. fingerprint = "size:modification-ms" for files; None for databases and APIs (always read again).
SOURCES = Table(
    "sources",
    _s(
        ("source_uri", StringType(), False),
        ("kind", StringType(), False),
        ("fingerprint", StringType(), True),
        ("size_bytes", LongType(), True),
        ("modified", TimestampType(), True),
        ("config_hash", StringType(), False),
        ("run_id", StringType(), False),
    ),
    ("source_uri",),
)

# One row per database/API source: how the last run read it and where the next incremental read starts.
# identity_hash covers what decides which rows and how they map (url, table/query, columns/fields): a changed
# definition resets the source to a full read. watermark is text in a canonical form of watermark_type (a Spark
# type for JDBC columns, "number"/"string" for API fields); etag/last_modified answer the request named by
# validators_for (sha1 of the first page's URL). Written only after bronze's MERGE committed.
SOURCE_STATE = Table(
    "source_state",
    _s(
        ("source_name", StringType(), False),
        ("kind", StringType(), False),
        ("source_uri", StringType(), False),
        ("identity_hash", StringType(), False),
        ("watermark", StringType(), True),
        ("watermark_type", StringType(), True),
        ("etag", StringType(), True),
        ("last_modified", StringType(), True),
        ("validators_for", StringType(), True),
        ("read_mode", StringType(), False),
        ("read_from", StringType(), True),
        ("rows_read", LongType(), False),
        ("run_id", StringType(), False),
        ("updated_at", TimestampType(), False),
    ),
    ("source_name",),
)

QUARANTINE = Table(
    "quarantine",
    _s(
        ("stage", StringType(), False),
        ("source_uri", StringType(), False),
        ("record_id", StringType(), False),
        ("reason", StringType(), False),
        ("detail", StringType(), True),
        ("snippet", StringType(), True),
        ("run_id", StringType(), False),
    ),
    ("stage", "source_uri", "record_id"),
)

SILVER = Table(
    "silver",
    _s(
        ("doc_id", StringType(), False),
        ("source_uri", StringType(), False),
        ("format", StringType(), False),
        ("title", StringType(), True),
        ("text", StringType(), False),
        ("text_hash", StringType(), False),
        ("n_chars", IntegerType(), False),
        ("run_id", StringType(), False),
        # Added after the first release: nullable, so older lakes gain them on their next write (Lake.merge).
        ("language", StringType(), True),
        ("language_prob", DoubleType(), True),
    ),
    ("doc_id",),
)

DUPLICATES = Table(
    "duplicates",
    _s(
        ("doc_id", StringType(), False),
        ("duplicate_of", StringType(), False),
        ("similarity", DoubleType(), False),
        ("method", StringType(), False),
        ("run_id", StringType(), False),
    ),
    ("doc_id",),
)

CHUNKS = Table(
    "chunks",
    _s(
        ("chunk_id", StringType(), False),
        ("chunk_key", LongType(), False),
        ("doc_id", StringType(), False),
        ("chunk_index", IntegerType(), False),
        ("title", StringType(), True),
        ("text", StringType(), False),
        ("text_hash", StringType(), False),
        ("n_tokens", IntegerType(), False),
        ("start_char", IntegerType(), False),
        ("end_char", IntegerType(), False),
        ("run_id", StringType(), False),
    ),
    ("chunk_id",),
)

EMBEDDINGS = Table(
    "embeddings",
    _s(
        ("chunk_id", StringType(), False),
        ("chunk_key", LongType(), False),
        ("model_id", StringType(), False),
        ("text_hash", StringType(), False),
        ("vector", ArrayType(FloatType()), False),
        ("dim", IntegerType(), False),
        ("normalized", BooleanType(), False),
        ("run_id", StringType(), False),
    ),
    ("chunk_id", "model_id"),
)

QUERIES = Table(
    "queries",
    _s(("query_id", StringType(), False), ("text", StringType(), False)),
    ("query_id",),
)

QRELS = Table(
    "qrels",
    _s(("query_id", StringType(), False), ("doc_id", StringType(), False), ("score", IntegerType(), False)),
    ("query_id", "doc_id"),
)

GOLD_ANSWERS = Table(
    "gold_answers",
    _s(("query_id", StringType(), False), ("answer", StringType(), False)),
    ("query_id",),
)

RETRIEVALS = Table(
    "retrievals",
    _s(
        ("config_hash", StringType(), False),
        ("query_id", StringType(), False),
        ("rank", IntegerType(), False),
        ("doc_id", StringType(), False),
        ("chunk_id", StringType(), False),
        ("score", DoubleType(), False),
        ("latency_ms", DoubleType(), False),
        ("run_id", StringType(), False),
    ),
    ("config_hash", "query_id", "rank"),
)

ANSWERS = Table(
    "answers",
    _s(
        ("config_hash", StringType(), False),
        ("query_id", StringType(), False),
        ("answer", StringType(), False),
        ("cited_chunk_ids", ArrayType(StringType()), False),
        ("context_chunk_ids", ArrayType(StringType()), False),
        ("prompt_hash", StringType(), False),
        ("model_id", StringType(), False),
        ("tokens_in", IntegerType(), False),
        ("tokens_out", IntegerType(), False),
        ("latency_ms", DoubleType(), False),
        ("run_id", StringType(), False),
        # prompts.context_fingerprint of the context given; null in lakes written before it existed.
        ("context_hash", StringType(), True),
    ),
    ("config_hash", "query_id"),
)

METRICS = Table(
    "metrics",
    _s(
        ("run_id", StringType(), False),
        ("config_hash", StringType(), False),
        ("scope", StringType(), False),
        ("name", StringType(), False),
        ("value", DoubleType(), True),
    ),
    ("run_id", "scope", "name"),
)

EVAL_DETAILS = Table(
    "eval_details",
    _s(
        ("run_id", StringType(), False),
        ("config_hash", StringType(), False),
        ("query_id", StringType(), False),
        ("metric", StringType(), False),
        ("value", DoubleType(), True),
    ),
    ("run_id", "query_id", "metric"),
)

LINEAGE = Table(
    "lineage",
    _s(
        ("run_id", StringType(), False),
        ("stage", StringType(), False),
        ("config_hash", StringType(), False),
        ("inputs", MapType(StringType(), LongType(), False), False),
        ("outputs", MapType(StringType(), LongType(), False), False),
        ("rows", LongType(), False),
        ("seconds", DoubleType(), False),
        ("finished_at", TimestampType(), False),
    ),
    ("run_id", "stage"),
)

# Questions the LLM wrote for sampled chunks (train-retriever): seeded, so a rerun reuses them; an empty question
# marks an output that was no usable question (kept so the rerun does not ask again).
SYNTHETIC_QUESTIONS = Table(
    "synthetic_questions",
    _s(
        ("chunk_id", StringType(), False),
        ("doc_id", StringType(), False),
        ("question", StringType(), False),
        ("model_id", StringType(), False),
        ("seed", IntegerType(), False),
        ("prompt_hash", StringType(), False),
        ("run_id", StringType(), False),
    ),
    ("chunk_id", "model_id", "seed"),
)

# Sections (heading over its own text) that train-retriever read from `train.section_docs`, documentation outside
# the corpus: the passages of its `section` training pairs, whose positive/negative ids are these section ids.
TRAIN_SECTIONS = Table(
    "train_sections",
    _s(
        ("section_id", StringType(), False),
        ("root", StringType(), False),
        ("source", StringType(), False),
        ("heading", StringType(), False),
        ("text", StringType(), False),
        ("run_id", StringType(), False),
    ),
    ("section_id",),
)

# The (question, positive chunk, hard negatives) triples a retriever model was fine-tuned on, per model name.
# For pairs of source `section` the ids are `train_sections.section_id`s, for the others `chunks.chunk_id`s.
TRAINING_PAIRS = Table(
    "training_pairs",
    _s(
        ("model_name", StringType(), False),
        ("pair_id", StringType(), False),
        ("source", StringType(), False),
        ("query_id", StringType(), True),
        ("question", StringType(), False),
        ("positive_chunk_id", StringType(), False),
        ("negative_chunk_ids", ArrayType(StringType()), False),
        ("run_id", StringType(), False),
    ),
    ("model_name", "pair_id"),
)

# One row per evaluated run: its full configuration and metrics.json summary, so `rag-spark report --run RUN_ID`
# rebuilds a report from the lake alone; sweep_id/variant group the runs of one `rag-spark sweep`.
RUNS = Table(
    "runs",
    _s(
        ("run_id", StringType(), False),
        ("config_hash", StringType(), False),
        ("config_yaml", StringType(), False),
        ("summary_json", StringType(), False),
        ("sweep_id", StringType(), True),
        ("variant", StringType(), True),
        ("finished_at", TimestampType(), False),
    ),
    ("run_id",),
)

ALL_TABLES = [
    BRONZE,
    SOURCES,
    SOURCE_STATE,
    QUARANTINE,
    SILVER,
    DUPLICATES,
    CHUNKS,
    EMBEDDINGS,
    QUERIES,
    QRELS,
    GOLD_ANSWERS,
    RETRIEVALS,
    ANSWERS,
    METRICS,
    EVAL_DETAILS,
    LINEAGE,
    SYNTHETIC_QUESTIONS,
    TRAIN_SECTIONS,
    TRAINING_PAIRS,
    RUNS,
]
