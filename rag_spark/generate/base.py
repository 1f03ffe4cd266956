"""The generation contract every backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Generation:
    """One completion.

    Attributes:
        text: The generated answer, stripped of surrounding whitespace.
        tokens_in: Prompt tokens, as counted by the engine.
        tokens_out: Generated tokens.
        latency_ms: Time attributed to this prompt. vLLM: the batch's wall time split in proportion to each prompt's
            output tokens (prompts run together in one batch, so there is no per-prompt clock). llama.cpp: the
            request's own wall time in its slot, from submission to last token.
    """

    text: str
    tokens_in: int
    tokens_out: int
    latency_ms: float


@runtime_checkable
class Generator(Protocol):
    """A text generator over fully rendered prompts.

    Prompts are strings that already went through the model's chat template (`prompts.build_prompt` renders them
    with `tokenizer`), so backends do no templating and the prompt hash recorded with an answer is the exact
    input the model saw.
    """

    @property
    def model_id(self) -> str:
        """Stable identifier of the model weights (recorded with every answer)."""
        ...

    @property
    def tokenizer(self) -> object:
        """The model's Hugging Face tokenizer (used to render chat templates and pack context)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` for this model, without special tokens."""
        ...

    def generate(self, prompts: list[str]) -> list[Generation]:
        """Completes each rendered prompt; returns one Generation per prompt, in order."""
        ...
