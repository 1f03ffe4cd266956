"""Bytes -> text for one file: format detection by content (magic bytes, HTML sniffing) and extension,
encoding detection, PDF text extraction, and the reason a file cannot become a document. Pure Python, used
inside a vectorized Spark UDF."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from charset_normalizer import from_bytes

TEXT_FORMATS = {
    "txt": "txt",
    "text": "txt",
    "md": "md",
    "markdown": "md",
    "html": "html",
    "htm": "html",
    "xhtml": "html",
    "pdf": "pdf",
}
_HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<body")
# Content we recognise but cannot turn into text: quarantined as "unsupported format" with what it is.
_BINARY_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"PK\x03\x04", "ZIP archive (or docx/xlsx/odt)"),
    (b"\x1f\x8b", "gzip archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"\x7fELF", "ELF executable"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "OLE2 document (doc/xls)"),
    (b"%!PS", "PostScript"),
    (b"RIFF", "RIFF media"),
    (b"OggS", "Ogg media"),
    (b"ID3", "MP3 audio"),
)


@dataclass(frozen=True)
class Decoded:
    """A decoded file: `text` and `format`, or `error` saying why it was rejected."""

    text: str | None
    format: str
    encoding: str | None
    error: str | None
    title: str | None = None


def extension(path: str) -> str:
    """Lower-case extension of the path's last component ('' if none)."""
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def sniff_binary(head: bytes) -> str | None:
    """What a non-text file is, from its magic bytes (None when nothing known matches)."""
    for magic, what in _BINARY_MAGIC:
        if head.startswith(magic):
            return what
    return None


def detect_format(path: str, head: bytes) -> str:
    """Format from the file's content first (PDF magic, known binary types, HTML sniffing), then its extension.

    Returns one of txt, md, html, pdf, or `binary:<what>` for recognised content that is not text.
    """
    if head.startswith(b"%PDF-"):
        return "pdf"
    what = sniff_binary(head)
    if what is not None:
        return f"binary:{what}"
    start = head.lstrip()[:512].lower()
    if start.startswith(b"\xef\xbb\xbf"):
        start = start[3:].lstrip()
    if any(start.startswith(s) for s in _HTML_SNIFF):
        return "html"
    return TEXT_FORMATS.get(extension(path), "txt")


def pdf_to_text(content: bytes) -> tuple[str | None, str | None, str | None]:
    """Text of every page of a PDF (pages separated by a blank line) and its metadata title, with PDFium
    (pypdfium2): fast, and it keeps the word spacing that pure-Python extractors lose on LaTeX output.

    Returns:
        (text, title, error): error says why no text came out (corrupt, encrypted, no text layer).
    """
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(content)
    except pdfium.PdfiumError as err:
        if "password" in str(err).lower():
            return None, None, "encrypted PDF (needs a password)"
        return None, None, f"corrupt PDF: {err}"
    try:
        pages = []
        for i in range(len(doc)):
            page = doc[i]
            textpage = page.get_textpage()
            pages.append(textpage.get_text_bounded())
            textpage.close()
            page.close()
        title = (doc.get_metadata_dict().get("Title") or "").strip() or None
    except pdfium.PdfiumError as err:
        return None, None, f"corrupt PDF: {err}"
    finally:
        doc.close()
    if not pages:
        return None, title, "corrupt PDF: no pages"
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        return None, title, f"PDF without a text layer ({len(pages)} pages, scanned?)"
    return text, title, None


DEFAULT_PREFERRED = ("cp1252", "latin_1", "iso8859_15")
# Byte order marks of the encodings whose text holds NUL bytes (checked before the NUL-byte rule); UTF-32 first,
# since its little-endian BOM starts with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def _cp1252_fallback(err: UnicodeError) -> tuple[str, int]:
    """Codec error handler: bytes that are not UTF-8 are read as Windows-1252 (Latin-1 for its 5 holes)."""
    assert isinstance(err, UnicodeDecodeError)
    out = []
    for b in err.object[err.start : err.end]:
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out), err.end


codecs.register_error("rag_spark_cp1252", _cp1252_fallback)


def _bom_encoding(content: bytes) -> str | None:
    for bom, enc in _BOMS:
        if content.startswith(bom):
            return enc
    return None


def _mixed_utf8(content: bytes) -> str | None:
    """Text that is mostly UTF-8 with pieces in a legacy encoding pasted in (a common result of concatenating
    files): UTF-8 where the bytes are UTF-8, Windows-1252 elsewhere. None when no valid multibyte UTF-8
    sequence is present, so plain legacy-encoded text goes to the encoding detector instead."""
    if _UTF8_MULTIBYTE.search(content) is None:
        return None
    return content.decode("utf-8", errors="rag_spark_cp1252")


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
    if fmt == "pdf" and not content.startswith(b"%PDF-"):
        return Decoded(None, "pdf", None, "corrupt PDF: no %PDF- header")
    if fmt == "pdf":
        text, title, error = pdf_to_text(content)
        return Decoded(text, "pdf", None, error, title)
    if fmt.startswith("binary:"):
        return Decoded(None, fmt, None, f"unsupported format: {fmt[7:]} content")
    bom = _bom_encoding(content)
    if bom is not None:
        try:
            text = content.decode(bom)
        except UnicodeDecodeError as err:
            return Decoded(None, fmt, bom, f"undecodable: {bom} byte order mark but invalid {bom} ({err.reason})")
        if not text.strip():
            return Decoded(None, fmt, bom, "empty file (whitespace only)")
        return Decoded(text, fmt, bom, None)
    if b"\x00" in content[:8192]:
        return Decoded(None, fmt, None, "binary content (NUL bytes)")
    try:
        text = content.decode("utf-8-sig")
        encoding = "utf-8"
    except UnicodeDecodeError:
        mixed = _mixed_utf8(content)
        if mixed is not None:
            text, encoding = mixed, "utf-8+cp1252"
        else:
            guess = _best_encoding(content, preferred)
            if guess is None:
                return Decoded(None, fmt, None, "undecodable: no text encoding fits the bytes")
            text, encoding = guess
    if not text.strip():
        return Decoded(None, fmt, encoding, "empty file (whitespace only)")
    return Decoded(text, fmt, encoding, None)
