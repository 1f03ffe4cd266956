"""The answer stage: a callable class for Ray Data's `map_batches` (or a direct call in a test).

The runner wires it (this module does not import Ray):

    ds.map_batches(
        AnswerBatch,
        fn_constructor_kwargs={"cfg": cfg.generate},
        compute=ray.data.ActorPoolStrategy(size=cfg.generate.actors),
        num_cpus=cfg.generate.cpus_per_actor,
        num_gpus=cfg.generate.gpus_per_actor,
        batch_size=32,
    )

Each actor loads the model once, on its first batch; vLLM then runs its engine in processes the actor owns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from rag_spark.config import GenerateConfig, resolve_backend
from rag_spark.generate.base import Generation, Generator
from rag_spark.generate.prompts import NO_ANSWER, build_prompt, context_fingerprint, parse_citations

logger = logging.getLogger(__name__)

INPUT_COLUMNS = ("query_id", "question", "context_chunk_ids", "context_texts")
OUTPUT_COLUMNS = (
    "query_id",
    "answer",
    "cited_chunk_ids",
    "context_chunk_ids",
    "context_hash",
    "prompt_hash",
    "model_id",
    "tokens_in",
    "tokens_out",
    "latency_ms",
)


def make_generator(cfg: GenerateConfig) -> Generator:
    """Builds the configured backend (not yet loaded); `auto` picks vllm when installed, else llamacpp.

    Raises:
        ValueError: `cfg.backend` is "none" (generation is switched off).
    """
    backend = resolve_backend(cfg.backend)
    if backend == "vllm":
        from rag_spark.generate.vllm_backend import VLLMGenerator

        return VLLMGenerator(cfg)
    if backend == "llamacpp":
        from rag_spark.generate.llamacpp_backend import LlamaCppGenerator

        return LlamaCppGenerator(cfg)
    raise ValueError(
        f"generate.backend is {cfg.backend!r}: no generator to build (allowed: 'auto', 'vllm', 'llamacpp')"
    )


def _str_list(value: Any) -> list[str]:
    """A list cell as Ray hands it over (numpy array, list, or None) as a list of str."""
    if value is None:
        return []
    return [str(v) for v in value]


def _object_column(rows: Sequence[Any]) -> np.ndarray:
    """A 1-D object array whose cells are Python lists (np.array would build a 2-D array from equal lengths)."""
    column = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        column[i] = row
    return column


class AnswerBatch:
    """Answers a batch of questions from their retrieved chunks.

    Input columns: `query_id`, `question`, `context_chunk_ids` (list of str per row, best first),
    `context_texts` (list of str per row, aligned with the ids).

    An optional boolean input column `no_retrieval` answers its rows without context (the baseline prompt of
    `generate.no_retrieval`), so one engine answers both variants; without it every row follows `cfg`. Input columns
    beyond these (a config hash, ...) are passed on unchanged.

    Output columns: `query_id`, `answer`, `cited_chunk_ids` (ids the answer cites as `[n]`),
    `context_chunk_ids` (ids actually included in the prompt, after the token budget), `context_hash`
    (`prompts.context_fingerprint` of the context given, before the budget), `prompt_hash`, `model_id`,
    `tokens_in`, `tokens_out`, `latency_ms` (as the backend measures it, see `Generation`; prompt building is not
    included). A question without context gets the template's "I don't know" with `tokens_out` 0 and no model
    call when `cfg.abstain_without_context` (the default).

    Args:
        cfg: Generation settings.
        generator: A ready backend to use instead of building one from `cfg` (tests, notebooks).
    """

    def __init__(self, cfg: GenerateConfig, generator: Generator | None = None) -> None:
        self.cfg = cfg
        self._generator = generator
        # The prompt settings per row: with and without retrieval (same model, same sampling).
        self._variants = {flag: cfg.model_copy(update={"no_retrieval": flag}) for flag in (False, True)}

    @property
    def generator(self) -> Generator:
        """The backend, built on first use."""
        if self._generator is None:
            self._generator = make_generator(self.cfg)
        return self._generator

    def setup(self) -> None:
        """Loads the model now rather than on the first batch."""
        setup = getattr(self.generator, "setup", None)
        if callable(setup):
            setup()

    def answer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Same as calling the object (a named method for Ray actor handles)."""
        return self(batch)

    def _count(self, prompt: str) -> int:
        return self.generator.count_tokens(prompt)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [c for c in INPUT_COLUMNS if c not in batch]
        if missing:
            raise KeyError(f"AnswerBatch input lacks columns {missing}; it needs {list(INPUT_COLUMNS)}")
        generator = self.generator
        tokenizer = generator.tokenizer
        n = len(batch["query_id"])
        flags = [bool(f) for f in batch["no_retrieval"]] if "no_retrieval" in batch else [self.cfg.no_retrieval] * n
        builds, fingerprints = [], []
        for question, ids, texts, flag in zip(
            batch["question"], batch["context_chunk_ids"], batch["context_texts"], flags, strict=True
        ):
            ids_list, texts_list = _str_list(ids), _str_list(texts)
            if len(ids_list) != len(texts_list):
                raise ValueError(f"context_chunk_ids ({len(ids_list)}) and context_texts ({len(texts_list)}) differ")
            contexts = list(zip(ids_list, texts_list, strict=True))
            fingerprints.append(context_fingerprint(ids_list, texts_list))
            builds.append(build_prompt(str(question), contexts, tokenizer, self._variants[flag]))
        # Without any context the template's answer is "I don't know": give it without asking the model, which
        # (at 135M-0.5B parameters) tends to answer from memory instead. tokens_out 0 marks these rows.
        abstain = [
            self.cfg.abstain_without_context and not flag and not b.included_ids
            for b, flag in zip(builds, flags, strict=True)
        ]
        asked = [b.prompt for b, skip in zip(builds, abstain, strict=True) if not skip]
        answered = iter(generator.generate(asked))
        no_answer = NO_ANSWER[self.cfg.language]
        generations = [
            Generation(no_answer, self._count(b.prompt), 0, 0.0) if skip else next(answered)
            for b, skip in zip(builds, abstain, strict=True)
        ]
        model_id = generator.model_id
        passed_on = {c: np.asarray(v) for c, v in batch.items() if c not in INPUT_COLUMNS and c not in OUTPUT_COLUMNS}
        return passed_on | {
            "query_id": np.asarray(batch["query_id"]),
            "answer": np.array([g.text for g in generations], dtype=object),
            "cited_chunk_ids": _object_column(
                [parse_citations(g.text, b.included_ids) for g, b in zip(generations, builds, strict=True)]
            ),
            "context_chunk_ids": _object_column([list(b.included_ids) for b in builds]),
            "context_hash": np.array(fingerprints, dtype=object),
            "prompt_hash": np.array([b.prompt_hash for b in builds], dtype=object),
            "model_id": np.array([model_id] * len(builds), dtype=object),
            "tokens_in": np.array([g.tokens_in for g in generations], dtype=np.int64),
            "tokens_out": np.array([g.tokens_out for g in generations], dtype=np.int64),
            "latency_ms": np.array([g.latency_ms for g in generations], dtype=np.float64),
        }
