"""Per-document text repair used inside vectorized UDFs: HTML to text, mojibake repair, Unicode normalization."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Literal

import ftfy
import trafilatura
from bs4 import BeautifulSoup

UnicodeForm = Literal["NFC", "NFKC"]
# HTML elements whose boundaries separate words (inline ones such as code, em, a must not add spaces); shared by the
# page splitters that walk HTML themselves (the Debian FAQ's sections, documentation sections for train-retriever).
BLOCK_TAGS = frozenset(
    {
        "p", "div", "pre", "ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tr", "td", "th",
        "blockquote", "br", "hr", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6",
    }
)  # fmt: skip
_DROP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "form", "iframe", "svg")
# Control characters except tab/newline, zero-width characters and the BOM.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")


def html_document(html: str) -> tuple[str, str | None]:
    """Main text and title of an HTML page, from one parse.

    Scripts, styles, navigation, headers, footers and forms are removed first (BeautifulSoup); trafilatura
    then extracts the main content. On small fragments trafilatura can return nothing or only a part, so
    the pruned page's block-aware text is kept when it is clearly fuller. The title is the page's
    `<title>` (whitespace-collapsed), or None when it is missing or blank: pages split from a larger document
    (a chapter's sections, a manual's pages) often carry the chapter or book name there and nowhere in the body.
    """
    soup = BeautifulSoup(html, "lxml")
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text(" ").split()) if title_tag is not None else ""
    for tag in soup(_DROP_TAGS):
        tag.decompose()
    plain = soup.get_text("\n")
    extracted = trafilatura.extract(
        str(soup), favor_recall=True, include_comments=False, include_tables=True, deduplicate=False
    )
    text = str(extracted) if extracted and len(extracted) >= 0.6 * len(plain.strip()) else plain
    return text, title or None


def html_to_text(html: str) -> str:
    """Main text of an HTML page (see `html_document`)."""
    return html_document(html)[0]


def _normalize_once(text: str, unicode_form: UnicodeForm, fix_mojibake: bool) -> tuple[str, bool]:
    """One pass of `normalize_text`; the flag says whether repair or control removal changed anything."""
    repaired = ftfy.fix_text(text, normalization=unicode_form) if fix_mojibake else text
    touched = repaired != text
    text = unicodedata.normalize(unicode_form, repaired)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    stripped = _CONTROL.sub("", text)
    touched = touched or stripped != text
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in stripped.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip(), touched


def normalize_text(text: str, unicode_form: UnicodeForm = "NFKC", fix_mojibake: bool = True) -> str:
    """Repairs mojibake, normalizes Unicode, drops control/zero-width characters, tidies whitespace.

    Idempotent: a repair can uncover more (C1 controls mapped to cp1252 punctuation form new mojibake with their
    neighbours; removing a control joins two characters), so when a pass repaired or removed something, passes are
    repeated until the text stops changing (at most 4). Clean text costs one pass.
    """
    out, touched = _normalize_once(text, unicode_form, fix_mojibake)
    for _ in range(3):
        if not touched:
            break
        again, touched = _normalize_once(out, unicode_form, fix_mojibake)
        if again == out:
            break
        out = again
    return out


def clean_document(raw: str, fmt: str, unicode_form: UnicodeForm = "NFKC", fix_mojibake: bool = True) -> str:
    """Raw document text (of format `fmt`) -> normalized plain text."""
    text = html_to_text(raw) if fmt == "html" else raw
    return normalize_text(text, unicode_form, fix_mojibake)


# A word cut at a line break: letters, a hyphen, the break, then a lowercase continuation ("infor-\nmation").
# A capital after the break ("Jean-\nPierre" typeset as two lines) is kept as a hyphenated compound.
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])[-\u00ad\u2010][ \t]*\n[ \t]*(?=[^\W\d_A-ZÀ-ÖØ-Þ])")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?!\w)")
# Phone-like: optional +country, groups of digits separated by space, dot, dash or parentheses; 9-15 digits in all
# (checked in `_phone`) so years, dates and ordinary numbers are left alone.
_PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{1,4}){1,6}|\+\d{9,15}|0\d{9})(?!\w)"
)


def dehyphenate(text: str) -> tuple[str, int]:
    """Joins words hyphenated at line breaks; returns (text, number of joins)."""
    return _HYPHEN_BREAK.subn("", text)


def mask_pii(text: str) -> tuple[str, int, int]:
    """Replaces e-mail addresses by `<EMAIL>` and phone numbers by `<PHONE>`; returns (text, emails, phones)."""
    text, emails = _EMAIL.subn("<EMAIL>", text)
    phones = 0

    def _phone(m: re.Match[str]) -> str:
        nonlocal phones
        digits = sum(c.isdigit() for c in m.group(0))
        if 9 <= digits <= 15:
            phones += 1
            return "<PHONE>"
        return m.group(0)

    return _PHONE.sub(_phone, text), emails, phones


def symbol_ratio(text: str) -> float:
    """Share of characters that are neither letters, digits nor whitespace (markup debris, tables of symbols)."""
    if not text:
        return 0.0
    return sum(1 for c in text if not (c.isalnum() or c.isspace())) / len(text)


def clean_with_rules(
    raw: str,
    fmt: str,
    unicode_form: UnicodeForm = "NFKC",
    fix_mojibake: bool = True,
    join_hyphenation: bool = True,
    pii: bool = False,
) -> tuple[str, int, int, int, str | None]:
    """`clean_document` plus the optional rules; returns (text, hyphenations joined, emails, phones masked, title
    found in the document itself: an HTML page's `<title>`, normalized like the text; None for other formats)."""
    text, title = html_document(raw) if fmt == "html" else (raw, None)
    if title is not None:  # normalized like the text; what normalization empties counts as no title
        title = normalize_text(title, unicode_form, fix_mojibake) or None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    joins = emails = phones = 0
    if join_hyphenation:
        text, joins = dehyphenate(text)
    text = normalize_text(text, unicode_form, fix_mojibake)
    if pii:
        text, emails, phones = mask_pii(text)
    return text, joins, emails, phones, title


@lru_cache(maxsize=1)
def _language_identifier():  # type: ignore[no-untyped-def]
    """py3langid's model with normalized probabilities, loaded once per Python worker (~0.6 s)."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


def identify_language(text: str, max_chars: int = 2000) -> tuple[str | None, float]:
    """The ISO 639-1 code py3langid finds in the first `max_chars` characters and its probability.

    Returns (None, 0.0) for text without letters: a language is not guessed from digits and punctuation.
    """
    sample = text[:max_chars]
    if not any(c.isalpha() for c in sample):
        return None, 0.0
    lang, prob = _language_identifier().classify(sample)
    return str(lang), float(prob)


def known_languages() -> frozenset[str]:
    """The language codes the identifier can return."""
    return frozenset(str(c) for c in _language_identifier().nb_classes)
