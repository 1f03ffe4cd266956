"""Bytes -> text for one file: format detection by extension and content, encoding detection, and the reason
a file cannot become a document. Pure Python, used inside a vectorized Spark UDF."""

from __future__ import annotations

from dataclasses import dataclass

from charset_normalizer import from_bytes

TEXT_FORMATS = {"txt": "txt", "text": "txt", "md": "md", "markdown": "md", "html": "html", "htm": "html"}
_HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<body")


@dataclass(frozen=True)
class Decoded:
    """A decoded file: `text` and `format`, or `error` saying why it was rejected."""

    text: str | None
    format: str
    encoding: str | None
    error: str | None


def detect_format(path: str, head: bytes) -> str:
    """Format from the file's content first (HTML sniffing), then its extension."""
    start = head.lstrip()[:512].lower()
    if start.startswith(b"\xef\xbb\xbf"):
        start = start[3:].lstrip()
    if any(start.startswith(s) for s in _HTML_SNIFF):
        return "html"
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return TEXT_FORMATS.get(ext, "txt")


DEFAULT_PREFERRED = ("cp1252", "latin_1", "iso8859_15")


def _best_encoding(content: bytes, preferred: tuple[str, ...]) -> tuple[str, str] | None:
    """charset-normalizer's best guess; among equally good guesses, the first `preferred` encoding wins
    (cp1250 and cp1252 tie on most French text, and the Western one is far more likely)."""
    matches = list(from_bytes(content))
    if not matches:
        return None
    best = matches[0]
    ties = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    for enc in preferred:
        for m in ties:
            if m.encoding == enc:
                return str(m), m.encoding
    return str(best), best.encoding


def decode_bytes(path: str, content: bytes | None, preferred: tuple[str, ...] = DEFAULT_PREFERRED) -> Decoded:
    """Decodes a file's bytes: UTF-8 (with or without BOM) first, else the encoding charset-normalizer finds.

    Binary content (NUL bytes or no plausible encoding) and empty files are errors, not documents.
    """
    if content is None or len(content) == 0:
        return Decoded(None, detect_format(path, b""), None, "empty file")
    fmt = detect_format(path, content[:1024])
    if b"\x00" in content[:8192]:
        return Decoded(None, fmt, None, "binary content (NUL bytes)")
    try:
        text = content.decode("utf-8-sig")
        encoding = "utf-8"
    except UnicodeDecodeError:
        guess = _best_encoding(content, preferred)
        if guess is None:
            return Decoded(None, fmt, None, "undecodable: no text encoding fits the bytes")
        text, encoding = guess
    if not text.strip():
        return Decoded(None, fmt, encoding, "empty file (whitespace only)")
    return Decoded(text, fmt, encoding, None)
