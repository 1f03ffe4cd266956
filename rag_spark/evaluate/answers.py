"""Answer metrics: SQuAD-style exact match and token F1 with language-aware normalization."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Any

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


_CITATION_MARK = re.compile(r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]")


def strip_citations(answer: str) -> str:
    """The answer without its `[n]` citation marks, which are references, not content to score."""
    return _CITATION_MARK.sub(" ", answer)


class _Tokenizer:
    """rouge-score's tokenizer interface over our normalization.

    rouge-score's default tokenizer keeps only [a-z0-9] and would cut "réponse" into "r ponse"; French answers
    need the accents and the article/punctuation handling of `normalize_answer`.
    """

    def __init__(self, language: str) -> None:
        self.language = language

    def tokenize(self, text: str) -> list[str]:
        return normalize_answer(text, self.language).split()


_SCORERS: dict[str, Any] = {}


def rouge_l(prediction: str, gold: str, language: str = "fr") -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens) from Google's `rouge-score`, on our tokens."""
    from rouge_score import rouge_scorer

    scorer = _SCORERS.get(language)
    if scorer is None:
        scorer = _SCORERS[language] = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer(language))
    pred, ref = normalize_answer(prediction, language), normalize_answer(gold, language)
    if not pred or not ref:
        return float(pred == ref)
    return float(scorer.score(gold, prediction)["rougeL"].fmeasure)


def groundedness(answer: str, contexts: list[str], language: str = "fr") -> float:
    """Share of the answer's tokens that occur in the context the model was given.

    Definition: the answer without its `[n]` citation marks is normalized like F1 (`normalize_answer`: lowercase,
    articles and punctuation removed) and split into tokens; the contexts are normalized the same way into one
    token set; groundedness = (answer tokens found in that set, counted with repetition) / (answer tokens).
    1.0 means every word of the answer appears in the retrieved context (extractive, supported), 0.0 that none
    does. It is a lexical proxy for support: it does not check that the words are combined the way the context
    combines them. NaN for an abstention or an empty answer (nothing was claimed).
    """
    if is_abstention(answer, language):
        return float("nan")
    tokens = normalize_answer(strip_citations(answer), language).split()
    if not tokens:
        return float("nan")
    vocabulary = set(normalize_answer(" ".join(contexts), language).split())
    return sum(t in vocabulary for t in tokens) / len(tokens)


def citation_correct(cited: list[str], retrieved: list[str], gold_chunks: set[str]) -> float:
    """1.0 when the answer cites something, every cited chunk was retrieved, and at least one is a gold chunk
    (a chunk of a document judged relevant for the question); 0.0 otherwise; NaN when nothing is cited."""
    if not cited:
        return float("nan")
    return float(set(cited) <= set(retrieved) and bool(set(cited) & gold_chunks))
