"""Encoders behind one Protocol. The sentence-transformers one runs any model folder or name, on CUDA (fp16)
when present, else on the CPU."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from rag_spark.config import EmbedConfig
from rag_spark.embed.models import model_id, resolve_encoder

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """Turns texts into float32 vectors of a fixed dimension."""

    model_id: str
    dim: int
    normalized: bool

    def encode_passages(self, texts: list[str]) -> np.ndarray: ...

    def encode_queries(self, texts: list[str]) -> np.ndarray: ...


def pick_device(requested: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded once; fp16 on CUDA."""

    def __init__(self, cfg: EmbedConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg
        self.device = pick_device(cfg.device)
        path = resolve_encoder(cfg.model)
        log.info("loading encoder %s on %s", path, self.device)
        self.model = SentenceTransformer(path, device=self.device)
        if self.device == "cuda":
            self.model.half()
        self.model_id = model_id(cfg.model)
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"embed.model={cfg.model!r}: the model does not declare an embedding dimension")
        self.dim = int(dim)
        self.normalized = cfg.normalize

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(
            texts,
            batch_size=self.cfg.batch_size,
            normalize_embeddings=self.cfg.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.cfg.passage_prefix + t for t in texts])

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.cfg.query_prefix + t for t in texts])


def build_encoder(cfg: EmbedConfig) -> Encoder:
    """The encoder named by `cfg.backend`."""
    if cfg.backend == "sentence-transformers":
        return SentenceTransformerEncoder(cfg)
    raise ValueError(f"embed.backend={cfg.backend!r} is not supported")


def passage_text(title: str | None, text: str) -> str:
    """What the encoder reads for a chunk: its document title, then its text."""
    return f"{title}\n{text}" if title else text
