"""Answer metrics: SQuAD-style exact match and token F1 with language-aware normalization."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

_ARTICLES = {
    "fr": r"\b(le|la|les|l'|un|une|des|du|de|d'|au|aux)\b|\b(l|d)'",
    "en": r"\b(a|an|the)\b",
}
_PUNCT = set(string.punctuation) | {"«", "»", "’", "‘", "“", "”", "…", "–", "—"}
IDK = {"fr": "je ne sais pas", "en": "i don't know"}


def normalize_answer(text: str, language: str = "fr") -> str:
    """Lowercase, apostrophes unified, articles and punctuation removed, whitespace collapsed (accents kept)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    text = re.sub(_ARTICLES.get(language, _ARTICLES["en"]), " ", text)
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str, language: str = "fr") -> float:
    return float(normalize_answer(prediction, language) == normalize_answer(gold, language))


def token_f1(prediction: str, gold: str, language: str = "fr") -> float:
    """Harmonic mean of token precision and recall after normalization (SQuAD's definition)."""
    pred = normalize_answer(prediction, language).split()
    ref = normalize_answer(gold, language).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_abstention(answer: str, language: str = "fr") -> bool:
    """True when the model said it does not know."""
    return normalize_answer(answer, language).startswith(normalize_answer(IDK.get(language, IDK["en"]), language))
