"""Compare the packaged generation models on the French Debian FAQ, with the gold section as the only context.

For each model: vLLM init seconds, output tokens/s, questions/s, and token-F1 of the answer against the
section's first paragraph (`FaqSection.short_answer`), plus how often it abstains ("Je ne sais pas.") and cites
`[1]`. The reference is the opening of the very section given as context, so copying the context's first words
would score F1 = 1.0: this measures whether a model answers from the context, briefly. Baselines measured in the
same run: the first model listed (ratios), and a floor that answers with the question itself.

    .venv/bin/python benchmarks/generate_models.py --questions 40
    .venv/bin/python benchmarks/generate_models.py --models packaged:SmolLM2-135M-Instruct --cpu-threads 2

Each model runs in its own subprocess (vLLM's engine processes and memory are released between models).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_spark.config import GenerateConfig  # noqa: E402
from rag_spark.generate.prompts import build_prompt, is_no_answer, parse_citations  # noqa: E402

logger = logging.getLogger("generate_models")

DEFAULT_MODELS = ["packaged:SmolLM2-135M-Instruct", "packaged:Qwen2.5-Coder-0.5B-Instruct"]
# SQuAD-style normalization, French articles as in FQuAD's evaluation script plus the English ones.
_ARTICLES = re.compile(r"\b(le|la|les|l|un|une|des|du|au|aux|the|a|an)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "«»“”’…–—"})
_CITATION = re.compile(r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]")


def normalize(text: str) -> list[str]:
    """Lowercase, drop citation markers and punctuation (accents kept), drop articles, split on whitespace."""
    text = _CITATION.sub(" ", text.lower()).translate(_PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between two strings after `normalize`."""
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def load_questions(faq_dir: Path | None, n: int) -> list[dict[str, str]]:
    """n question sections spread evenly over the FAQ: question, gold context, reference answer."""
    from rag_spark.data.debian_faq import ensure_faq_dir, parse_faq

    folder = faq_dir or ensure_faq_dir(ROOT / ".cache" / "debian-faq")
    sections = [s for s in parse_faq(folder) if s.is_question and s.short_answer and s.body_text]
    step = max(1, len(sections) / n)
    picked = [sections[int(i * step)] for i in range(min(n, len(sections)))]
    return [
        {"id": s.anchor, "question": s.heading, "context": s.body_text, "reference": s.short_answer} for s in picked
    ]


def run_model(model: str, questions: list[dict[str, str]], cpu_threads: int | None) -> dict[str, Any]:
    """Loads one model with vLLM, answers every question in one batch, and scores the answers."""
    from rag_spark.generate.vllm_backend import VLLMGenerator

    cfg = GenerateConfig(model=model, cpu_threads=cpu_threads, language="fr")
    generator = VLLMGenerator(cfg)
    resolved = generator.resolved  # converts a packaged GGUF once (not counted in init)
    builds = [build_prompt(q["question"], [(q["id"], q["context"])], generator.tokenizer, cfg) for q in questions]
    started = time.perf_counter()
    generator.setup()
    init_s = time.perf_counter() - started
    generator.generate([builds[0].prompt])  # first-call warm-up, not timed
    started = time.perf_counter()
    gens = generator.generate([b.prompt for b in builds])
    gen_s = time.perf_counter() - started
    generator.close()
    rows = []
    for q, b, g in zip(questions, builds, gens, strict=True):
        rows.append({
            "id": q["id"], "question": q["question"], "answer": g.text, "reference": q["reference"],
            "f1": token_f1(g.text, q["reference"]), "no_answer": is_no_answer(g.text),
            "cites": bool(parse_citations(g.text, b.included_ids)),
            "tokens_in": g.tokens_in, "tokens_out": g.tokens_out,
        })  # fmt: skip
    tokens_out = sum(r["tokens_out"] for r in rows)
    return {
        "model": model,
        "model_id": resolved.model_id,
        "threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
        "init_s": init_s,
        "gen_s": gen_s,
        "questions": len(rows),
        "tokens_out": tokens_out,
        "tokens_in_mean": statistics.mean(r["tokens_in"] for r in rows),
        "out_tok_s": tokens_out / gen_s,
        "q_s": len(rows) / gen_s,
        "f1": statistics.mean(r["f1"] for r in rows),
        "no_answer_rate": statistics.mean(r["no_answer"] for r in rows),
        "cite_rate": statistics.mean(r["cites"] for r in rows),
        "rows": rows,
    }


def echo_baseline(questions: list[dict[str, str]]) -> float:
    """Mean F1 of answering with the question itself (a floor: word overlap without any answer)."""
    return statistics.mean(token_f1(q["question"], q["reference"]) for q in questions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--faq-dir", type=Path, default=None)
    parser.add_argument("--cpu-threads", type=int, default=None, help="generate.cpu_threads (default: config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "generate_models.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one model, print JSON
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    questions = load_questions(args.faq_dir, args.questions)
    if args.one:
        print("RESULT " + json.dumps(run_model(args.one, questions, args.cpu_threads), ensure_ascii=False))
        return 0

    results = []
    for model in args.models:
        cmd = [sys.executable, __file__, "--one", model, "--questions", str(args.questions)]
        if args.faq_dir:
            cmd += ["--faq-dir", str(args.faq_dir)]
        if args.cpu_threads:
            cmd += ["--cpu-threads", str(args.cpu_threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{model}: benchmark subprocess failed with exit code {proc.returncode}")
        results.append(json.loads(line[len("RESULT ") :]))

    baseline = echo_baseline(questions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"echo_baseline_f1": baseline, "results": results}, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    header = f"{'model':<38} {'init s':>7} {'out tok/s':>9} {'q/s':>6} {'F1':>6} {'F1/echo':>7} {'IDK':>5} {'cites':>5}"
    lines = [f"{len(questions)} French Debian FAQ questions, gold section as the only context", header]
    for r in results:
        lines.append(
            f"{r['model_id']:<38} {r['init_s']:>7.1f} {r['out_tok_s']:>9.1f} {r['q_s']:>6.2f} {r['f1']:>6.3f} "
            f"{r['f1'] / baseline:>7.2f} {r['no_answer_rate']:>5.2f} {r['cite_rate']:>5.2f}"
        )
    lines.append(f"{'baseline: the question as answer':<38} {'':>7} {'':>9} {'':>6} {baseline:>6.3f} {1:>7.2f}")
    if len(results) > 1:
        first = results[0]
        for r in results[1:]:
            lines.append(
                f"{r['model_id']} vs {first['model_id']}: tok/s x{r['out_tok_s'] / first['out_tok_s']:.2f}, "
                f"q/s x{r['q_s'] / first['q_s']:.2f}, F1 x{r['f1'] / max(first['f1'], 1e-9):.2f}"
            )
    lines.append(f"details: {args.out}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
