"""Debian's French documentation (four Debian packages) as a folder of HTML files with their headings.

It is training data for `train-retriever`'s section pairs (`train.section_docs`, `rag_spark.retrieve.sections`):
documentation about the same system as the demo's FAQ, written as headings over the text that answers them. It is
never part of the demo's corpus, and `train-retriever` drops any section that shares text with a held-out answer.

Layout::

    <out>/<package>/<file>.html   the package's French HTML pages, unchanged
    <out>/COPYRIGHT.txt           each package's copyright file, in full (not .md: the folder's Markdown is read)
    <out>/docs.json               packages, versions, and the sha256 of every other file

Packages (Debian main; DocBook or Sphinx HTML): `debian-reference-fr` (Debian Reference), `debian-handbook` (its
`fr-FR` pages only: the package holds 20 languages), `maint-guide-fr` (New Maintainers' Guide),
`developers-reference-fr` (Developer's Reference). Fetched with ``apt-get download`` + ``dpkg -x`` into the cache
like the FAQ (`rag_spark.data.debian_faq.extract_deb`); the folder is written next to its final place and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from rag_spark.data.debian_faq import deb_version, download_deb, extract_deb

logger = logging.getLogger(__name__)

# package -> (folder inside the package, file pattern)
PACKAGES: dict[str, tuple[str, str]] = {
    "debian-reference-fr": ("usr/share/debian-reference", "*.fr.html"),
    "debian-handbook": ("usr/share/doc/debian-handbook/html/fr-FR", "*.html"),
    "maint-guide-fr": ("usr/share/doc/maint-guide-fr/html", "*.fr.html"),
    "developers-reference-fr": ("usr/share/developers-reference/fr", "*.html"),
}


def prepare_debian_docs(out_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Writes the folder described in the module docstring; returns its `docs.json` content.

    An existing folder whose `docs.json` lists the same packages and versions is kept as it is.

    Raises:
        RuntimeError: A command failed (named with its stderr), or a package lacks its French pages.
    """
    out_dir, cache_dir = Path(out_dir), Path(cache_dir).resolve() / "debian-docs"
    cache_dir.mkdir(parents=True, exist_ok=True)
    debs = {pkg: download_deb(cache_dir, pkg) for pkg in PACKAGES}
    versions = {pkg: deb_version(deb) for pkg, deb in debs.items()}
    index = out_dir / "docs.json"
    if index.is_file():
        current = json.loads(index.read_text())
        if current.get("versions") == versions:
            logger.info("debian docs at %s are current (%s)", out_dir, versions)
            return dict(current)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files: dict[str, str] = {}
    notices = []
    for pkg, (inner, pattern) in PACKAGES.items():
        root = cache_dir / f"root-{pkg}"
        pages = sorted((root / inner).glob(pattern))
        if not pages:
            extract_deb(debs[pkg], root, inner, pattern)
            pages = sorted((root / inner).glob(pattern))
        (staging / pkg).mkdir()
        for page in pages:
            data = page.read_bytes()
            (staging / pkg / page.name).write_bytes(data)
            files[f"{pkg}/{page.name}"] = hashlib.sha256(data).hexdigest()
        copyright_file = root / "usr/share/doc" / pkg / "copyright"
        notice = copyright_file.read_text(errors="replace") if copyright_file.is_file() else "(no copyright file)"
        notices.append(f"==== {pkg} {versions[pkg] or ''} ====\n\n{notice.rstrip()}\n")
    license_md = "Licenses of these documents: each package's copyright file, in full.\n\n" + "\n".join(notices)
    (staging / "COPYRIGHT.txt").write_text(license_md)
    files["COPYRIGHT.txt"] = hashlib.sha256(license_md.encode()).hexdigest()
    info = {"packages": sorted(PACKAGES), "versions": versions, "files": files, "counts": {"pages": len(files) - 1}}
    (staging / "docs.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    logger.info("wrote %d pages of %s to %s", len(files) - 1, ", ".join(PACKAGES), out_dir)
    return info
