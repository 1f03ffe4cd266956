"""The whole pipeline on the tiny real dataset through the real components: Spark + Delta, Ray actors,
sentence-transformers (packaged MiniLM), sharded FAISS, vLLM on the CPU (packaged SmolLM2), Bokeh."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from rag_spark import schema as S
from rag_spark.config import load_config
from rag_spark.embed.models import model_id
from rag_spark.index.manifest import current_manifest
from rag_spark.pipeline import Pipeline

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(spark, ray_local, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("e2e")
    cfg = load_config(ROOT / "configs" / "tiny.yaml").with_overrides(
        dataset=str(ROOT / "tests/data/tiny"), out=str(out)
    )
    pipeline = Pipeline(cfg, spark=spark)
    results = pipeline.run()
    return pipeline, results, out


def test_tables_counts_and_accounting(run) -> None:  # type: ignore[no-untyped-def]
    p, _, _ = run
    lake = p.lake
    for table in (S.BRONZE, S.SILVER, S.CHUNKS, S.EMBEDDINGS, S.RETRIEVALS, S.ANSWERS, S.METRICS, S.LINEAGE):
        assert lake.read(table).schema.simpleString() == table.schema.simpleString(), table.name
    bronze = lake.read(S.BRONZE).count()
    quarantine = lake.read(S.QUARANTINE)
    ingest_q = quarantine.where("stage = 'ingest'").count()
    # 11 files + 13 JSONL lines (the malformed one and the empty file are quarantined)
    assert bronze + ingest_q == 11 + 14
    assert {r.reason for r in quarantine.where("stage = 'ingest'").collect()} == {"empty file", "malformed JSON line"}
    dups = lake.read(S.DUPLICATES).collect()
    assert [(d.doc_id, d.duplicate_of) for d in dups] == [("wiki/9002-copy", "wiki/9002")]
    silver = lake.read(S.SILVER).count()
    clean_q = quarantine.where("stage = 'clean'").count()
    assert bronze == silver + len(dups) + clean_q
    metrics = json.loads((Path(p.cfg.out) / "metrics.json").read_text())
    c = metrics["counts"]
    assert c["documents"] == c["kept"] + c["duplicates"] + c["quarantined"] == 25


def test_versions_and_lineage(run) -> None:  # type: ignore[no-untyped-def]
    p, results, _ = run
    lake = p.lake
    stages = {r.stage for r in lake.read(S.LINEAGE).where(F.col("run_id") == p.run_id).collect()}
    assert stages == {"ingest", "clean", "chunk", "embed", "index", "retrieve", "generate", "evaluate", "report"}
    v = lake.version(S.CHUNKS)
    assert v is not None
    meta = lake.commit_metadata(S.CHUNKS, v)
    assert meta["run_id"] == p.run_id and meta["config_hash"] == p.cfg.stage_hash("chunk")
    assert meta["inputs"] == {"silver": results["clean"].outputs["silver"]}


def test_index_holds_every_chunk(run) -> None:  # type: ignore[no-untyped-def]
    p, _, _ = run
    manifest, _ = current_manifest(p.index_root)
    chunks = p.lake.read(S.CHUNKS).count()
    assert manifest.ntotal == chunks == sum(s.count for s in manifest.shards)
    assert len(manifest.shards) == 2 and all(s.count > 0 for s in manifest.shards)
    assert manifest.source_version == p.lake.version(S.EMBEDDINGS)
    assert manifest.model_id == "all-MiniLM-L6-v2" and manifest.dim == 384


def test_metrics_in_range(run) -> None:  # type: ignore[no-untyped-def]
    p, _, out = run
    m = json.loads((out / "metrics.json").read_text())
    r = m["retrieval"]
    for key in ("mrr@10", "recall@1", "recall@5", "recall@10", "ndcg@10"):
        assert 0.0 <= r[key] <= 1.0
    assert r["recall@1"] <= r["recall@5"] <= r["recall@10"]
    # Six French questions against 22 documents: a working dense retriever finds most gold sections.
    assert r["recall@10"] >= 0.5 and r["mrr@10"] >= 0.25
    assert r["latency_ms_p50"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"]
    a = m["answers"]
    assert a["answered"] == 6 and a["answered_no_retrieval"] == 6
    assert 0.0 <= a["f1"] <= 1.0 and 0.0 <= a["em"] <= 1.0
    for key in ("f1", "rouge_l", "f1_no_retrieval"):
        low, high = a[f"{key}_ci95"]
        assert 0.0 <= low <= a[key] <= high <= 1.0, key
    assert a["unanswerable"] == 0 and a["idk_rate_unanswerable"] is None  # n = 0, reported as such
    comparison = m["comparisons"]["f1: retrieval - no_retrieval"]
    assert comparison["n"] == 6 and comparison["diff"] == pytest.approx(a["f1"] - a["f1_no_retrieval"], abs=1e-6)
    assert 0.0 <= comparison["p"] <= 1.0
    assert set(m["timings_s"]) >= {"ingest", "clean", "chunk", "embed", "index", "retrieve", "generate"}
    n_chunks = p.lake.read(S.CHUNKS).count()
    assert m["index"]["backend"] == "faiss" and m["index"]["chunks"] == n_chunks and m["index"]["bytes"] > 0
    assert m["run_id"] == p.run_id and m["config_hash"] == p.cfg.config_hash


def test_answers_cite_retrieved_chunks(run) -> None:  # type: ignore[no-untyped-def]
    p, _, _ = run
    answers = p.lake.read(S.ANSWERS).where(F.col("config_hash") == p.cfg.stage_hash("generate")).collect()
    assert len(answers) == 6
    for a in answers:
        assert a.answer.strip() and a.tokens_out > 0 and a.tokens_in > 0
        assert set(a.cited_chunk_ids) <= set(a.context_chunk_ids)
        assert a.model_id.startswith("SmolLM2-135M-Instruct")


def test_no_retrieval_baseline_asks_the_model_without_context(run) -> None:  # type: ignore[no-untyped-def]
    p, _, _ = run
    baseline = p.lake.read(S.ANSWERS).where(F.col("config_hash") == p.cfg.baseline_hash).collect()
    assert len(baseline) == 6 and p.cfg.baseline_hash != p.cfg.stage_hash("generate")
    for a in baseline:
        # The model was called (no "I don't know" short-circuit) with a prompt that holds no chunk.
        assert a.tokens_out > 0 and a.context_chunk_ids == [] and a.cited_chunk_ids == []
    rag = p.lake.read(S.ANSWERS).where(F.col("config_hash") == p.cfg.stage_hash("generate")).collect()
    with_context = {a.query_id: a for a in rag}
    assert all(a.tokens_in < with_context[a.query_id].tokens_in for a in baseline)  # shorter prompts


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self._in = False

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self._in = tag == "h2"

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        if self._in and data.strip():
            self.h2.append(data.strip())
            self._in = False


def test_report(run) -> None:  # type: ignore[no-untyped-def]
    p, _, out = run
    html = (out / "report.html").read_text()
    parser = _Sections()
    parser.feed(html)
    for section in ("Overview", "Configurations", "Retrieval", "Data statistics", "Answer quality", "Case studies"):
        assert any(section in h for h in parser.h2), section
    assert p.run_id in html and p.cfg.config_hash in html
    assert "cdn.bokeh.org" not in html


def test_rerun_is_idempotent(run, spark) -> None:  # type: ignore[no-untyped-def]
    p, _, _ = run
    before = {
        t.name: sorted(map(tuple, p.lake.read(t).drop("run_id").collect())) for t in (S.BRONZE, S.SILVER, S.CHUNKS)
    }
    again = Pipeline(p.cfg, spark=spark)
    res = again.run(["ingest", "clean", "chunk", "embed", "generate"])
    assert res["ingest"].info["files_read"] == 0  # incremental: unchanged files are not read again
    assert res["embed"].info["embedded"] == 0
    assert res["generate"].info["to_answer"] == 0 and res["generate"].info["baseline_to_answer"] == 0
    after = {
        t.name: sorted(map(tuple, p.lake.read(t).drop("run_id").collect())) for t in (S.BRONZE, S.SILVER, S.CHUNKS)
    }
    assert before == after
    assert p.lake.read(S.ANSWERS).count() == 12  # 6 with retrieval + 6 of the no-retrieval baseline


def test_answers_follow_their_context(run, spark) -> None:  # type: ignore[no-untyped-def]
    """An answer whose stored context fingerprint no longer matches the question's context (as after an edit of a
    retrieved chunk: same chunk id, new text) is answered again by the generate stage, and so is one without a
    fingerprint (written before the column existed); every other answer is kept."""
    from delta.tables import DeltaTable

    p, _, _ = run
    h = p.cfg.stage_hash("generate")
    before = {r.query_id: r for r in p.lake.read(S.ANSWERS).where(F.col("config_hash") == h).collect()}
    stale, legacy = sorted(q for q, r in before.items() if r.context_chunk_ids)[:2]
    assert all(r.context_hash for r in before.values())
    answers = DeltaTable.forPath(spark, p.lake.path(S.ANSWERS))
    for qid, value in ((stale, F.lit("0" * 16)), (legacy, F.lit(None).cast("string"))):
        answers.update((F.col("config_hash") == h) & (F.col("query_id") == qid), {"context_hash": value})
    again = Pipeline(p.cfg, spark=spark)
    info = again.run(["generate"])["generate"].info
    assert info["to_answer"] == 2 and info["context_changed"] == 1 and info["baseline_to_answer"] == 0
    after = {r.query_id: r for r in p.lake.read(S.ANSWERS).where(F.col("config_hash") == h).collect()}
    assert set(after) == set(before)
    for qid in (stale, legacy):
        assert after[qid].run_id == again.run_id and after[qid].context_hash == before[qid].context_hash
        assert after[qid].prompt_hash == before[qid].prompt_hash  # the same context, rebuilt into the same prompt
    assert all(after[q] == before[q] for q in before if q not in (stale, legacy))


def test_batch_qa_resumes_after_a_kill(run, spark, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`qa` on a TSV questions file with llama.cpp, rounds of 2: killed while merging its second round, the rerun
    answers only the rest; a third run answers nothing; the answers table holds each question once."""
    from rag_spark.config import load_config_dict
    from rag_spark.lake import Lake

    p, _, _ = run
    queries = sorted((r.query_id, r.text) for r in p.lake.read(S.QUERIES).collect())
    questions = tmp_path / "questions.tsv"
    questions.write_text("".join(f"{q}\t{t}\n" for q, t in queries), encoding="utf-8")
    data = p.cfg.model_dump(mode="json")
    data["generate"] |= {"backend": "llamacpp", "max_tokens": 16, "parallel_slots": 2, "cpu_threads": 1}
    data["qa"] = {"questions": str(questions), "batch_size": 2}
    cfg = load_config_dict(data)

    real_merge = Lake.merge
    answer_merges = []

    def merge_then_die(self, table, df, **kwargs):  # type: ignore[no-untyped-def]
        if table is S.ANSWERS:
            answer_merges.append(1)
            if len(answer_merges) == 2:
                raise RuntimeError("killed")
        return real_merge(self, table, df, **kwargs)

    monkeypatch.setattr(Lake, "merge", merge_then_die)
    killed = Pipeline(cfg, spark=spark)
    with pytest.raises(RuntimeError, match="killed"):
        killed.qa()
    monkeypatch.setattr(Lake, "merge", real_merge)
    h = killed.cfg.stage_hash("generate")
    assert h != p.cfg.stage_hash("generate")  # another backend, another config: the vLLM answers stay apart
    answers = p.lake.read(S.ANSWERS).where(F.col("config_hash") == h)
    assert {r.run_id for r in answers.collect()} == {killed.run_id} and answers.count() == 2

    resumed = Pipeline(cfg, spark=spark)
    res = resumed.qa()
    assert res.info["answered"] == len(queries) - 2 and res.info["rounds"] == 2
    rows = p.lake.read(S.ANSWERS).where(F.col("config_hash") == h).collect()
    assert sorted(r.query_id for r in rows) == [q for q, _ in queries]  # each question once
    assert sum(r.run_id == killed.run_id for r in rows) == 2  # the first round was not redone
    for r in rows:
        assert r.model_id == "SmolLM2-135M-Instruct.Q4_1@b179c9523d0e+gguf" and r.tokens_in > 0
        assert r.context_chunk_ids and set(r.cited_chunk_ids) <= set(r.context_chunk_ids)
    retrieved = p.lake.read(S.RETRIEVALS).where(F.col("config_hash") == resumed.cfg.stage_hash("retrieve"))
    assert retrieved.select("query_id").distinct().count() == len(queries)

    version = p.lake.version(S.ANSWERS)
    again = Pipeline(cfg, spark=spark).qa()
    assert again.info["answered"] == 0 and p.lake.version(S.ANSWERS) == version
    assert p.lake.read(S.ANSWERS).where(F.col("config_hash") == h).count() == len(queries)


def test_bm25_and_hybrid_retrieve_stages(run, spark) -> None:  # type: ignore[no-untyped-def]
    """The retrieve stage with each retriever: rows under its own config hash, the BM25 build saved beside the
    FAISS builds and reused by the next run, and the lexical retriever finding the French FAQ sections."""
    from rag_spark.evaluate.retrieval import per_query_metrics

    p, _, _ = run
    qrels = p.lake.read(S.QRELS).toPandas()
    mrr = {}
    for retriever in ("bm25", "hybrid"):
        cfg = p.cfg.with_dotted({"retrieve.retriever": retriever})
        q = Pipeline(cfg, spark=spark)
        res = q.run(["retrieve"])["retrieve"]
        assert res.info["retriever"] == retriever and any(k.startswith("bm25:") for k in res.inputs)
        if retriever == "hybrid":
            assert any(k.startswith("index:") for k in res.inputs)
        rows = p.lake.read(S.RETRIEVALS).where(F.col("config_hash") == cfg.stage_hash("retrieve")).toPandas()
        assert set(rows["query_id"]) == set(qrels["query_id"])
        assert rows.groupby("query_id")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
        mrr[retriever] = per_query_metrics(qrels, rows, [1, 5, 10], 10)["mrr@10"].mean()
    builds = [d for d in p.bm25_root.iterdir() if not d.name.startswith(".")]
    assert len(builds) == 1 and (builds[0] / "bm25.json").is_file()
    assert json.loads((builds[0] / "bm25.json").read_text())["analyzer"]["language"] == "fr"
    assert mrr["bm25"] >= 0.5, mrr  # six French questions, 22 documents: stemmed BM25 finds their sections


def test_reranked_retrieve_stage(run, spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The retrieve stage with a cross-encoder over the hybrid's head, on BM25 settings never built before: the
    chunks are read once for both the BM25 build (every chunk in it) and the reranker, and each question's reranked
    head comes out in the cross-encoder's order (its head is untrained: the order, not relevance, is checked)."""
    from sentence_transformers import CrossEncoder

    from rag_spark.embed.encoders import passage_text
    from rag_spark.embed.models import resolve_encoder
    from rag_spark.retrieve.lexical import BM25Index

    p, _, _ = run
    ce = tmp_path / "ce"
    CrossEncoder(resolve_encoder("packaged:all-MiniLM-L6-v2"), num_labels=1).save(str(ce))
    cfg = p.cfg.with_dotted(
        {
            "retrieve.retriever": "hybrid",
            "retrieve.bm25.k1": 1.1,  # a new BM25 build, made from the texts the reranker reads
            "retrieve.rerank.method": "cross-encoder",
            "retrieve.rerank.model": str(ce),
            "retrieve.rerank.top_n": 5,
        }
    )
    res = Pipeline(cfg, spark=spark).run(["retrieve"])["retrieve"]
    chunks = p.lake.read(S.CHUNKS).select("chunk_id", "title", "text").toPandas()
    (key,) = [k.removeprefix("bm25:") for k in res.inputs if k.startswith("bm25:")]
    assert BM25Index.load(p.bm25_root / key).ntotal == len(chunks)
    rows = p.lake.read(S.RETRIEVALS).where(F.col("config_hash") == cfg.stage_hash("retrieve")).toPandas()
    questions = dict(p.lake.read(S.QUERIES).select("query_id", "text").toPandas().itertuples(index=False))
    assert set(rows["query_id"]) == set(questions)
    text_of = {r.chunk_id: passage_text(r.title, r.text) for r in chunks.itertuples()}
    model = CrossEncoder(str(ce))
    for qid, g in rows.groupby("query_id"):
        head = g[g["score"] >= 1.0].sort_values("rank")  # reranked chunks score in [1, 2], the rest below 1
        assert len(head) >= 2, (qid, g)
        scores = model.predict([(questions[qid], text_of[c]) for c in head["chunk_id"]])
        assert np.all(np.diff(np.asarray(scores).reshape(-1)) <= 1e-5), (qid, scores)


def test_bad_reranker_fails_before_the_retriever_is_built(run, spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A cross-encoder path that is not there stops the retrieve stage with an error naming it, before the chunks
    are read and before a BM25 build for new settings is made; no retrievals are written for that config."""
    p, _, _ = run
    missing = tmp_path / "no-such-cross-encoder"
    cfg = p.cfg.with_dotted(
        {
            "retrieve.retriever": "hybrid",
            "retrieve.bm25.k1": 1.7,  # settings no other test builds
            "retrieve.rerank.method": "cross-encoder",
            "retrieve.rerank.model": str(missing),
        }
    )
    builds_before = sorted(p.bm25_root.glob("*"))
    with pytest.raises(FileNotFoundError, match="no-such-cross-encoder"):
        Pipeline(cfg, spark=spark).run(["retrieve"])
    assert sorted(p.bm25_root.glob("*")) == builds_before
    written = p.lake.read(S.RETRIEVALS).where(F.col("config_hash") == cfg.stage_hash("retrieve")).count()
    assert written == 0


def test_train_retriever_end_to_end(run, spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """train-retriever on the tiny lake: split fixed and disjoint, synthetic questions stored, hard negatives mined
    from the index, a model folder that embeds differently from its base, and the embed/index/retrieve stages
    running on it by config."""
    from sentence_transformers import SentenceTransformer

    from rag_spark.embed.models import resolve_encoder
    from rag_spark.retrieve.splits import HELDOUT, TRAIN, split_ids
    from rag_spark.retrieve.train import fine_tuned_embed_config, train_retriever, training_metadata

    p, _, _ = run
    qids = [r.query_id for r in p.lake.read(S.QUERIES).collect()]
    split = split_ids(qids, p.cfg.splits)
    heldout_docs = {r.doc_id for r in p.lake.read(S.QRELS).collect() if r.query_id in split[HELDOUT]}
    heldout_text = p.lake.read(S.CHUNKS).where(F.col("doc_id").isin(sorted(heldout_docs))).first()["text"]
    heldout_question = p.lake.read(S.QUERIES).where(F.col("query_id") == split[HELDOUT][0]).first()["text"]
    # Section docs: three usable sections, one copying a held-out answer, one headed by a held-out question.
    docs = tmp_path / "section-docs"
    docs.mkdir()
    filler = "Ce paragraphe décrit la procédure en détail, avec les commandes et les fichiers de configuration. "
    (docs / "guide.html").write_text(
        "<html><body>"
        f"<h2>Configurer le clavier</h2><p>{filler}Utilisez dpkg-reconfigure keyboard-configuration.</p>"
        f"<h2>Planifier des tâches</h2><p>{filler}La commande crontab -e édite la table de cron.</p>"
        f"<h2>Copie d'une réponse</h2><p>Préambule. {heldout_text}</p>"
        f"<h2>{heldout_question}</h2><p>{filler}Une autre réponse à la même question.</p>"
        "</body></html>"
    )
    (docs / "notes.md").write_text(f"# Monter un partage Windows\n\n{filler}mount -t cifs //serveur/partage /mnt\n")
    cfg = p.cfg.with_dotted(
        {
            "generate.backend": "llamacpp",
            "generate.parallel_slots": 2,
            "generate.cpu_threads": 2,
            "train.synthetic_questions": 4,
            "train.synthetic_model": "packaged:SmolLM2-135M-Instruct",
            "train.section_docs": str(docs),
            "train.epochs": 1,
            "train.batch_size": 4,
            "train.output_dir": str(tmp_path / "retrievers"),
        }
    )
    q = Pipeline(cfg, spark=spark)
    res = train_retriever(q)
    meta = training_metadata(res.model_dir)
    assert meta is not None and not res.reused and meta["precision"] == "fp32"  # auto on the CPU
    assert split == split_ids(reversed(qids), cfg.splits)  # fixed by seed, not by order
    assert set(meta["train_query_ids"]) <= set(split[TRAIN])
    assert set(meta["heldout_query_ids"]) == set(split[HELDOUT])
    assert not set(meta["train_query_ids"]) & set(meta["heldout_query_ids"])
    pairs = p.lake.read(S.TRAINING_PAIRS).where(F.col("model_name") == res.model_dir.name).collect()
    assert len(pairs) == res.pairs["total"] >= 2 and res.pairs["qa"] == len(meta["train_query_ids"])
    assert all(len(r.negative_chunk_ids) == 1 and r.positive_chunk_id not in r.negative_chunk_ids for r in pairs)
    assert {r.query_id for r in pairs if r.source == "qa"} <= set(split[TRAIN])
    # Section pairs: the heading is the question, positive and negatives are stored sections; the copy of a
    # held-out answer and the held-out question are not trained on.
    sections = {r.section_id: r for r in p.lake.read(S.TRAIN_SECTIONS).collect()}
    by_source = {src: [r for r in pairs if r.source == src] for src in ("qa", "synthetic", "section")}
    assert res.pairs["section"] == len(by_source["section"]) == 3 == len(sections)
    assert {r.question for r in by_source["section"]} == {
        "Configurer le clavier",
        "Planifier des tâches",
        "Monter un partage Windows",
    }
    for r in by_source["section"]:
        assert sections[r.positive_chunk_id].heading == r.question
        assert set(r.negative_chunk_ids) <= set(sections) - {r.positive_chunk_id}
    chunk_ids = {r.chunk_id for r in p.lake.read(S.CHUNKS).select("chunk_id").collect()}
    assert all(
        {r.positive_chunk_id, *r.negative_chunk_ids} <= chunk_ids for r in by_source["qa"] + by_source["synthetic"]
    )
    synth = [r for r in p.lake.read(S.SYNTHETIC_QUESTIONS).collect() if r.question]  # "": no usable question
    assert res.pairs["synthetic"] == len(synth) > 0 and not {r.doc_id for r in synth} & heldout_docs
    text = "Comment installer un paquet Debian ?"
    base = SentenceTransformer(resolve_encoder(cfg.train.base_model)).encode([text])[0]
    tuned = SentenceTransformer(str(res.model_dir)).encode([text])[0]
    assert float(base @ tuned / (np.linalg.norm(base) * np.linalg.norm(tuned))) < 0.9999
    # Same data and settings: the model is reused, not trained again.
    assert train_retriever(Pipeline(cfg, spark=spark)).reused
    # The fine-tuned folder drives embed/index/retrieve through config.
    ft = cfg.model_copy(update={"embed": fine_tuned_embed_config(cfg.embed, res.model_dir)})
    stages = Pipeline(ft, spark=spark).run(["embed", "index", "retrieve"])
    assert stages["embed"].info["embedded"] == p.lake.read(S.CHUNKS).count()
    manifest, _ = current_manifest(Pipeline(ft, spark=spark).index_root)
    assert manifest.model_id == res.model_dir.name


def _backend_stages(p: Pipeline, spark, overrides: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    """The index and retrieve stages on an external backend: the index holds every embedded chunk, the lineage
    names the backend's physical index, rerunning the index stage writes nothing, and the exact backend ranks
    the same top document as the FAISS Flat run for every question."""
    cfg = p.cfg.with_dotted(overrides)
    backend = cfg.index.backend
    q = Pipeline(cfg, spark=spark)
    stages = q.run(["index", "retrieve"])
    info = stages["index"].info
    n_emb = p.lake.read(S.EMBEDDINGS).where(F.col("model_id") == model_id(cfg.embed.model)).count()
    assert info["backend"] == backend and info["mode"] == "full" and stages["index"].rows == n_emb
    out_keys = [k for k in stages["index"].outputs if k.startswith(f"{backend}:")]
    assert out_keys == [f"{backend}:{info['physical']}"]
    lineage = p.lake.read(S.LINEAGE).where((F.col("run_id") == q.run_id) & (F.col("stage") == "index")).first()
    assert lineage is not None and f"{backend}:{info['physical']}" in lineage["outputs"]
    assert f"{backend}:{info['physical']}" in stages["retrieve"].inputs
    again = Pipeline(cfg, spark=spark).run(["index"])["index"].info
    assert (again["mode"], again["upserted"], again["deleted"], again["physical"]) == (
        "incremental", 0, 0, info["physical"]
    )  # fmt: skip
    top = {}
    for h in (p.cfg.stage_hash("retrieve"), cfg.stage_hash("retrieve")):
        rows = p.lake.read(S.RETRIEVALS).where((F.col("config_hash") == h) & (F.col("rank") == 1)).collect()
        top[h] = {r.query_id: r.doc_id for r in rows}
    assert top[p.cfg.stage_hash("retrieve")] == top[cfg.stage_hash("retrieve")]


def test_milvus_backend_stages(run, spark) -> None:  # type: ignore[no-untyped-def]
    p, _, _ = run
    _backend_stages(p, spark, {"index.backend": "milvus"})
    assert (Path(p.cfg.index_base) / "milvus.db").is_dir()  # Milvus Lite's folder beside the FAISS builds


def test_opensearch_backend_stages(run, spark) -> None:  # type: ignore[no-untyped-def]
    from rag_spark.index.opensearch_node import LocalOpenSearch, artifacts_dir

    if not (artifacts_dir() / ".fetched").exists():
        pytest.skip(f"OpenSearch artifacts not in {artifacts_dir()} (`make opensearch` fetches them)")
    p, _, _ = run
    with LocalOpenSearch() as node:
        url = {"index.opensearch.url": node.url, "index.opensearch.dense": "exact"}
        _backend_stages(p, spark, {"index.backend": "opensearch", **url})
        cfg = p.cfg.with_dotted({"index.backend": "opensearch", **url, "retrieve.retriever": "bm25"})
        res = Pipeline(cfg, spark=spark).run(["retrieve"])["retrieve"]
        assert res.info["retriever"] == "bm25" and any(k.startswith("opensearch:") for k in res.inputs)
