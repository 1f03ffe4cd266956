"""Document expansion with generated questions (doc2query), measured on the held-out questions.

    .venv/bin/python benchmarks/doc2query_probe.py --config configs/demo.yaml [--others 1000] [--few-shot 3] \
        [--out benchmarks/results/doc2query_demo]

The packaged generator writes, for every chunk, one question the chunk answers (the train-retriever's synthetic
question prompt and cache, `synthetic_questions`; index-time work that never sees the evaluation questions); with
`--few-shot N` it is first shown N train-split questions over their gold sections. Three ways to use them:
- **BM25 over the expanded text** (title + text + question): Nogueira et al. 2019's doc2query;
- **e5 over the expanded text**: the chunk is embedded with its question appended;
- **question matching**: the generated questions are embedded as queries and the user's question is matched against
  them (one more list for the RRF fusion): the FAQ-retrieval way of comparing a question with questions.

Writing a question for each of the demo's 11,185 chunks takes about 1.6 h on 2 cores, so the probe measures on a
smaller haystack that keeps what makes the task hard: every chunk of the collections that hold a gold document
(the FAQ: the misses are confusions between its neighbouring sections) plus the chunks of `--others` documents drawn
(seeded) from the rest (Wikipedia). Every row, the reference included, searches that same haystack; every chunk in it
is expanded the same way. One more row gives the reference on the whole haystack, to show how much easier the
smaller one is. The e5 chunk vectors are the lake's `embeddings` rows (what the Flat index returns), BM25 the
pipeline's analyzer (`BM25Index.build`); collapse to documents, metrics and paired comparisons as in
benchmarks/rerank_probes.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAG_SPARK_PROGRESS", "0")

from benchmarks.fusion_probes import DEPTH, Vectors, lake_vectors, rrf  # noqa: E402
from benchmarks.rerank_probes import doc_run, lake_split, search_hits, summary, write_results  # noqa: E402
from benchmarks.retrieval import variant  # noqa: E402
from rag_spark import schema as S  # noqa: E402
from rag_spark.config import load_config  # noqa: E402
from rag_spark.embed.encoders import build_encoder, passage_text  # noqa: E402
from rag_spark.embed.models import model_id  # noqa: E402
from rag_spark.evaluate.retrieval import per_query_metrics  # noqa: E402
from rag_spark.evaluate.stats import paired_comparison  # noqa: E402
from rag_spark.pipeline import Pipeline, StageResult  # noqa: E402
from rag_spark.retrieve.lexical import BM25Index  # noqa: E402
from rag_spark.retrieve.retrievers import BM25Retriever  # noqa: E402
from rag_spark.retrieve.train import collection_of, synthesize_questions  # noqa: E402

log = logging.getLogger("bench.doc2query")


def haystack(chunks: pd.DataFrame, gold_docs: set[str], others: int, seed: int) -> pd.DataFrame:
    """Every chunk of the collections holding a gold document, plus the chunks of `others` documents drawn (seeded)
    from the rest."""
    wanted = {collection_of(d) for d in gold_docs}
    inside = chunks["doc_id"].map(collection_of).isin(wanted)
    rest = np.array(sorted(set(chunks.loc[~inside, "doc_id"])))
    rng = np.random.default_rng(seed)
    drawn = set(rest[rng.choice(len(rest), size=min(others, len(rest)), replace=False)])
    return chunks[inside | chunks["doc_id"].isin(drawn)].sort_values("chunk_id").reset_index(drop=True)


def few_shot(
    queries: pd.DataFrame, qrels: pd.DataFrame, heldout: set[str], chunks: pd.DataFrame, n: int, seed: int
) -> list[tuple[str, str]]:
    """`n` train-split questions (seeded) with the text of their gold document's first chunk; never a held-out one,
    nor one in another language than its passage (the FAQ keeps a few headings untranslated). `qrels`: the positive
    ones."""
    import py3langid

    if n <= 0:
        return []
    train = queries[~queries["query_id"].isin(heldout)].reset_index(drop=True)
    gold = qrels.groupby("query_id")["doc_id"].first()
    first = chunks.sort_values("chunk_id").groupby("doc_id").first()
    picked = train.iloc[np.random.default_rng(seed).permutation(len(train))]
    out = []
    for r in picked.itertuples():
        doc = gold.get(r.query_id)
        if doc in first.index:
            passage = passage_text(first.at[doc, "title"], first.at[doc, "text"])
            if py3langid.classify(passage)[0] == py3langid.classify(r.text)[0]:
                out.append((passage, r.text))
        if len(out) == n:
            break
    log.info("few-shot examples: %s", [q for _, q in out])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--others", type=int, default=1000, help="documents drawn from outside the gold collections")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--few-shot",
        type=int,
        default=0,
        help="show the generator this many train-split questions over their gold document's first chunk",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "doc2query_demo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    base = load_config(args.config)
    p = Pipeline(variant(base, retrieve={"retriever": "bm25"}))
    lake = p.lake
    queries, heldout, all_qrels = lake_split(base, p)
    questions = [(r.query_id, r.text) for r in queries.itertuples() if r.query_id in heldout]
    qrels = all_qrels[all_qrels["query_id"].isin(heldout)]
    res = StageResult("benchmark")
    chunks_df = p._read(S.CHUNKS, res.inputs)
    chunks = chunks_df.select("chunk_key", "chunk_id", "doc_id", "title", "text").toPandas()
    sub = haystack(chunks, set(all_qrels["doc_id"]), args.others, args.seed)
    keys = sub["chunk_key"].to_numpy()
    log.info("haystack: %d of %d chunks (%d documents)", len(sub), len(chunks), sub["doc_id"].nunique())

    examples = few_shot(queries, all_qrels, heldout, chunks, args.few_shot, args.seed)
    t0 = time.perf_counter()
    written = synthesize_questions(p, sub[["chunk_id", "doc_id", "title", "text"]], base.train, examples)
    gen_seconds = time.perf_counter() - t0
    question_of = dict(zip(written["chunk_id"], written["question"], strict=True))
    log.info("questions: %d usable of %d chunks (%.0f s)", len(question_of), len(sub), gen_seconds)

    texts = [passage_text(r.title, r.text) for r in sub.itertuples()]
    expanded = [
        t + ("\n" + question_of[c] if c in question_of else "") for t, c in zip(texts, sub["chunk_id"], strict=True)
    ]
    encoder = build_encoder(base.embed)
    q_vecs = encoder.encode_queries([t for _, t in questions])
    e5_all = lake_vectors(lake, model_id(base.embed.model))
    e5 = Vectors(keys, e5_all.matrix[[e5_all.row[int(k)] for k in keys]])
    t0 = time.perf_counter()
    e5x = Vectors(keys, encoder.encode_passages(expanded))
    with_q = sub[sub["chunk_id"].isin(question_of)]
    qq = Vectors(with_q["chunk_key"].to_numpy(), encoder.encode_queries([question_of[c] for c in with_q["chunk_id"]]))
    log.info("e5: expanded chunks and generated questions embedded in %.0f s", time.perf_counter() - t0)

    def bm25_lists(row_keys: np.ndarray, row_texts: list[str]) -> dict[str, list[int]]:
        return search_hits(questions, BM25Retriever(BM25Index.build(row_keys, row_texts, base.retrieve.bm25)), DEPTH)

    bm, bmx = bm25_lists(keys, texts), bm25_lists(keys, expanded)
    full_bm = bm25_lists(chunks["chunk_key"].to_numpy(), [passage_text(r.title, r.text) for r in chunks.itertuples()])

    ids = [qid for qid, _ in questions]
    dense = {q: e5.search(q_vecs[i]) for i, q in enumerate(ids)}
    dense_x = {q: e5x.search(q_vecs[i]) for i, q in enumerate(ids)}
    match = {q: qq.search(q_vecs[i], min(DEPTH, len(qq.keys) - 1)) for i, q in enumerate(ids)}
    hybrid = {q: rrf(dense[q], bm[q]) for q in ids}
    runs: dict[str, dict[str, list[int]]] = {
        "hybrid e5 + bm25 (rrf)": hybrid,
        "hybrid e5 + bm25 (rrf), whole haystack": {
            q: rrf(e5_all.search(q_vecs[i]), full_bm[q]) for i, q in enumerate(ids)
        },
        "bm25": bm,
        "bm25, expanded": bmx,
        "dense e5": dense,
        "dense e5, expanded": dense_x,
        "e5 question matching": match,
        "hybrid, both expanded (rrf)": {q: rrf(dense_x[q], bmx[q]) for q in ids},
        "hybrid + question matching (rrf)": {q: rrf(dense[q], bm[q], match[q]) for q in ids},
        "hybrid, both expanded + question matching (rrf)": {q: rrf(dense_x[q], bmx[q], match[q]) for q in ids},
    }

    def measure(ranked: dict[str, list[int]]) -> pd.DataFrame:
        run = doc_run(p, ranked, chunks_df)
        return per_query_metrics(qrels, run, [1, 5, 10], 10).set_index("query_id")

    reference = measure(hybrid)
    rows, measured = [], {}
    for name, ranked in runs.items():
        measured[name] = reference if ranked is hybrid else measure(ranked)
        rows.append({"name": name, **summary(measured[name], reference)})
        log.info("%s: MRR@10 %.3f", name, rows[-1]["mrr@10"])
    expansion = {}  # each expanded retriever against the same retriever without expansion
    for a, b in (
        ("bm25, expanded", "bm25"),
        ("dense e5, expanded", "dense e5"),
        ("hybrid, both expanded (rrf)", "hybrid e5 + bm25 (rrf)"),
    ):
        x, y = measured[a], measured[b]
        c = paired_comparison(x["mrr@10"].to_numpy(), y.loc[x.index, "mrr@10"].to_numpy(), seed=0).as_dict()
        expansion[f"{a} vs {b}"] = c
    header = [
        f"Held-out questions: {len(questions)}. Haystack: {len(sub)} of the {len(chunks)} chunks "
        f"({sub['doc_id'].nunique()} documents: the gold collections + {args.others} others, seed {args.seed}); "
        f"one generated question for {len(question_of)} of them by {base.train.synthetic_model} "
        f"({gen_seconds:.0f} s to write them or read them from the `synthetic_questions` cache); "
        f"{len(examples)} train-split questions shown as examples.",
        "Expansion, paired (MRR@10): "
        + "; ".join(
            f"{k}: {c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], p={c['p']:.3g}, "
            f"{c['wins']}/{c['losses']}"
            for k, c in expansion.items()
        )
        + ".",
    ]
    extra = {
        "haystack_chunks": len(sub),
        "questions_written": len(question_of),
        "generation_seconds": round(gen_seconds, 1),
        "few_shot": [q for _, q in examples],
        "expansion": expansion,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    write_results(args.out, header, rows, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
