"""Two rerankers of the hybrid top-N built from the packaged e5-small alone, on the held-out questions.

    .venv/bin/python benchmarks/rerank_probes.py --config configs/demo.yaml --pairs-model retriever-XXXX \
        [--top-n 20] [--negatives 7] [--epochs 1] [--out benchmarks/results/rerank_probes_demo]

No cross-encoder ships in a PyPI package (README "Retrieval"), so `rerank.method: cross-encoder` has no model to run
here. These are the two ways to get one from what ships, measured so that the README can say what they give:

- **MaxSim** (zero-shot late interaction, ColBERT's scoring without ColBERT's training): each query token's best
  cosine against the passage's tokens, averaged, with e5-small's last hidden states (query/passage prefixes, special
  tokens dropped from the query side).
- **Cross-encoder trained here**: e5-small's weights with a new one-logit head (XLM-R sequence classification),
  trained with a listwise softmax loss over (positive, N negatives) groups: the questions and positive chunks of a
  `train-retriever` model's `training_pairs` rows (the training split: qa + synthetic; never the held-out
  questions), negatives = the best hybrid hits outside the positive's document. AdamW, linear warm-up/decay.

Each reranker's score, z-normalized per question, is blended with the hybrid's RRF rank score (z-normalized):
`(1 - blend) * reranker + blend * rrf`. Chunks below the top-N keep their hybrid order. The same held-out split,
collapse to documents and ir-measures metrics as benchmarks/retrieval.py; paired comparisons against the hybrid.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAG_SPARK_PROGRESS", "0")

from benchmarks.retrieval import variant  # noqa: E402
from rag_spark import schema as S  # noqa: E402
from rag_spark.config import PACKAGED_E5_TORCH, PipelineConfig, load_config  # noqa: E402
from rag_spark.embed.encoders import passage_text  # noqa: E402
from rag_spark.embed.models import resolve_encoder  # noqa: E402
from rag_spark.evaluate.retrieval import per_query_metrics  # noqa: E402
from rag_spark.evaluate.run import lake_qrels  # noqa: E402
from rag_spark.evaluate.stats import bootstrap_ci, paired_comparison  # noqa: E402
from rag_spark.pipeline import Pipeline, StageResult  # noqa: E402
from rag_spark.retrieve.dense import collapse_to_documents  # noqa: E402
from rag_spark.retrieve.retrievers import ChunkHit, search_queries  # noqa: E402
from rag_spark.retrieve.splits import HELDOUT, split_ids  # noqa: E402

log = logging.getLogger("bench.rerank_probes")
BLENDS = (0.0, 0.3, 0.5, 0.7)
MAX_LENGTH = 256


def doc_run(p: Pipeline, ranked: dict[str, list[int]], chunks: Any, k: int = 10) -> pd.DataFrame:
    """Chunk keys in rank order -> the top-k documents per question, through the retrieve stage's collapse."""
    hits = [ChunkHit(qid, rank, key, 0.0, 0.0) for qid, keys in ranked.items() for rank, key in enumerate(keys, 1)]
    return collapse_to_documents(p._hits_frame(hits), chunks, k).select("query_id", "doc_id", "rank").toPandas()


def blended(scores: dict[str, tuple[list[int], np.ndarray]], hits: dict[str, list[int]], blend: float, top_n: int):
    """Per question: the top-N reordered by `(1 - blend) * z(score) + blend * z(rrf)`, then the rest as they were."""
    rrf = np.array([1.0 / (60 + r) for r in range(1, top_n + 1)])
    out = {}
    for qid, (keys, s) in scores.items():
        z = (s - s.mean()) / (s.std() + 1e-9)
        r = rrf[: len(keys)]
        rz = (r - r.mean()) / (r.std() + 1e-9)
        order = np.argsort(-((1 - blend) * z + blend * rz), kind="stable")
        out[qid] = [keys[i] for i in order] + hits[qid][top_n:]
    return out


def maxsim_scores(questions, hits, text_of, top_n: int) -> dict[str, tuple[list[int], np.ndarray]]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(resolve_encoder(PACKAGED_E5_TORCH))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    special = set(tok.all_special_ids)

    def states(texts: list[str]) -> tuple[Any, Any, Any]:
        enc = tok(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = torch.nn.functional.normalize(model(**enc).last_hidden_state, dim=-1)
        return h, enc["attention_mask"].bool(), enc["input_ids"]

    out = {}
    for qid, text in questions:
        qh, qm, qi = states([f"query: {text}"])
        q_tokens = qh[0][qm[0] & torch.tensor([i not in special for i in qi[0].tolist()])]
        keys = hits[qid][:top_n]
        ph, pm, _ = states([f"passage: {text_of[k]}" for k in keys])
        sim = torch.einsum("qd,npd->nqp", q_tokens, ph).masked_fill(~pm[:, None, :], -1.0)
        out[qid] = (keys, sim.max(-1).values.mean(-1).numpy())
    return out


def train_cross_encoder(
    groups: list[tuple[str, list[int]]], text_of, args: argparse.Namespace
) -> tuple[Any, Any, list]:
    """e5-small + a new one-logit head, trained on (question, [positive, negatives...]) groups; returns the model,
    its tokenizer and the loss every 10 steps."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    rnd = random.Random(args.seed)
    path = str(resolve_encoder(PACKAGED_E5_TORCH))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    total = math.ceil(len(groups) / args.questions_per_batch) * args.epochs
    warmup = max(1, int(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    model.train()
    losses, step, t0 = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        rnd.shuffle(groups)
        for start in range(0, len(groups), args.questions_per_batch):
            batch = groups[start : start + args.questions_per_batch]
            enc = tok(
                [f"query: {q}" for q, keys in batch for _ in keys],
                [f"passage: {text_of[k]}" for _, keys in batch for k in keys],
                truncation="only_second",
                max_length=MAX_LENGTH,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**enc).logits.view(len(batch), -1)
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 10 == 0 or step == total:
                losses.append((step, round(float(loss.detach()), 4)))
                log.info("cross-encoder: epoch %d, step %d/%d, loss %.3f (%.0f s)", epoch + 1, step, total,
                         losses[-1][1], time.perf_counter() - t0)  # fmt: skip
    model.eval()
    return model, tok, losses


def lake_split(base: PipelineConfig, p: Pipeline) -> tuple[pd.DataFrame, set[str], pd.DataFrame]:
    """The lake's questions (by id), the ids `base.splits` holds out, and the positive qrels of every question."""
    queries = p.lake.read(S.QUERIES).toPandas().sort_values("query_id")
    heldout = set(split_ids(queries["query_id"], base.splits)[HELDOUT])
    qrels = lake_qrels(p.lake)
    return queries, heldout, qrels[qrels["score"] > 0]


def held_out(config: Path) -> tuple[PipelineConfig, Pipeline, list[tuple[str, str]], pd.DataFrame]:
    """The config, a hybrid pipeline over its lake, the held-out questions (id, text; by id) and their positive
    qrels."""
    base = load_config(config)
    p = Pipeline(variant(base, retrieve={"retriever": "hybrid"}))
    queries, heldout, qrels = lake_split(base, p)
    questions = [(r.query_id, r.text) for r in queries.itertuples() if r.query_id in heldout]
    return base, p, questions, qrels[qrels["query_id"].isin(heldout)]


def search_hits(questions: list[tuple[str, str]], retriever: Any, n: int) -> dict[str, list[int]]:
    """Each question's first `n` chunk keys from `retriever`, best first (an empty list when it found none)."""
    hits: dict[str, list[int]] = {qid: [] for qid, _ in questions}
    for h in search_queries(questions, retriever, n):
        hits[h.query_id].append(h.chunk_key)
    return hits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--pairs-model", required=True, help="a train-retriever model name: its training_pairs rows")
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--negatives", type=int, default=7, help="hybrid-mined negatives per training question")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--questions-per-batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rerank_probes_demo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))

    base, p, questions, qrels = held_out(args.config)
    heldout = {q for q, _ in questions}
    lake = p.lake
    chunks = lake.read(S.CHUNKS).select("chunk_key", "chunk_id", "doc_id", "title", "text").toPandas()
    text_of = {int(r.chunk_key): passage_text(r.title, r.text) for r in chunks.itertuples()}
    doc_of = {int(r.chunk_key): r.doc_id for r in chunks.itertuples()}
    key_of = {r.chunk_id: int(r.chunk_key) for r in chunks.itertuples()}
    pairs = lake.read(S.TRAINING_PAIRS).where(f"model_name = '{args.pairs_model}'").toPandas()
    if pairs.empty:
        raise SystemExit(f"--pairs-model {args.pairs_model}: no training_pairs rows (run train-retriever first)")
    if set(pairs["query_id"].dropna()) & heldout:
        raise SystemExit(f"--pairs-model {args.pairs_model}: its pairs include held-out questions")
    pairs = pairs[pairs["source"].isin(["qa", "synthetic"])]  # section pairs point at train_sections, not chunks
    train = [(f"t{i}", r.question, key_of[r.positive_chunk_id]) for i, r in enumerate(pairs.itertuples())]

    res = StageResult("benchmark")
    chunks_df = p._read(S.CHUNKS, res.inputs)
    with p._retriever(chunks_df, res) as retriever:
        hits = search_hits(questions, retriever, args.top_n * base.retrieve.chunk_headroom)
        train_hits = search_hits([(q, t) for q, t, _ in train], retriever, 4 * args.negatives)
    hybrid = per_query_metrics(qrels, doc_run(p, hits, chunks_df), [1, 5, 10], 10).set_index("query_id")
    log.info("hybrid: MRR@10 %.3f over %d held-out questions", hybrid["mrr@10"].mean(), len(hybrid))

    groups = []
    for qid, text, pos in train:
        negs = [k for k in train_hits.get(qid, []) if doc_of[k] != doc_of[pos]][: args.negatives]
        if len(negs) == args.negatives:
            groups.append((text, [pos, *negs]))
    log.info("cross-encoder: %d training groups of 1 + %d", len(groups), args.negatives)

    rows: list[dict[str, Any]] = [{"name": "hybrid e5 + bm25 (rrf)", **summary(hybrid, hybrid)}]
    t0 = time.perf_counter()
    ms = maxsim_scores(questions, hits, text_of, args.top_n)
    ms_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, tok, losses = train_cross_encoder(groups, text_of, args)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ce = {}
    with torch.no_grad():
        for qid, text in questions:
            keys = hits[qid][: args.top_n]
            enc = tok([f"query: {text}"] * len(keys), [f"passage: {text_of[k]}" for k in keys],
                      truncation="only_second", max_length=MAX_LENGTH, padding=True, return_tensors="pt")  # fmt: skip
            ce[qid] = (keys, model(**enc).logits.view(-1).numpy())
    ce_seconds = time.perf_counter() - t0
    for label, scores in (("MaxSim e5-small (zero-shot)", ms), ("cross-encoder e5-small trained here", ce)):
        for blend in BLENDS:
            run = doc_run(p, blended(scores, hits, blend, args.top_n), chunks_df)
            pq = per_query_metrics(qrels, run, [1, 5, 10], 10).set_index("query_id")
            rows.append({"name": f"hybrid + {label}" + (f" (blend {blend:g})" if blend else ""), **summary(pq, hybrid)})
            log.info("%s: MRR@10 %.3f", rows[-1]["name"], rows[-1]["mrr@10"])

    header = [
        f"Held-out questions: {len(questions)}; reranked: the hybrid's top {args.top_n} chunks; cross-encoder trained "
        f"on {len(groups)} training questions of {args.pairs_model} x (1 positive + {args.negatives} hybrid "
        f"negatives), {args.epochs} epoch(s), {train_seconds / 60:.1f} min on {len(os.sched_getaffinity(0))} CPUs "
        f"(loss every 10 steps: {[loss for _, loss in losses]}; ln({args.negatives + 1}) = "
        f"{math.log(args.negatives + 1):.3f} is chance). Scoring the held-out questions: MaxSim {ms_seconds:.0f} s, "
        f"cross-encoder {ce_seconds:.0f} s.",
    ]
    extra = {
        "training": {"groups": len(groups), "losses": losses, "seconds": train_seconds},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    write_results(args.out, header, rows, extra, first_column="reranker")
    return 0


def summary(pq: pd.DataFrame, hybrid: pd.DataFrame) -> dict[str, Any]:
    mrr = pq["mrr@10"].to_numpy()
    out: dict[str, Any] = {m: float(pq[m].mean()) for m in ("mrr@10", "recall@1", "recall@5", "recall@10")}
    out["mrr@10_ci95"] = list(bootstrap_ci(mrr, seed=0))
    out["vs_hybrid"] = paired_comparison(mrr, hybrid.loc[pq.index, "mrr@10"].to_numpy(), seed=0).as_dict()
    return out


def write_results(
    out: Path, header: list[str], rows: list[dict[str, Any]], extra: dict[str, Any], first_column: str = "retriever"
) -> None:
    """Prints the rows (summary() + name; the first is the hybrid the others are compared with) as a markdown table
    under `header` and writes <out>.md and <out>.json."""
    lines = [
        *header,
        "",
        f"| {first_column} | MRR@10 [95% CI] | R@1 | R@5 | R@10 | paired vs hybrid [95% CI], p, wins/losses |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        c = r["vs_hybrid"]
        paired = (
            f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], p={c['p']:.3g}, {c['wins']}/{c['losses']}"
        )
        paired = "(the reference)" if i == 0 else paired
        lines.append(
            f"| {r['name']} | {r['mrr@10']:.3f} [{r['mrr@10_ci95'][0]:.3f}, {r['mrr@10_ci95'][1]:.3f}] | "
            f"{r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} | {paired} |"
        )
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, **extra}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
