"""Batch QA at 10k questions: `rag-spark qa` keeps memory flat as the number of questions grows.

    .venv/bin/python benchmarks/qa_memory.py --config configs/demo.yaml --sizes 1000 10000

Needs a finished run of the config (`make demo`): its lake and index folders are copied into `--work/<size>/` for
each size, so the run's own tables are not touched and every size starts from the same state. The questions are made
from the dataset's own documents ("Qu'est-ce que <title> ?" for the titles of `corpus.jsonl` in order, then other
phrasings), written as a TSV questions file. Each size runs `rag-spark qa` in a subprocess (its own JVM and local
Ray); a sampler reads the RSS of that process and of all its descendants (JVM, Ray's raylet, GCS and workers, the
engine actors) every 0.2 s. Baseline measured in the same run: the smallest size. Printed: peak RSS of the driver
(Python), of the JVM and of the whole process tree, wall seconds, questions/s, and each peak as a ratio of the
smallest size's.

What runs: the real qa path — the questions staged by Spark (anti-join against `answers`), rounds of
`qa.batch_size`, retrieval on the driver, the Ray actor pool of llama.cpp engines (loaded once each), one MERGE per
round into `retrievals` and `answers`. `generate.context_chunks` is set to 0 (`--context-chunks`), so every
question gets the template's "Je ne sais pas." without a model call: model compute does not change the driver's
memory and would make 10k questions take hours on 2 cores (0.26-1.4 questions/s, benchmarks/generate.py). The
answers table is checked afterwards: one row per question.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag_spark.config import load_config  # noqa: E402
from rag_spark.embed.models import model_id  # noqa: E402

TEMPLATES = ("Qu'est-ce que {} ?", "Que sait-on de {} ?", "Pourquoi {} est-il connu ?")


def make_questions(dataset: Path, n: int, path: Path) -> int:
    """n questions about the titles of corpus.jsonl ("Qu'est-ce que <title> ?", then other phrasings)."""
    titles: list[str] = []
    with (dataset / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            title = " ".join(str(json.loads(line).get("title") or "").split())
            if title:
                titles.append(title)
    if not titles:
        raise SystemExit(f"{dataset / 'corpus.jsonl'}: no document has a title")
    if n > len(titles) * len(TEMPLATES):
        raise SystemExit(f"{dataset / 'corpus.jsonl'}: {len(titles)} titles cannot make {n} questions")
    lines = [f"mem-{i:05d}\t{TEMPLATES[i // len(titles)].format(titles[i % len(titles)])}\n" for i in range(n)]
    path.write_text("".join(lines), encoding="utf-8")
    return n


class TreeSampler(threading.Thread):
    """Peak RSS (bytes) of a process, of its java descendants, and of the whole tree, sampled every `step` s."""

    def __init__(self, pid: int, step: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.step = psutil.Process(pid), step
        self.peak = {"driver": 0, "jvm": 0, "tree": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            now = {"driver": 0, "jvm": 0, "tree": 0}
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    name = p.name()
                except psutil.Error:
                    continue
                now["tree"] += rss
                if p.pid == self.root.pid:
                    now["driver"] = rss
                elif name == "java":
                    now["jvm"] += rss
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            self.done.wait(self.step)


def run_size(base: dict[str, Any], src_out: Path, work: Path, n: int, args: Any) -> dict[str, Any]:
    out = work / str(n)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src_out / "lake", out / "lake", ignore=shutil.ignore_patterns("_staging"))
    shutil.copytree(src_out / "index", out / "index")
    questions = out / "questions.tsv"
    make_questions(Path(base["dataset"]), n, questions)
    cfg = {**base, "out": str(out), "lake": None, "index_dir": None}
    cfg["generate"] = {**base["generate"], "backend": "llamacpp", "context_chunks": args.context_chunks}
    cfg["qa"] = {**base.get("qa", {}), "batch_size": args.batch_size}
    cfg_file = out / "config.json"
    cfg_file.write_text(json.dumps(cfg))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAG_SPARK_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "rag_spark.cli", "qa", "--config", str(cfg_file), "--questions", str(questions)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.stderr.write(output[-4000:])
        raise SystemExit(f"qa with {n} questions failed with exit code {proc.returncode}")
    answered = _count_answers(out)
    if answered != n:
        raise SystemExit(f"qa with {n} questions: {answered} answers in the table")
    return {"questions": n, "seconds": seconds, "q_s": n / seconds, "answers": answered} | {
        f"peak_{k}_mb": v / 2**20 for k, v in sampler.peak.items()
    }


def _count_answers(out: Path) -> int:
    from deltalake import DeltaTable

    table = DeltaTable(str(out / "lake" / "answers")).to_pyarrow_table(columns=["query_id"])
    return sum(1 for q in table.column("query_id").to_pylist() if q.startswith("mem-"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--batch-size", type=int, default=256, help="qa.batch_size (questions per round)")
    ap.add_argument("--context-chunks", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rag-spark-qa-memory"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "qa_memory.json")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    src_out = Path(cfg.out)
    if not (src_out / "lake" / "chunks").is_dir() or not (src_out / "index" / model_id(cfg.embed.model)).is_dir():
        raise SystemExit(f"{src_out}: no finished run with an index for {cfg.embed.model} (run `make demo` first)")
    base = cfg.model_dump(mode="json")
    base["dataset"] = str(Path(cfg.dataset).resolve())
    results = []
    for n in sorted(args.sizes):
        r = run_size(base, src_out, args.work, n, args)
        results.append(r)
        print(f"  {n} questions: {r['seconds']:.0f} s, peak tree {r['peak_tree_mb']:.0f} MB", flush=True)
        shutil.rmtree(args.work / str(n), ignore_errors=True)
    ref = results[0]
    lines = [
        f"rag-spark qa, {args.config.name}, llama.cpp actors, context_chunks {args.context_chunks}, "
        f"rounds of {args.batch_size}",
        f"{'questions':>9} {'s':>7} {'q/s':>6} {'driver MB':>9} {'JVM MB':>7} {'tree MB':>8} {'tree x':>6}",
    ]
    for r in results:
        lines.append(
            f"{r['questions']:>9} {r['seconds']:>7.1f} {r['q_s']:>6.1f} {r['peak_driver_mb']:>9.0f} "
            f"{r['peak_jvm_mb']:>7.0f} {r['peak_tree_mb']:>8.0f} {r['peak_tree_mb'] / ref['peak_tree_mb']:>6.2f}"
        )
    lines.append(f"tree x: peak RSS of the whole process tree against {ref['questions']} questions, same run")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
