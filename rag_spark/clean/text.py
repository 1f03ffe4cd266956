"""Per-document text repair used inside vectorized UDFs: HTML to text, mojibake repair, Unicode normalization."""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

import ftfy
import trafilatura
from bs4 import BeautifulSoup

UnicodeForm = Literal["NFC", "NFKC"]
_DROP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "form", "iframe", "svg")
# Control characters except tab/newline, zero-width characters and the BOM.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")


def html_to_text(html: str) -> str:
    """Main text of an HTML page.

    Scripts, styles, navigation, headers, footers and forms are removed first (BeautifulSoup); trafilatura
    then extracts the main content. On small fragments trafilatura can return nothing or only a part, so
    the pruned page's block-aware text is kept when it is clearly fuller.
    """
    soup = BeautifulSoup(html, "lxml")
    for tag in soup(_DROP_TAGS):
        tag.decompose()
    plain = soup.get_text("\n")
    extracted = trafilatura.extract(
        str(soup), favor_recall=True, include_comments=False, include_tables=True, deduplicate=False
    )
    if extracted and len(extracted) >= 0.6 * len(plain.strip()):
        return str(extracted)
    return plain


def normalize_text(text: str, unicode_form: UnicodeForm = "NFKC", fix_mojibake: bool = True) -> str:
    """Repairs mojibake, normalizes Unicode, drops control/zero-width characters, tidies whitespace."""
    if fix_mojibake:
        text = ftfy.fix_text(text, normalization=unicode_form)
    text = unicodedata.normalize(unicode_form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def clean_document(raw: str, fmt: str, unicode_form: UnicodeForm = "NFKC", fix_mojibake: bool = True) -> str:
    """Raw document text (of format `fmt`) -> normalized plain text."""
    text = html_to_text(raw) if fmt == "html" else raw
    return normalize_text(text, unicode_form, fix_mojibake)
