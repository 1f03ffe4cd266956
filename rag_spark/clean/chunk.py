"""silver -> chunks: windows of `size_tokens` tokens with `overlap_tokens` overlap, cut at token offsets of the
embedding model's tokenizer so a chunk never exceeds what the encoder reads. Chunk ids are stable:
`<doc_id>#<index>`, and `chunk_key` (a 60-bit integer from its SHA-256) is the FAISS id."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from rag_spark.config import ChunkConfig

_CHUNK_ROWS = StructType(
    [
        StructField("doc_id", StringType(), False),
        StructField("title", StringType(), True),
        StructField("chunk_index", IntegerType(), False),
        StructField("text", StringType(), False),
        StructField("n_tokens", IntegerType(), False),
        StructField("start_char", IntegerType(), False),
        StructField("end_char", IntegerType(), False),
    ]
)


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> Any:
    """A fast Hugging Face tokenizer (offsets needed), loaded once per Python worker."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    tok.model_max_length = 10**9  # we window long documents ourselves; silence the length warning
    return tok


def split_tokens(text: str, tokenizer: Any, size: int, overlap: int) -> list[tuple[int, int, int]]:
    """Token windows of one text as (start_char, end_char, n_tokens); consecutive windows share `overlap` tokens."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n = len(offsets)
    if n == 0:
        return [(0, len(text), 0)] if text.strip() else []
    step = size - overlap
    out = []
    start = 0
    while True:
        end = min(start + size, n)
        out.append((offsets[start][0], offsets[end - 1][1], end - start))
        if end == n:
            return out
        start += step


def chunk_documents(silver: DataFrame, cfg: ChunkConfig, tokenizer_path: str, run_id: str) -> DataFrame:
    """Splits every silver document into token windows; returns rows of the `chunks` table."""
    size, overlap = cfg.size_tokens, cfg.overlap_tokens

    def split(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        tok = load_tokenizer(tokenizer_path)
        for pdf in batches:
            rows = []
            for doc_id, title, text in zip(pdf["doc_id"], pdf["title"], pdf["text"], strict=True):
                for i, (s, e, n) in enumerate(split_tokens(text, tok, size, overlap)):
                    rows.append((doc_id, title, i, text[s:e], n, s, e))
            yield pd.DataFrame(rows, columns=[f.name for f in _CHUNK_ROWS.fields])

    chunks = silver.select("doc_id", "title", "text").mapInPandas(split, _CHUNK_ROWS)
    chunk_id = F.concat_ws("#", "doc_id", F.lpad(F.col("chunk_index").cast("string"), 4, "0"))
    return chunks.select(
        chunk_id.alias("chunk_id"),
        F.conv(F.substring(F.sha2(chunk_id, 256), 1, 15), 16, 10).cast("long").alias("chunk_key"),
        "doc_id",
        "chunk_index",
        "title",
        "text",
        F.sha2(F.concat_ws("\u0000", F.coalesce("title", F.lit("")), "text"), 256).alias("text_hash"),
        "n_tokens",
        "start_char",
        "end_char",
        F.lit(run_id).alias("run_id"),
    )
