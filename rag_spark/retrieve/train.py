"""`rag-spark train-retriever`: fine-tune a sentence-transformers bi-encoder for this corpus.

Training data, all stored in the lake so it can be inspected:
- pairs from the **train split** of the user's questions (rag_spark.retrieve.splits): the question, and as positive
  the chunk of its gold document that the base model ranks first;
- synthetic pairs: for a seeded sample of chunks the LLM writes a question the chunk answers
  (`synthetic_questions`, reused on a rerun with the same model and seed), drawn from every chunk or only from the
  collections that hold the train questions' gold documents (`synthetic_from`). With `exclude_heldout_docs`, no
  chunk of a document that is gold for a held-out question is sampled, so the held-out evaluation stays clean;
- section pairs (`section_docs`): documentation outside the corpus whose headings become questions over their
  sections' own text (`rag_spark.retrieve.sections`), stored in `train_sections`; with `exclude_heldout_docs`, a
  section sharing a 10-word sequence with a held-out gold document, or headed by a held-out question, is dropped;
- hard negatives for every pair, mined from the published index of `embed.model` (the current index): the best
  ranked chunks outside the pair's gold documents, after skipping the first `negatives_skip` ranks; for section
  pairs, the other sections the base model ranks best for the heading, with the same skip.
The triples are written to `training_pairs` under the model's name.

The loss is sentence-transformers' MultipleNegativesRankingLoss (in-batch negatives + the hard negatives). The loop
(`rag_spark.retrieve.finetune`, bf16 autocast on a GPU) is a plain torch loop around that loss: sentence-transformers'
own trainer needs the `datasets` package, whose current releases would replace the pinned pyarrow / huggingface_hub /
fsspec of this environment.

The model folder `<train.output_dir>/<train.name>-<hash>` holds a normal sentence-transformers model plus
`rag_spark_training.json` (base model, split, question ids used, table versions, settings, loss per epoch); point
`embed.model` at the folder (with `embed.backend: sentence-transformers`) to embed and index with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.config import EmbedConfig, TrainConfig
from rag_spark.embed.encoders import model_prompts, passage_text
from rag_spark.retrieve.finetune import fit_bi_encoder
from rag_spark.retrieve.sections import Section, read_sections, shingles
from rag_spark.retrieve.splits import HELDOUT, TRAIN, split_ids

if TYPE_CHECKING:
    from rag_spark.pipeline import Pipeline

log = logging.getLogger(__name__)

METADATA = "rag_spark_training.json"

# The instruction is written in the passage's language: the packaged Qwen answers in the language it is asked in,
# and a retriever for French questions has to be trained on French questions.
_SYNTH_PROMPTS = {
    "fr": (
        "Tu écris des questions de recherche. À partir d'un passage, écris UNE question courte, en français, à "
        "laquelle le passage répond. Écris seulement la question.",
        "Passage :\n{p}\n\nQuestion :",
    ),
    "en": (
        "You write search questions. Given a passage, write ONE short question, in the language of the passage, "
        "that the passage answers. Output only the question.",
        "Passage:\n{p}\n\nQuestion:",
    ),
}


@dataclass
class TrainResult:
    model_dir: Path
    pairs: dict[str, int]
    seconds: dict[str, float]
    losses: list[float] = field(default_factory=list)
    reused: bool = False


def training_metadata(model_dir: str | Path) -> dict[str, Any] | None:
    """The training record of a fine-tuned model folder, or None for any other model."""
    path = Path(model_dir) / METADATA
    return json.loads(path.read_text()) if path.is_file() else None


def _clean_question(text: str) -> str | None:
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    for prefix in ("Question :", "Question:", "Question"):
        line = line.removeprefix(prefix).strip()
    line = line.strip(" \"'«»").strip()
    return line if 8 <= len(line) <= 300 else None


def collection_of(doc_id: str) -> str:
    """The collection a document belongs to: its id's folder (`faq/apt.html` -> `faq`; `12` -> ``)."""
    return doc_id.rpartition("/")[0]


def synthetic_pool(
    chunks: pd.DataFrame, train_docs: set[str], heldout_docs: set[str], cfg: TrainConfig
) -> pd.DataFrame:
    """The chunks synthetic questions may be written for (see `TrainConfig.synthetic_from`), sorted by chunk_id.

    With `exclude_heldout_docs`, chunks of documents that are gold for a held-out question are never in it.
    """
    pool = chunks[~chunks["doc_id"].isin(heldout_docs)] if cfg.exclude_heldout_docs else chunks
    if cfg.synthetic_from == "gold_collections":
        wanted = {collection_of(d) for d in train_docs}
        in_wanted = pool["doc_id"].map(collection_of).isin(wanted)
        if wanted and in_wanted.any():
            log.info(
                "train: synthetic questions from the collections of the train questions' gold documents %s: "
                "%d of %d chunks",
                sorted(wanted),
                int(in_wanted.sum()),
                len(pool),
            )
            pool = pool[in_wanted]
    return pool.sort_values("chunk_id")


def synthetic_prompts(tok: Any, texts: Sequence[str], examples: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The chat prompt asking for one question about each of `texts` (cut to its first 320 tokens), in its language
    (French or English); each (passage, question) of `examples` comes first as an earlier user / assistant turn,
    its passage cut to 160 tokens. `tok` is the generator's tokenizer (its chat template)."""
    import py3langid

    def clip(text: str, tokens: int) -> str:
        return str(tok.decode(tok.encode(text, add_special_tokens=False)[:tokens]))

    shots = [(clip(passage, 160), question) for passage, question in examples]
    prompts = []
    for text in texts:
        system, user = _SYNTH_PROMPTS["fr" if py3langid.classify(text)[0] == "fr" else "en"]
        messages = [{"role": "system", "content": system}]
        for passage, question in shots:
            messages += [
                {"role": "user", "content": user.format(p=passage)},
                {"role": "assistant", "content": question},
            ]
        messages.append({"role": "user", "content": user.format(p=clip(text, 320))})
        prompts.append(str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)))
    return prompts


def synthesize_questions(
    p: Pipeline, chunks: pd.DataFrame, cfg: TrainConfig, examples: Sequence[tuple[str, str]] = ()
) -> pd.DataFrame:
    """Questions for `chunks` (chunk_id, doc_id, title, text) from the LLM; cached in `synthetic_questions`.

    `examples` ((passage, question) pairs, e.g. train-split questions over their gold text) are shown to the model
    before each chunk (`synthetic_prompts`): few-shot prompting in the style of the user's own questions
    (Promptagator, Dai et al. 2022). A cached question is reused when its chunk, model, seed and exact prompt (hash)
    match, so changing the template, the examples or the chunk text writes a new one. An output that is no usable
    question (`_clean_question`) is stored with an empty `question`, so a rerun does not ask again. Returns
    (chunk_id, doc_id, question) for the chunks that got a usable question.
    """
    from rag_spark.generate.ray_qa import make_generator

    gcfg = p.cfg.generate.model_copy(
        update={"model": cfg.synthetic_model, "max_tokens": cfg.synthetic_max_tokens, "temperature": 0.0}
    )
    if gcfg.backend == "none":
        gcfg = gcfg.model_copy(update={"backend": "auto"})
    generator: Any = make_generator(gcfg)
    model = generator.model_id
    tok = generator.tokenizer
    prompts = synthetic_prompts(tok, [passage_text(r.title, r.text) for r in chunks.itertuples()], examples)
    todo = chunks.assign(prompt=prompts, prompt_hash=[hashlib.sha256(x.encode()).hexdigest()[:16] for x in prompts])
    have = pd.DataFrame(columns=["chunk_id", "doc_id", "question", "prompt_hash"])
    if p.lake.exists(S.SYNTHETIC_QUESTIONS):
        cached: pd.DataFrame = (
            p.lake.read(S.SYNTHETIC_QUESTIONS)
            .where((F.col("model_id") == model) & (F.col("seed") == cfg.seed))
            .select("chunk_id", "doc_id", "question", "prompt_hash")
            .toPandas()  # type: ignore[assignment]
        )
        have = cached.merge(todo[["chunk_id", "prompt_hash"]], on=["chunk_id", "prompt_hash"])
    todo = todo[~todo["chunk_id"].isin(set(have["chunk_id"]))]
    log.info("train: %d synthetic questions cached, %d to write with %s", len(have), len(todo), model)
    if len(todo):
        written = usable = 0
        try:
            # One merge per batch: a killed run keeps the questions already written, and the rerun skips them.
            for start in range(0, len(todo), 64):
                part = todo.iloc[start : start + 64]
                outs = generator.generate(list(part["prompt"]))
                rows = [
                    (r.chunk_id, r.doc_id, _clean_question(o.text) or "", model, cfg.seed, r.prompt_hash, p.run_id)
                    for r, o in zip(part.itertuples(), outs, strict=True)
                ]
                p.lake.merge(
                    S.SYNTHETIC_QUESTIONS,
                    p.spark.createDataFrame(rows, S.SYNTHETIC_QUESTIONS.schema),
                    meta={"run_id": p.run_id, "stage": "train-retriever"},
                )
                new = pd.DataFrame([(r[0], r[1], r[2], r[5]) for r in rows], columns=list(have.columns))
                have = pd.concat([have, new], ignore_index=True)
                written += len(part)
                usable += sum(1 for r in rows if r[2])
                log.info("train: %d / %d synthetic questions written (%d usable)", written, len(todo), usable)
        finally:
            close = getattr(generator, "close", None)
            if close is not None:
                close()
    return have.loc[have["question"] != "", ["chunk_id", "doc_id", "question"]]


def _mine_negatives(
    p: Pipeline, questions: list[str], gold_docs: list[set[str]], doc_of: dict[int, str], cfg: TrainConfig
) -> list[list[int]]:
    """Chunk keys of hard negatives per question from the published index of `embed.model`."""
    from rag_spark.embed.encoders import build_encoder
    from rag_spark.index.search import ShardedIndex

    if cfg.hard_negatives == 0:
        return [[] for _ in questions]
    encoder = build_encoder(p.cfg.embed)
    index = ShardedIndex(p.index_root, p.cfg.index, p.cfg.embed)
    out: list[list[int]] = []
    for start in range(0, len(questions), 64):
        vecs = encoder.encode_queries(questions[start : start + 64])
        res = index.search(vecs, cfg.negatives_depth)
        for ids, gold in zip(res.ids, gold_docs[start : start + 64], strict=True):
            cand = [int(k) for k in ids if k >= 0 and doc_of.get(int(k)) not in gold]
            out.append(cand[cfg.negatives_skip :][: cfg.hard_negatives])
    return out


def _usable_sections(cfg: TrainConfig, heldout_chunks: pd.DataFrame, heldout_questions: set[str]) -> list[Section]:
    """The sections of `cfg.section_docs` that may be trained on, a seeded sample of at most `cfg.section_pairs`.

    With `exclude_heldout_docs`, a section that shares a 10-word sequence with a document that is gold for a held-out
    question, or whose heading is a held-out question, is dropped (counted in the log): documentation that copies the
    evaluated documents would otherwise put the held-out answers in the training set.
    """
    assert cfg.section_docs is not None
    found = read_sections(cfg.section_docs)
    kept = found
    if cfg.exclude_heldout_docs:
        held = set().union(*(shingles(t) for t in heldout_chunks["text"])) if len(heldout_chunks) else set()
        questions = {q.casefold().strip() for q in heldout_questions}
        kept = [x for x in found if x.heading.casefold() not in questions and not (shingles(x.text) & held)]
    dropped = len(found) - len(kept)
    rng = np.random.default_rng(cfg.seed)
    if len(kept) > cfg.section_pairs:
        kept = [kept[i] for i in sorted(rng.choice(len(kept), cfg.section_pairs, replace=False))]
    if len(kept) <= cfg.hard_negatives:  # a section's negatives are other sections
        raise ValueError(
            f"train.section_docs: {len(kept)} usable sections under {cfg.section_docs} ({dropped} overlap held-out "
            f"documents or questions; train.section_pairs={cfg.section_pairs}); need more than "
            f"train.hard_negatives={cfg.hard_negatives}"
        )
    log.info(
        "train: %d section pairs from %s (%d sections, %d dropped: they overlap held-out documents or questions)",
        len(kept),
        cfg.section_docs,
        len(found),
        dropped,
    )
    return kept


def _section_negatives(model: Any, qp: str, pp: str, sections: list[Section], cfg: TrainConfig) -> list[list[int]]:
    """Per section, the indices of `cfg.hard_negatives` other sections the base model ranks best for its heading
    (after skipping `negatives_skip`), topped up with seeded random sections."""
    if cfg.hard_negatives == 0:
        return [[] for _ in sections]
    passages = model.encode([pp + x.text for x in sections], normalize_embeddings=True, show_progress_bar=False)
    out: list[list[int]] = []
    rnd = random.Random(cfg.seed)
    for start in range(0, len(sections), 256):
        q = model.encode(
            [qp + x.heading for x in sections[start : start + 256]], normalize_embeddings=True, show_progress_bar=False
        )
        order = np.argsort(-(q @ passages.T), axis=1)[:, : cfg.negatives_depth + 1]
        for i, row in enumerate(order, start):
            neg = [int(j) for j in row if j != i][cfg.negatives_skip :][: cfg.hard_negatives]
            while len(neg) < cfg.hard_negatives:
                j = rnd.randrange(len(sections))
                if j != i and j not in neg:
                    neg.append(j)
            out.append(neg)
    return out


def train_retriever(p: Pipeline) -> TrainResult:
    """Builds the training set, fine-tunes `train.base_model`, saves it (see the module docstring)."""
    from rag_spark.embed.models import resolve_encoder
    from rag_spark.evaluate.run import lake_qrels

    cfg, lake = p.cfg.train, p.lake
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    inputs: dict[str, int] = {}
    queries: pd.DataFrame = p._read(S.QUERIES, inputs).toPandas()  # type: ignore[assignment]
    qrels = lake_qrels(lake, p._read(S.QRELS, inputs))
    qrels = qrels[qrels["score"] > 0]
    chunks: pd.DataFrame = (
        p._read(S.CHUNKS, inputs).select("chunk_key", "chunk_id", "doc_id", "title", "text").toPandas()  # type: ignore[assignment]
    )
    split = split_ids(queries["query_id"], p.cfg.splits)
    heldout_docs = set(qrels[qrels["query_id"].isin(split[HELDOUT])]["doc_id"])
    gold_by_q = qrels.groupby("query_id")["doc_id"].apply(set).to_dict()
    text_of = {r.chunk_key: passage_text(r.title, r.text) for r in chunks.itertuples()}
    doc_of = dict(zip(chunks["chunk_key"].astype(int), chunks["doc_id"], strict=True))
    id_of = dict(zip(chunks["chunk_key"].astype(int), chunks["chunk_id"], strict=True))

    from sentence_transformers import SentenceTransformer

    from rag_spark.embed.encoders import pick_device

    device = pick_device(cfg.device)
    base_path = resolve_encoder(cfg.base_model)
    model = SentenceTransformer(base_path, device=device)
    model.max_seq_length = cfg.max_seq_length
    # Models that expect prefixes (e5: `query: ` / `passage: `) declare them as prompts; train as they are used.
    qp, pp = model_prompts(model)

    # (source, query_id, question, positive chunk key, gold docs)
    pairs: list[tuple[str, str | None, str, int, set[str]]] = []
    if cfg.use_qa:
        train_q = queries[queries["query_id"].isin(split[TRAIN]) & queries["query_id"].isin(gold_by_q.keys())]
        by_doc = chunks.groupby("doc_id")["chunk_key"].apply(list).to_dict()
        for r in train_q.itertuples():
            cand = [int(k) for d in sorted(gold_by_q[r.query_id]) for k in by_doc.get(d, [])]
            if not cand:
                continue
            q = model.encode([qp + r.text], normalize_embeddings=True, show_progress_bar=False)
            c = model.encode([pp + text_of[k] for k in cand], normalize_embeddings=True, show_progress_bar=False)
            pairs.append(("qa", r.query_id, r.text, cand[int(np.argmax(c @ q[0]))], gold_by_q[r.query_id]))
    n_qa = len(pairs)
    if cfg.synthetic_questions:
        t = time.perf_counter()
        train_docs = set(qrels[qrels["query_id"].isin(split[TRAIN])]["doc_id"])
        pool = synthetic_pool(chunks, train_docs, heldout_docs, cfg)
        rng = np.random.default_rng(cfg.seed)
        sample = pool.iloc[rng.choice(len(pool), size=min(cfg.synthetic_questions, len(pool)), replace=False)]
        synth = synthesize_questions(p, sample, cfg)
        key_of = {cid: int(k) for k, cid in id_of.items()}
        for r in synth.sort_values("chunk_id").itertuples():
            pairs.append(("synthetic", None, r.question, key_of[r.chunk_id], {r.doc_id}))
        seconds["synthesize"] = round(time.perf_counter() - t, 1)
    n_synthetic = len(pairs) - n_qa
    sections: list[Section] = []
    if cfg.section_docs and cfg.section_pairs:
        t = time.perf_counter()
        heldout_q = set(queries[queries["query_id"].isin(split[HELDOUT])]["text"])
        sections = _usable_sections(cfg, chunks[chunks["doc_id"].isin(heldout_docs)], heldout_q)
        seconds["sections"] = round(time.perf_counter() - t, 1)
    if len(pairs) + len(sections) < 2:
        raise ValueError(
            f"train-retriever: only {len(pairs) + len(sections)} training pairs (train split has "
            f"{len(split[TRAIN])} questions; synthetic_questions={cfg.synthetic_questions}; "
            f"{len(sections)} section pairs); need at least 2"
        )
    t = time.perf_counter()
    negatives = _mine_negatives(p, [x[2] for x in pairs], [x[4] for x in pairs], doc_of, cfg)
    seconds["mine_negatives"] = round(time.perf_counter() - t, 1)
    # Every pair needs the same number of negatives for the loss's columns: top up with seeded random chunks.
    rnd = random.Random(cfg.seed)
    all_keys = sorted(text_of)
    for (_, _, _, pos, gold), neg in zip(pairs, negatives, strict=True):
        while len(neg) < cfg.hard_negatives:
            k = int(all_keys[rnd.randrange(len(all_keys))])
            if doc_of[k] not in gold and k != pos and k not in neg:
                neg.append(k)
    if sections:
        # Section passages join the lookups under negative keys (chunk keys are never negative): pair i's positive
        # is key -1 - i, its negatives other sections, mined with the base model among the sections.
        t = time.perf_counter()
        for i, sec in enumerate(sections):
            text_of[-1 - i], id_of[-1 - i], doc_of[-1 - i] = sec.text, sec.section_id, sec.section_id
            pairs.append(("section", None, sec.heading, -1 - i, {sec.section_id}))
        negatives += [[-1 - j for j in row] for row in _section_negatives(model, qp, pp, sections, cfg)]
        p.lake.merge(
            S.TRAIN_SECTIONS,
            p.spark.createDataFrame(
                [(x.section_id, x.root, x.source, x.heading, x.text, p.run_id) for x in sections],
                S.TRAIN_SECTIONS.schema,
            ),
            meta={"run_id": p.run_id, "stage": "train-retriever"},
        )
        inputs["train_sections"] = lake.version(S.TRAIN_SECTIONS) or 0
        seconds["sections"] += round(time.perf_counter() - t, 1)

    digest = hashlib.sha256(
        json.dumps(
            {
                "cfg": cfg.model_dump(mode="json"),
                "splits": p.cfg.splits.model_dump(mode="json"),
                "pairs": [(x[2], id_of[x[3]], [id_of[n] for n in ns]) for x, ns in zip(pairs, negatives, strict=True)],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    name = f"{cfg.name}-{digest}"
    model_dir = Path(cfg.output_dir).expanduser().resolve() / name
    counts = {"qa": n_qa, "synthetic": n_synthetic, "section": len(sections), "total": len(pairs)}
    rows = [
        (name, f"{src}:{i:06d}", src, qid, q, id_of[pos], [id_of[n] for n in negs], p.run_id)
        for i, ((src, qid, q, pos, _), negs) in enumerate(zip(pairs, negatives, strict=True))
    ]
    p.lake.merge(
        S.TRAINING_PAIRS,
        p.spark.createDataFrame(rows, S.TRAINING_PAIRS.schema),
        meta={"run_id": p.run_id, "stage": "train-retriever", "inputs": inputs},
        delete_missing=f"t.model_name = '{name}'",
    )
    inputs["training_pairs"] = lake.version(S.TRAINING_PAIRS) or 0
    existing = training_metadata(model_dir)
    if existing is not None:
        log.info("train: %s already trained on exactly these pairs; reusing it", model_dir)
        return TrainResult(model_dir, counts, seconds, existing["losses"], reused=True)

    t = time.perf_counter()
    triples = [
        (qp + x[2], pp + text_of[x[3]], [pp + text_of[n] for n in ns]) for x, ns in zip(pairs, negatives, strict=True)
    ]
    losses, precision = fit_bi_encoder(model, triples, cfg)
    seconds["train"] = round(time.perf_counter() - t, 1)
    tmp = model_dir.with_name(f".{name}.tmp")
    model.save(str(tmp))
    meta = {
        "name": name,
        "base_model": cfg.base_model,
        "splits": p.cfg.splits.model_dump(mode="json"),
        "train_query_ids": sorted({x[1] for x in pairs if x[1] is not None}),
        "heldout_query_ids": split[HELDOUT],
        "pairs": counts,
        "inputs": inputs,
        "settings": cfg.model_dump(mode="json"),
        "device": device,
        "precision": precision,
        "losses": losses,
        "seconds": seconds,
        "run_id": p.run_id,
    }
    (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
    import shutil

    if model_dir.exists():
        shutil.rmtree(model_dir)
    tmp.rename(model_dir)
    seconds["total"] = round(time.perf_counter() - t0, 1)
    log.info("train: saved %s (%s pairs, loss %s) in %.0f s", model_dir, counts, losses, seconds["total"])
    return TrainResult(model_dir, counts, seconds, losses)


def fine_tuned_embed_config(base: EmbedConfig, model_dir: str | Path) -> EmbedConfig:
    """embed settings that use a fine-tuned folder (sentence-transformers backend; no configured prefixes: the
    folder's own prompts, kept from its base model, apply)."""
    return base.model_copy(
        update={"backend": "sentence-transformers", "model": str(model_dir), "query_prefix": "", "passage_prefix": ""}
    )
