"""`rag-spark` command line: run the whole pipeline or one stage, prepare the demo data, prepare models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rag_spark import storage
from rag_spark.config import ConfigError, PipelineConfig, load_config

log = logging.getLogger("rag_spark")

_STAGE_HELP = {
    "ingest": "dataset folder -> bronze, quarantine, queries, qrels, gold_answers",
    "clean": "bronze -> silver (normalized, exact + near-duplicate dedup), duplicates",
    "chunk": "silver -> chunks",
    "embed": "chunks -> embeddings (Ray actor pool)",
    "index": "embeddings -> sharded FAISS index + manifest",
    "retrieve": "queries -> retrievals (top-k per question, latency)",
    "generate": "retrievals -> answers (vLLM)",
    "evaluate": "retrievals + answers -> metrics, eval_details, metrics.json",
    "report": "tables -> report.html",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (defaults apply to every field it omits)")
    p.add_argument("--dataset", help="dataset folder (overrides `dataset`)")
    p.add_argument("--out", help="output folder (overrides `out`)")
    p.add_argument("--lake", help="root of the Delta tables (overrides `lake`; default <out>/lake)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _full_refresh(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--full-refresh",
        action="store_true",
        help="ingest: read every source in full for this run, ignoring file fingerprints and stored watermarks "
        "(sees rows deleted in a database and API records without a modification field)",
    )


def _print_ingest(info: dict[str, object]) -> None:
    """How the ingest stage read each database/API source (full, from which watermark, not modified)."""
    from rag_spark.ingest.state import describe

    sources = info.get("sources") or []
    assert isinstance(sources, list)
    print(
        f"ingest:  {info.get('bronze')} documents in bronze, {info.get('quarantined')} quarantined; files "
        f"{info.get('files_read')} read, {info.get('files_unchanged')} unchanged"
        + ("  (full refresh)" if info.get("full_refresh") else "")
    )
    for read in sources:
        print(f"  {describe(read)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-spark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every stage (or --stages a,b,c)")
    _common(run)
    run.add_argument("--stages", help="comma-separated subset of stages, in pipeline order")
    _full_refresh(run)
    for stage, help_text in _STAGE_HELP.items():
        stage_parser = sub.add_parser(stage, help=help_text)
        _common(stage_parser)
        if stage == "ingest":
            _full_refresh(stage_parser)
        if stage == "report":
            stage_parser.add_argument(
                "--run",
                help="regenerate the report of this run id from the Delta tables alone (its configuration and "
                "metrics come from the `runs` table; --lake or --config/--out locate the lake; written to "
                "--out/report.html, default the run's own out folder)",
            )
    sw = sub.add_parser(
        "sweep",
        help="run a grid of configurations over one lake (unchanged stages reused) and write one report comparing them",
    )
    sw.add_argument("--config", type=Path, required=True, help="sweep YAML: base, overrides, grid, variants, out")
    sw.add_argument("--out", help="sweep folder (overrides the sweep file's `out`)")
    sw.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    qa = sub.add_parser(
        "qa",
        help="batch QA: questions (file or queries table) -> retrievals + answers, merged round by round; a rerun "
        "answers only the missing ones (needs an index: run the earlier stages first)",
    )
    _common(qa)
    qa.add_argument("--questions", help="JSONL (_id/text) or TSV (id<TAB>question) file; default: queries table")
    qa.add_argument("--limit", type=int, help="answer at most N new questions in this run")
    qa.add_argument("--batch-size", type=int, help="questions per round (overrides qa.batch_size)")
    qa.add_argument("--backend", choices=["auto", "vllm", "llamacpp"], help="overrides generate.backend")
    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="build the embedded demo dataset (Debian FAQ fr + Wikipedia fr)")
    prep.add_argument("--out", type=Path, default=Path("data/demo"))
    prep.add_argument("--cache", type=Path, default=Path(".cache"))
    prep.add_argument("--wiki-limit", type=int, default=None, help="keep only the first N Wikipedia summaries")
    from rag_spark.data.debian_faq import EDITIONS

    prep.add_argument(
        "--language",
        choices=sorted(EDITIONS),
        default="fr",
        help="the FAQ's and Wikipedia's language: "
        + ", ".join(f"{code} ({edition.name})" for code, edition in sorted(EDITIONS.items()))
        + "; fr is the demo",
    )
    prep.add_argument("--tiny", action="store_true", help="build the tiny test fixture instead")
    docs = data_sub.add_parser(
        "debian-docs", help="Debian's French documentation (4 packages) for train.section_docs (training only)"
    )
    docs.add_argument("--out", type=Path, default=Path("data/debian-docs-fr"))
    docs.add_argument("--cache", type=Path, default=Path(".cache"))
    sec = data_sub.add_parser(
        "sections",
        help="a retrieval test set from a documentation folder: headings as queries over their sections (BEIR-style)",
    )
    sec.add_argument("--docs", type=Path, required=True, help="folder of HTML / Markdown pages")
    sec.add_argument("--out", type=Path, required=True, help="dataset folder to write (replaced)")
    sec.add_argument("--min-chars", type=int, default=80, help="drop sections with less text than this")
    models = sub.add_parser("models", help="convert packaged GGUF models into folders vLLM loads")
    models.add_argument("--config", type=Path)
    models.add_argument("--models-dir", type=Path, default=None)
    models.add_argument("specs", nargs="*", help="model specs (default: generate.model of the config)")
    dd = sub.add_parser(
        "dedup",
        help="exact + near-duplicate removal of any JSONL file -> Delta tables and clusters.tsv under --out",
    )
    dd.add_argument("--input", required=True, help="JSONL file, one record per line")
    dd.add_argument("--id-field", default="id", help="record field holding the id (default: id)")
    dd.add_argument("--text-field", default="text", help="record field holding the text (default: text)")
    dd.add_argument("--out", required=True, help="output folder: silver, duplicates, quarantine tables, clusters.tsv")
    dd.add_argument("--config", type=Path, help="YAML config; clean.near_dedup and spark are used")
    dd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    tr = sub.add_parser(
        "train-retriever",
        help="fine-tune a bi-encoder on the train split of the questions + LLM-written questions, hard negatives "
        "mined from the current index (needs chunks and an index: run the earlier stages first)",
    )
    _common(tr)
    tr.add_argument("--base-model", help="overrides train.base_model")
    tr.add_argument("--synthetic", type=int, help="overrides train.synthetic_questions")
    tr.add_argument("--epochs", type=int, help="overrides train.epochs")
    tr.add_argument("--batch-size", type=int, help="overrides train.batch_size")
    tr.add_argument("--section-docs", help="overrides train.section_docs (HTML/Markdown documentation folder)")
    tr.add_argument("--section-pairs", type=int, help="overrides train.section_pairs")
    show = sub.add_parser("config", help="print the effective configuration (validated)")
    _common(show)
    return parser


def _load(args: argparse.Namespace) -> PipelineConfig:
    cfg = load_config(args.config)
    return cfg.with_overrides(dataset=args.dataset, out=args.out, lake=args.lake)


def _print_summary(out: str) -> None:
    metrics_path = storage.local_path(out, "out") / "metrics.json"
    report = storage.local_path(out, "out") / "report.html"
    if report.exists():
        print(f"report:  {report.resolve()}")
    if metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        r, a, c = m["retrieval"], m["answers"], m["counts"]
        print(f"metrics: {metrics_path.resolve()}")
        print(
            f"  retrieval  MRR@10 {r.get('mrr@10', float('nan')):.3f}  R@1 {r.get('recall@1', float('nan')):.3f}  "
            f"R@5 {r.get('recall@5', float('nan')):.3f}  R@10 {r.get('recall@10', float('nan')):.3f}  "
            f"nDCG@10 {r.get('ndcg@10', float('nan')):.3f}  latency p50 {r['latency_ms_p50']:.1f} ms"
        )
        if r.get("mrr@10_ci95") and None not in r["mrr@10_ci95"]:
            print(f"             MRR@10 95% CI {r['mrr@10_ci95'][0]:.3f}-{r['mrr@10_ci95'][1]:.3f}")
        if a["f1"] is not None:
            ci = a.get("f1_ci95") or [None, None]
            interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if None not in ci else ""
            print(
                f"  answers    F1 {a['f1']:.3f}{interval}  ROUGE-L {a.get('rouge_l') or 0:.3f}  EM {a['em']:.3f}  "
                f"({a['answered']} answered)"
            )
            if a.get("f1_no_retrieval") is not None:
                print(f"             F1 without retrieval (same generator, no context) {a['f1_no_retrieval']:.3f}")
        elif a.get("answered"):
            print(f"  answers    {a['answered']} answered, not scored: the dataset has no gold answers (answers.jsonl)")
        else:
            print("  answers    none (generate.backend=none)")
        print(
            f"  data       {c['documents']} documents, {c['duplicates']} duplicates, {c['quarantined']} quarantined,"
            f" {c['chunks']} chunks, {c['queries']} questions"
        )


def _qa(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    from rag_spark.config import load_config_dict
    from rag_spark.pipeline import Pipeline

    data = cfg.model_dump(mode="json")
    if args.questions:
        data["qa"]["questions"] = args.questions
    if args.limit is not None:
        data["qa"]["limit"] = args.limit
    if args.batch_size is not None:
        data["qa"]["batch_size"] = args.batch_size
    if args.backend:
        data["generate"]["backend"] = args.backend
    pipeline = Pipeline(load_config_dict(data, source="command line"))
    result = pipeline.qa()
    print(
        f"qa: {result.info['answered']} questions answered in {result.info['rounds']} round(s), "
        f"{result.seconds:.1f} s; answers table version {result.outputs['answers']}"
    )
    return 0


def _train(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    from rag_spark.config import load_config_dict
    from rag_spark.pipeline import Pipeline
    from rag_spark.retrieve.train import train_retriever

    data = cfg.model_dump(mode="json")
    for flag, key in (
        ("base_model", "base_model"),
        ("synthetic", "synthetic_questions"),
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("section_docs", "section_docs"),
        ("section_pairs", "section_pairs"),
    ):
        if getattr(args, flag) is not None:
            data["train"][key] = getattr(args, flag)
    res = train_retriever(Pipeline(load_config_dict(data, source="command line")))
    print(f"train-retriever: {'reused' if res.reused else 'trained'} {res.model_dir}")
    print(
        f"  pairs   {res.pairs['qa']} from the train split, {res.pairs['synthetic']} synthetic, "
        f"{res.pairs.get('section', 0)} section headings"
    )
    print(f"  loss    {res.losses} (per epoch)   seconds {res.seconds}")
    print(f"  use it  embed: {{backend: sentence-transformers, model: {res.model_dir}}}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from rag_spark.config import load_sweep
    from rag_spark.sweep import expand, run_sweep

    sweep = load_sweep(args.config)
    if args.out:
        sweep = sweep.model_copy(update={"out": args.out})
    variants = expand(sweep)  # validates every variant before anything runs
    print(f"sweep: {len(variants)} variants -> {Path(sweep.out).resolve()}")
    result = run_sweep(sweep)
    for name, run_id in result.runs.items():
        reused = ",".join(result.reused[name]) or "-"
        print(f"  {run_id}  {name}  (reused: {reused})")
    print(f"report:  {result.report}")
    return 0


def _report_run(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    from rag_spark.lake import Lake
    from rag_spark.report.assemble import load_run, report_for_run
    from rag_spark.spark import build_spark

    spark = build_spark(cfg.spark)
    lake_root = cfg.resolved().lake_root
    run = load_run(Lake(spark, lake_root), args.run)
    out = storage.local_path(args.out or run.cfg.out, "out")
    path = report_for_run(spark, lake_root, args.run, out / "report.html")
    print(f"report:  {path.resolve()}  (run {args.run}, from the tables of {lake_root})")
    return 0


def _dedup(args: argparse.Namespace) -> int:
    from rag_spark.dedup import dedup_jsonl
    from rag_spark.spark import build_spark

    cfg = load_config(args.config)
    spark = build_spark(cfg.spark)
    s = dedup_jsonl(
        spark,
        args.input,
        args.out,
        cfg.clean.near_dedup,
        id_field=args.id_field,
        text_field=args.text_field,
    )
    print(f"dedup {s.input}: {s.lines} records in {s.seconds:.1f} s")
    print(f"  kept              {s.kept}")
    print(f"  exact duplicates  {s.exact_duplicates}")
    print(f"  near duplicates   {s.near_duplicates}")
    print(f"  quarantined       {s.quarantined}")
    for reason, n in sorted(s.quarantine_reasons.items()):
        print(f"    {n:>6}  {reason}")
    print(f"  tables            {Path(args.out).resolve()} (silver, duplicates, quarantine)")
    print(f"  clusters          {s.clusters_tsv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # py4j logs each reconnect to the JVM (after long Ray stages) with a traceback at INFO; it retries itself.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        if args.command == "data" and args.data_command == "debian-docs":
            from rag_spark.data.debian_docs import prepare_debian_docs

            print(json.dumps(prepare_debian_docs(args.out, args.cache)["counts"]))
            return 0
        if args.command == "data" and args.data_command == "sections":
            from rag_spark.data.section_qa import prepare_section_dataset

            try:
                print(json.dumps(prepare_section_dataset(args.docs, args.out, args.min_chars)["counts"]))
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            return 0
        if args.command == "data":
            from rag_spark.data.prepare import prepare_demo, prepare_tiny

            if args.tiny and args.language != "fr":
                raise ConfigError("data prepare --tiny: the tiny fixture is French only")
            info = (prepare_tiny if args.tiny else prepare_demo)(
                args.out,
                args.cache,
                **({} if args.tiny else {"wiki_limit": args.wiki_limit, "language": args.language}),
            )
            print(json.dumps(info.get("counts", info), indent=2))
            return 0
        if args.command == "models":
            from rag_spark.generate.models import prepare_models

            cfg = load_config(args.config)
            models_dir = args.models_dir or Path(cfg.generate.models_dir)
            prepare_models(args.specs or [cfg.generate.model], models_dir)
            return 0
        if args.command == "dedup":
            return _dedup(args)
        if args.command == "sweep":
            return _sweep(args)
        cfg = _load(args)
        if args.command == "config":
            print(cfg.to_yaml(), end="")
            return 0
        from rag_spark.pipeline import STAGES, Pipeline

        if args.command == "qa":
            return _qa(cfg, args)
        if args.command == "train-retriever":
            return _train(cfg, args)
        if args.command == "report" and args.run:
            return _report_run(cfg, args)
        pipeline = Pipeline(cfg, full_refresh=getattr(args, "full_refresh", False))
        if args.command == "run":
            stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
            if stages:
                unknown = [s for s in stages if s not in STAGES]
                if unknown:
                    raise ConfigError(f"--stages: unknown {unknown}; choose from {', '.join(STAGES)}")
            pipeline.run(stages)
        else:
            pipeline.run([args.command])
        if "ingest" in pipeline.results:
            _print_ingest(pipeline.results["ingest"].info)
        _print_summary(pipeline.cfg.out)
        return 0
    except ConfigError as err:
        print(f"rag-spark: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # FileNotFoundError, a full disk (ENOSPC), a bad value
        print(f"rag-spark: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
