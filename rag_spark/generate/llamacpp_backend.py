"""The llama.cpp backend: `xllamacpp` (llama.cpp's server engine in-process, prebuilt abi3 wheel) running a GGUF.

Why xllamacpp rather than llama-cpp-python: it ships a prebuilt wheel (llama-cpp-python builds from source, ~6
minutes on 2 cores) and exposes llama.cpp's server loop, whose parallel slots decode several sequences together
(continuous batching) with no HTTP round trip: `Server.handle_completions(dict)` blocks the calling thread (the
GIL is released) until that request is done, so `parallel_slots` Python threads keep the slots busy.

Prompts arrive chat-templated (see `prompts.build_prompt`) and are sent as token ids from the GGUF's own
tokenizer (loaded by transformers from the GGUF), so the engine sees exactly the rendered string, like the vLLM
path. Sampling is `temperature` and `seed` from the config; temperature 0 is greedy decoding.

The engine also binds an HTTP listener on a free 127.0.0.1 port (xllamacpp always starts one); nothing here uses it.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rag_spark.config import GenerateConfig
from rag_spark.generate.base import Generation
from rag_spark.generate.models import ResolvedModel, resolve_gguf

logger = logging.getLogger(__name__)


class LlamaCppError(RuntimeError):
    """llama.cpp refused or failed a request (e.g. a prompt longer than a slot's context)."""


class LlamaCppGenerator:
    """`Generator` backed by llama.cpp (xllamacpp); the model loads on `setup()` or the first call.

    Args:
        cfg: Generation settings: `gguf` or a packaged `model`, `parallel_slots`, `cpu_threads`,
            `max_model_len` (context per slot), `max_tokens`, `temperature`, `seed`.
        model: An already resolved GGUF; None resolves it from `cfg` at first use.
    """

    def __init__(self, cfg: GenerateConfig, model: ResolvedModel | None = None) -> None:
        self.cfg = cfg
        self._model = model
        self._server: Any = None
        self._tokenizer: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self.init_seconds: float | None = None

    @property
    def resolved(self) -> ResolvedModel:
        """The GGUF file (verified against its sha256 on first use)."""
        if self._model is None:
            self._model = resolve_gguf(self.cfg.model, self.cfg.models_dir, self.cfg.gguf)
        return self._model

    @property
    def model_id(self) -> str:
        return self.resolved.model_id

    @property
    def threads(self) -> int:
        """llama.cpp threads: `cpu_threads`, or every CPU of this process's affinity mask."""
        return self.cfg.cpu_threads or len(os.sched_getaffinity(0))

    @property
    def tokenizer(self) -> Any:
        """The GGUF's tokenizer and chat template, as a Hugging Face tokenizer (transformers reads the GGUF)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            path = self.resolved.path
            self._tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def setup(self) -> None:
        """Loads the GGUF into a llama.cpp engine with `parallel_slots` slots (idempotent)."""
        if self._server is not None:
            return
        import xllamacpp

        cfg = self.cfg
        params = xllamacpp.CommonParams()
        params.model.path = str(self.resolved.path)
        params.n_parallel = cfg.parallel_slots
        # The context is shared out evenly among the slots: each gets max_model_len.
        params.n_ctx = cfg.max_model_len * cfg.parallel_slots
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.sampling.seed = cfg.seed
        params.sampling.temp = cfg.temperature
        params.warmup = False
        params.verbosity = -1 if not logger.isEnabledFor(logging.DEBUG) else 3
        started = time.perf_counter()
        self._server = xllamacpp.Server(params)
        self._pool = ThreadPoolExecutor(max_workers=cfg.parallel_slots, thread_name_prefix="llamacpp-slot")
        self.init_seconds = time.perf_counter() - started
        logger.info(
            "llama.cpp loaded %s (%d slots x %d tokens, %d threads) in %.1f s",
            self.model_id,
            cfg.parallel_slots,
            cfg.max_model_len,
            self.threads,
            self.init_seconds,
        )

    def _complete(self, token_ids: list[int]) -> tuple[dict[str, Any], float]:
        cfg = self.cfg
        request = {
            "prompt": token_ids,
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
            "seed": cfg.seed,
            "stream": False,
            "cache_prompt": False,
        }
        started = time.perf_counter()
        result = self._server.handle_completions(request)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if "error" in result:
            raise LlamaCppError(f"llama.cpp rejected a prompt of {len(token_ids)} tokens: {result['error']}")
        return result, elapsed_ms

    def generate(self, prompts: list[str]) -> list[Generation]:
        """Completes chat-templated prompts, `parallel_slots` at a time.

        `latency_ms` is each request's own wall time from submission to its last token (requests overlap in the
        slots, so these add up to more than the batch's wall time).

        Raises:
            ValueError: a prompt plus `max_tokens` does not fit `max_model_len`.
            LlamaCppError: the engine failed a request.
        """
        if not prompts:
            return []
        self.setup()
        assert self._pool is not None
        cfg = self.cfg
        token_ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        for i, ids in enumerate(token_ids):
            if len(ids) + cfg.max_tokens > cfg.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; with generate.max_tokens ({cfg.max_tokens}) it exceeds "
                    f"generate.max_model_len ({cfg.max_model_len})"
                )
        results = list(self._pool.map(self._complete, token_ids))
        return [
            Generation(
                text=str(r["choices"][0]["text"]).strip(),
                tokens_in=int(r["usage"]["prompt_tokens"]),
                tokens_out=int(r["usage"]["completion_tokens"]),
                latency_ms=ms,
            )
            for r, ms in results
        ]

    def next_token_logprobs(self, prompts: list[str], top: int = 20) -> list[dict[str, float]]:
        """For each rendered prompt, the `top` most likely next tokens (text -> log-probability), from the
        server's `n_probs` (used by the LLM reranker)."""
        if not prompts:
            return []
        self.setup()
        assert self._pool is not None

        def one(ids: list[int]) -> dict[str, float]:
            request = {"prompt": ids, "max_tokens": 1, "temperature": 0.0, "n_probs": top, "stream": False}
            r = self._server.handle_completions(request)
            if "error" in r:
                raise LlamaCppError(f"llama.cpp rejected a prompt of {len(ids)} tokens: {r['error']}")
            # OpenAI-style: choices[0].logprobs.content[0].top_logprobs = [{token, logprob}, ...]
            content = ((r.get("choices") or [{}])[0].get("logprobs") or {}).get("content") or [{}]
            probs: dict[str, float] = {}
            for item in content[0].get("top_logprobs", []):
                probs[str(item["token"])] = max(probs.get(str(item["token"]), float("-inf")), float(item["logprob"]))
            return probs

        return list(self._pool.map(one, [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]))

    def close(self) -> None:
        """Frees the engine (its slots and the model)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._server = None

    def __enter__(self) -> LlamaCppGenerator:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
