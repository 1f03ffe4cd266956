"""Generation throughput: vLLM batched vs llama.cpp vs a naive one-prompt-at-a-time loop, and model vs model.

Same prompts (French Debian FAQ questions with their gold section as the only context, rendered with the model's
chat template and packed to the token budget, exactly as the pipeline builds them), same model, same CPU
threads, same run. Each engine runs in its own subprocess, one after the other (vLLM's engine processes and
memory are released between them). Modes:

- `vllm batched`: every prompt in one `LLM.generate` call (continuous batching);
- `transformers loop`: the naive way, without an inference engine: Hugging Face transformers'
  `model.generate` on the same model folder vLLM loads (its bf16 weights, greedy), one prompt at a time, the
  same CPU threads (`torch.set_num_threads`); the baseline the ratios are stated against;
- `vllm naive`: vLLM's engine, one prompt per call, in a loop: what batching alone adds;
- `llamacpp slots=P`: xllamacpp on the GGUF, P parallel slots fed by P threads;
- `llamacpp sequential`: xllamacpp, one slot, one prompt at a time.

For each: output tokens/s, questions/s, token F1 against the section's opening paragraph
(`rag_spark.evaluate.answers.token_f1`; the reference is the opening of the very context given, so this measures
answering briefly from the context), and a fingerprint of the prompt token ids so the modes provably saw the same
input. Ratios are against `transformers loop` of the first model (column `x loop`) and against `vllm naive`
(column `x vllm1`).

    .venv/bin/python benchmarks/generate.py --questions 32 --threads 1
    .venv/bin/python benchmarks/generate.py --questions 64 --models packaged:SmolLM2-135M-Instruct --slots 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.generate_models import load_questions  # noqa: E402
from rag_spark.config import GenerateConfig  # noqa: E402
from rag_spark.evaluate.answers import is_abstention, token_f1  # noqa: E402
from rag_spark.generate.prompts import build_prompt  # noqa: E402

SMOLLM2 = "packaged:SmolLM2-135M-Instruct"
QWEN = "packaged:Qwen2.5-Coder-0.5B-Instruct"


def _generator(backend: str, model: str, threads: int, slots: int, max_tokens: int) -> Any:
    cfg = GenerateConfig(
        backend="vllm" if backend == "transformers" else backend,  # type: ignore[arg-type]
        model=model,
        models_dir=str(ROOT / "models"),
        cpu_threads=threads,
        parallel_slots=slots,
        max_tokens=max_tokens,
        max_model_len=2048,
        max_context_tokens=1200,
        language="fr",
    )
    if backend == "vllm":
        from rag_spark.generate.vllm_backend import VLLMGenerator

        return VLLMGenerator(cfg)
    if backend == "transformers":
        return TransformersLoop(cfg)
    from rag_spark.generate.llamacpp_backend import LlamaCppGenerator

    return LlamaCppGenerator(cfg)


class TransformersLoop:
    """The naive baseline: transformers' `generate`, greedy, one prompt per call, on the folder vLLM loads."""

    def __init__(self, cfg: GenerateConfig) -> None:
        from rag_spark.generate.vllm_backend import VLLMGenerator

        self.cfg = cfg
        self._folder = VLLMGenerator(cfg)  # resolves the packaged model to the same folder, same tokenizer
        self.model_id = self._folder.model_id
        self.tokenizer = self._folder.tokenizer
        self._model: Any = None

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if self.cfg.cpu_threads:
            torch.set_num_threads(self.cfg.cpu_threads)
        dtype = getattr(torch, self.cfg.dtype) if self.cfg.dtype != "auto" else "auto"
        self._model = AutoModelForCausalLM.from_pretrained(str(self._folder.resolved.path), dtype=dtype).eval()

    def generate(self, prompts: list[str]) -> list[Any]:
        import torch

        out = []
        for prompt in prompts:  # one at a time: that is the point of this baseline
            ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                seq = self._model.generate(**ids, max_new_tokens=self.cfg.max_tokens, do_sample=False)
            new = seq[0, ids["input_ids"].shape[1] :]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            eos = self._model.generation_config.eos_token_id
            eos_ids = set(eos if isinstance(eos, list) else [eos])
            tokens_out = sum(1 for t in new.tolist() if t not in eos_ids)
            out.append(types.SimpleNamespace(text=text.strip(), tokens_out=tokens_out))
        return out

    def close(self) -> None:
        self._model = None


def _score(label: str, gens: list[Any], seconds: float, questions: list[dict[str, str]]) -> dict[str, Any]:
    tokens_out = sum(g.tokens_out for g in gens)
    return {
        "mode": label,
        "seconds": seconds,
        "questions": len(gens),
        "tokens_out": tokens_out,
        "out_tok_s": tokens_out / seconds,
        "q_s": len(gens) / seconds,
        "f1": statistics.mean(token_f1(g.text, q["reference"]) for g, q in zip(gens, questions, strict=True)),
        "idk": statistics.mean(is_abstention(g.text) for g in gens),
        "answers": [g.text for g in gens],
    }


def _timed(gen: Any, prompts: list[str], one_at_a_time: bool) -> tuple[list[Any], float]:
    started = time.perf_counter()
    gens = [gen.generate([p])[0] for p in prompts] if one_at_a_time else gen.generate(prompts)
    return gens, time.perf_counter() - started


def run_engine(job: dict[str, Any], questions: list[dict[str, str]]) -> dict[str, Any]:
    """One engine per mode group (one subprocess): prompts built with its tokenizer, a warm-up call, timed modes.

    vLLM: one engine runs the batched mode, then the naive loop. llama.cpp: one engine per slot count; one slot
    runs the naive loop, more slots one call with every prompt.
    """
    backend, model = job["backend"], job["model"]
    results = []
    for name, slots in job["modes"]:
        if backend == "vllm" and name.endswith("naive"):
            continue  # run on the batched mode's engine below
        gen = _generator(backend, model, job["threads"], max(slots, 1), job["max_tokens"])
        builds = [build_prompt(q["question"], [(q["id"], q["context"])], gen.tokenizer, gen.cfg) for q in questions]
        prompts = [b.prompt for b in builds]
        ids = [gen.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        info = {
            "model": model,
            "backend": backend,
            "model_id": gen.model_id,
            "prompts": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12],
            "prompt_tokens_mean": statistics.mean(len(i) for i in ids),
        }
        started = time.perf_counter()
        gen.setup()
        info["init_s"] = time.perf_counter() - started
        gen.generate(prompts[:1])  # warm-up, not timed
        gens, seconds = _timed(gen, prompts, one_at_a_time=(backend != "vllm" and slots == 1))
        results.append(_score(name, gens, seconds, questions) | info)
        if backend == "vllm" and any(m[0].endswith("naive") for m in job["modes"]):
            gens, seconds = _timed(gen, prompts, one_at_a_time=True)
            results.append(_score("vllm naive", gens, seconds, questions) | info)
        gen.close()
    return {"results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[SMOLLM2, QWEN], help="the first gets every mode")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every engine (same cores)")
    parser.add_argument("--slots", type=int, default=4, help="llama.cpp parallel slots")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--faq-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "generate.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one engine job as JSON
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    questions = load_questions(args.faq_dir, args.questions)
    if args.one:
        print("RESULT " + json.dumps(run_engine(json.loads(args.one), questions), ensure_ascii=False))
        return 0

    common = {"threads": args.threads, "max_tokens": args.max_tokens}
    first, *others = args.models
    jobs = [
        {"backend": "transformers", "model": first, "modes": [["transformers loop", 1]]},
        {"backend": "vllm", "model": first, "modes": [["vllm batched", 0], ["vllm naive", 0]]},
        {"backend": "llamacpp", "model": first,
         "modes": [[f"llamacpp slots={args.slots}", args.slots], ["llamacpp sequential", 1]]},
    ]  # fmt: skip
    for model in others:
        jobs.append({"backend": "vllm", "model": model, "modes": [["vllm batched", 0]]})
        jobs.append({"backend": "llamacpp", "model": model, "modes": [[f"llamacpp slots={args.slots}", args.slots]]})
    results: list[dict[str, Any]] = []
    for job in jobs:
        cmd = [sys.executable, __file__, "--one", json.dumps(job | common), "--questions", str(args.questions)]
        if args.faq_dir:
            cmd += ["--faq-dir", str(args.faq_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{job['backend']} {job['model']}: subprocess failed with exit code {proc.returncode}")
        results += json.loads(line[len("RESULT ") :])["results"]
        for r in results[-len(job["modes"]) :]:  # progress: each job's numbers as soon as it ends
            print(f"  {r['model_id']} {r['mode']}: {r['out_tok_s']:.1f} out tok/s, {r['q_s']:.2f} q/s", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results},
                                   ensure_ascii=False, indent=1, default=str), encoding="utf-8")  # fmt: skip
    base = next(r for r in results if r["mode"] == "transformers loop")
    engine1 = next(r for r in results if r["mode"] == "vllm naive")
    lines = [
        f"{len(questions)} French Debian FAQ questions, gold section as context, max_tokens {args.max_tokens}, "
        f"{args.threads} CPU thread(s) per engine, temperature 0",
        f"{'model':<40} {'mode':<20} {'init s':>6} {'s':>6} {'out tok':>7} {'tok/s':>7} {'q/s':>6} "
        f"{'x loop':>6} {'x vllm1':>7} {'F1':>6} {'IDK':>5} prompts",
    ]
    for r in results:
        lines.append(
            f"{r['model_id']:<40} {r['mode']:<20} {r['init_s']:>6.1f} {r['seconds']:>6.1f} {r['tokens_out']:>7d} "
            f"{r['out_tok_s']:>7.1f} {r['q_s']:>6.2f} {r['q_s'] / base['q_s']:>6.2f} "
            f"{r['q_s'] / engine1['q_s']:>7.2f} {r['f1']:>6.3f} {r['idk']:>5.2f} {r['prompts']}"
        )
    lines.append(
        f"x loop / x vllm1: questions/s against '{base['mode']}' / '{engine1['mode']}' of {base['model_id']}, "
        "measured in this run"
    )
    lines.append(f"details: {args.out}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
