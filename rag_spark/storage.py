"""Storage locations as URIs: a plain local path (the default), `file:///...`, or an object store (`s3://`,
`s3a://`, `gs://`, `abfss://`...).

Spark reads and writes every scheme its Hadoop connectors know; the Ray side (pyarrow) knows `s3://`, `gs://` and
`abfs(s)://` but not Hadoop's `s3a://`, so `arrow_location` maps it. Paths are joined as strings: `pathlib` would
collapse the `//` of `file:///tmp/x` and `s3://bucket`. Folders that must be on a POSIX file system (the FAISS
index, the report) go through `local_path`, which accepts a plain path or a `file:` URI and names the setting
otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# Hadoop's names for S3 that pyarrow does not know; both mean the same bucket and key.
_ARROW_SCHEMES = {"s3a": "s3", "s3n": "s3"}


def scheme(location: str) -> str | None:
    """The URI scheme (`s3a`, `file`...) in lower case, or None for a plain path."""
    m = _SCHEME.match(location)
    # "C:" is a Windows drive, not a scheme; a scheme is followed by "//" or, for file:, by "/".
    if m is None or len(m.group(1)) == 1 or not location[m.end() :].startswith("/"):
        return None
    return m.group(1).lower()


def is_remote(location: str) -> bool:
    """True for locations that are not on the local file system (any scheme but `file`)."""
    return scheme(location) not in (None, "file")


def join(base: str, *parts: str) -> str:
    """Joins path segments onto a path or URI with "/" (keeps `scheme://` intact; no `..` resolution)."""
    out = base.rstrip("/")  # "/" becomes "", so joining "x" gives "/x"
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out or base


def local_path(location: str, setting: str = "path") -> Path:
    """A plain path or `file:` URI as a `Path`; any other scheme is refused with the setting's name.

    Raises:
        ValueError: `location` is on an object store (mount it, e.g. with a CSI driver or s3fs-fuse, and give
            the mount point instead).
    """
    s = scheme(location)
    if s is None:
        return Path(location)
    if s == "file":
        rest = location[len("file:") :]
        if rest.startswith("//"):
            rest = rest[2:]
            host, _, rest = rest.partition("/")
            if host not in ("", "localhost"):
                raise ValueError(f"{setting}: {location!r} names host {host!r}; file: URIs must be local")
            rest = "/" + rest
        return Path(rest)
    raise ValueError(
        f"{setting}: {location!r} is on an object store ({s}://); this output needs a POSIX path: give a local "
        "or mounted folder (e.g. a shared volume)"
    )


def arrow_location(location: str) -> str:
    """The location as pyarrow (and so Ray Data) spells it: `s3a://b/k` -> `s3://b/k`; others unchanged."""
    s = scheme(location)
    if s in _ARROW_SCHEMES:
        return _ARROW_SCHEMES[s] + location[len(s) :]
    return location


def arrow_filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for a path or URI."""
    import pyarrow.fs as pafs

    if scheme(location) is None:
        return pafs.LocalFileSystem(), str(Path(location).absolute())
    fs, path = pafs.FileSystem.from_uri(arrow_location(location))
    return fs, path


def exists(location: str) -> bool:
    """Whether a file or folder exists at a path or URI (through pyarrow's file systems)."""
    import pyarrow.fs as pafs

    fs, path = arrow_filesystem(location)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)
