"""Builds the --py-files archive for spark-submit: dist/rag_spark.zip with the `rag_spark` package and
`jobs/_common.py` at the archive root (so `from _common import ...` works in a job whose main file is not next
to it, e.g. a driver in cluster deploy mode), sources only, in a stable order.

Usage: python cluster/spark/build_pyfiles.py [--out dist/rag_spark.zip]

Executors still need the third-party packages (pyarrow, numpy, ftfy, ...): the project's venv at the same path on
every node, or a packed venv shipped with --archives (cluster/spark/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def build(out: Path, root: Path = ROOT) -> list[str]:
    """Writes the archive atomically (temp file + rename) and returns the member names it holds."""
    package = root / "rag_spark"
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"{package}: not a Python package (no __init__.py)")
    members: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(dirpath) / name
            members.append((path, path.relative_to(root).as_posix()))
    members.append((root / "jobs" / "_common.py", "_common.py"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, arcname in members:
            zf.write(path, arcname)
    tmp.replace(out)
    return [arcname for _, arcname in members]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "dist" / "rag_spark.zip")
    args = p.parse_args(argv)
    names = build(args.out)
    print(f"{args.out}: {len(names)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
