"""The index manifest: what an index build contains, and the atomic `CURRENT` pointer readers follow."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CURRENT = "CURRENT"


@dataclass(frozen=True)
class ShardInfo:
    """One shard file of a build."""

    file: str
    count: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to trust and load a build, and where its vectors came from."""

    build_id: str
    factory: str
    metric: str
    dim: int
    model_id: str
    normalized: bool
    ntotal: int
    shards: list[ShardInfo]
    source_table: str
    source_version: int
    config_hash: str
    run_id: str
    created_at: str
    build_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    model_sha256: str = ""
    """sha256 of the encoder's files (`rag_spark.embed.models.encoder_sha256`); "" in builds made before it was
    recorded (then not checked)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Manifest:
        data = json.loads(text)
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        return Manifest(**data)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(index_root: Path, manifest: Manifest) -> Path:
    """Writes the build's manifest, then switches `CURRENT` to it in one rename."""
    build_dir = index_root / "builds" / manifest.build_id
    _atomic_write(build_dir / "manifest.json", manifest.to_json())
    _atomic_write(index_root / CURRENT, json.dumps({"build_id": manifest.build_id}) + "\n")
    return build_dir / "manifest.json"


def current_manifest(index_root: Path) -> tuple[Manifest, Path]:
    """The published manifest and its build folder.

    Raises:
        FileNotFoundError: if no build was ever published under `index_root`.
    """
    pointer = index_root / CURRENT
    if not pointer.is_file():
        raise FileNotFoundError(f"no published index under {index_root} (missing {CURRENT}); run the index stage")
    build_id = json.loads(pointer.read_text())["build_id"]
    build_dir = index_root / "builds" / build_id
    return Manifest.from_json((build_dir / "manifest.json").read_text()), build_dir
