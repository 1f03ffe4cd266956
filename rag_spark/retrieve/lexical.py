"""Lexical retrieval: BM25 over the chunks table with a per-language analyzer, saved beside the FAISS builds.

Scoring and the sparse index are `bm25s` (Lucene's BM25 variant by default, scores precomputed into a CSC
matrix, saved as .npy/.json without pickle); stemming is Snowball through PyStemmer. The analyzer is ours
because it must be identical for chunks and questions and recorded with the build:

    lower case -> accents stripped (NFKD, combining marks dropped) -> \\w+ tokens of 2+ characters
    -> language stopwords removed -> Snowball stem

so "installé", "installer" and "Installation" meet, which French questions against French answers need.
`language: auto` picks the analyzer from the corpus itself (py3langid on a sample of chunks, majority vote).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from rag_spark.config import BM25Config

log = logging.getLogger(__name__)

# ISO 639-1 (what py3langid returns) -> Snowball stemmer / bm25s stopword list.
SNOWBALL = {
    "ar": "arabic",
    "ca": "catalan",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "eu": "basque",
    "fi": "finnish",
    "fr": "french",
    "hu": "hungarian",
    "id": "indonesian",
    "it": "italian",
    "lt": "lithuanian",
    "nl": "dutch",
    "no": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sv": "swedish",
    "tr": "turkish",
}
_TOKEN = re.compile(r"\w\w+")
_FORMAT = 1


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


@lru_cache(maxsize=32)
def _stopwords(language: str, strip: bool) -> frozenset[str]:
    import bm25s.stopwords as sw

    words = getattr(sw, f"STOPWORDS_{SNOWBALL.get(language, '').upper()}", ())
    return frozenset(strip_accents(w.lower()) if strip else w.lower() for w in words)


@dataclass(frozen=True)
class Analyzer:
    """How text becomes BM25 terms; stored with every build so questions are analyzed the same way."""

    language: str
    stem: bool = True
    stopwords: bool = True
    strip_accents: bool = True

    def __post_init__(self) -> None:
        if self.language not in SNOWBALL and self.language != "none":
            raise ValueError(
                f"retrieve.bm25.language={self.language!r}: no analyzer; use auto, none or one of {sorted(SNOWBALL)}"
            )

    @property
    def _stemmer(self):  # type: ignore[no-untyped-def]
        return _stemmer(SNOWBALL[self.language]) if self.stem and self.language in SNOWBALL else None

    def terms(self, text: str) -> list[str]:
        t = text.lower()
        if self.strip_accents:
            t = strip_accents(t)
        tokens = _TOKEN.findall(t)
        if self.stopwords and self.language in SNOWBALL:
            stop = _stopwords(self.language, self.strip_accents)
            tokens = [w for w in tokens if w not in stop]
        stemmer = self._stemmer
        return stemmer.stemWords(tokens) if stemmer is not None else tokens


@lru_cache(maxsize=8)
def _stemmer(name: str):  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer(name)


def detect_language(texts: Sequence[str], sample: int = 300, seed: int = 0) -> str:
    """The majority language of a seeded sample of `texts` (py3langid), as an ISO 639-1 code; "none" when the
    winner has no Snowball stemmer (the analyzer then only lower-cases and strips accents)."""
    import py3langid

    if not texts:
        return "none"
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(texts), size=min(sample, len(texts)), replace=False)
    votes = Counter(py3langid.classify(texts[i][:2000])[0] for i in idx if texts[i].strip())
    if not votes:
        return "none"
    lang, n = votes.most_common(1)[0]
    log.info("bm25: corpus language %s (%d of %d sampled chunks)", lang, n, sum(votes.values()))
    return lang if lang in SNOWBALL else "none"


def analyzer_for(cfg: BM25Config, texts: Sequence[str]) -> Analyzer:
    language = detect_language(texts) if cfg.language == "auto" else cfg.language
    return Analyzer(language, stem=cfg.stem, stopwords=cfg.stopwords, strip_accents=cfg.strip_accents)


def build_key(cfg: BM25Config, source: str) -> str:
    """The folder name of a build: the BM25 settings + what the chunks were (table path and version)."""
    payload = json.dumps({"cfg": cfg.model_dump(mode="json"), "source": source, "format": _FORMAT}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class BM25Index:
    """A BM25 build: the bm25s index, the chunk key of each row, and the analyzer that made it."""

    def __init__(self, model, keys: np.ndarray, analyzer: Analyzer, meta: dict) -> None:  # type: ignore[no-untyped-def]
        self.model = model
        self.keys = keys
        self.analyzer = analyzer
        self.meta = meta

    @property
    def ntotal(self) -> int:
        return len(self.keys)

    @staticmethod
    def build(keys: Sequence[int], texts: Sequence[str], cfg: BM25Config) -> BM25Index:
        import bm25s

        t0 = time.perf_counter()
        analyzer = analyzer_for(cfg, texts)
        corpus = [analyzer.terms(t) for t in texts]
        model = bm25s.BM25(k1=cfg.k1, b=cfg.b, method=cfg.method)
        # bm25s refuses an empty vocabulary; a corpus of stopwords only still gets a (useless) valid index.
        model.index([c or ["\x00"] for c in corpus], show_progress=False)
        seconds = time.perf_counter() - t0
        meta = {"analyzer": asdict(analyzer), "n": len(keys), "build_seconds": round(seconds, 3), "format": _FORMAT}
        log.info("bm25: %d chunks indexed in %.1f s (%s)", len(keys), seconds, analyzer)
        return BM25Index(model, np.asarray(keys, dtype=np.int64), analyzer, meta)

    def search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`n` (chunk keys, scores) for one question; empty when no term of it is in the corpus."""
        terms = [t for t in self.analyzer.terms(text) if t in self.model.vocab_dict]
        if not terms or self.ntotal == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        rows, scores = self.model.retrieve([terms], k=min(n, self.ntotal), show_progress=False, n_threads=1)
        rows, scores = rows[0], scores[0]
        keep = scores > 0  # rows with no query term score 0: not matches
        return self.keys[rows[keep]], scores[keep].astype(np.float32)

    def save(self, folder: Path, extra: dict | None = None) -> Path:
        """Writes the build into `folder` atomically (a temporary sibling renamed into place)."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            self.model.save(str(tmp), show_progress=False)
            np.save(tmp / "chunk_keys.npy", self.keys, allow_pickle=False)
            meta = {**self.meta, **(extra or {})}
            meta["sha256"] = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / "bm25.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @staticmethod
    def load(folder: Path) -> BM25Index:
        """Loads a saved build, checking every file against the checksums written with it.

        Raises:
            FileNotFoundError: no complete build in `folder`.
            ValueError: a file changed since the build was written.
        """
        import bm25s

        meta_path = folder / "bm25.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no BM25 build in {folder} (bm25.json missing)")
        meta = json.loads(meta_path.read_text())
        for name, digest in meta.get("sha256", {}).items():
            if _sha256(folder / name) != digest:
                raise ValueError(f"BM25 build {folder}: {name} does not match its checksum in bm25.json")
        model = bm25s.BM25.load(str(folder), allow_pickle=False)
        keys = np.load(folder / "chunk_keys.npy", allow_pickle=False)
        return BM25Index(model, keys, Analyzer(**meta["analyzer"]), meta)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_or_build(
    root: Path, cfg: BM25Config, source: str, rows: Iterable[tuple[int, str]], extra: dict | None = None
) -> BM25Index:
    """The build for (`cfg`, `source`) under `root`, built from `rows` (chunk key, text) when absent.

    `rows` is only consumed on a build, so callers pass a lazy iterator over the chunks table.
    """
    folder = root / build_key(cfg, source)
    try:
        index = BM25Index.load(folder)
        log.info("bm25: reusing build %s", folder)
        return index
    except FileNotFoundError:
        pass
    keys, texts = [], []
    for key, text in rows:
        keys.append(key)
        texts.append(text)
    index = BM25Index.build(keys, texts, cfg)
    index.save(folder, {"source": source, **(extra or {})})
    return index
