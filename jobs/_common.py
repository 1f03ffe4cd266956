"""Argument parsing shared by the job entry points."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rag_spark.config import ConfigError, PipelineConfig, load_config
from rag_spark.pipeline import Pipeline


def parse(argv: list[str] | None, description: str, *, ingest: bool = False) -> tuple[PipelineConfig, bool]:
    """Parses --config/--dataset/--out/--lake (and --full-refresh for jobs that ingest) and returns the validated
    config and the full-refresh flag (exits 2 on a bad config)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", type=Path, help="YAML config (with spark-submit, ship it with --files)")
    p.add_argument("--dataset")
    p.add_argument("--out")
    p.add_argument("--lake")
    if ingest:
        p.add_argument(
            "--full-refresh",
            action="store_true",
            help="read every source in full for this run, ignoring file fingerprints and stored watermarks",
        )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config).with_overrides(dataset=args.dataset, out=args.out, lake=args.lake)
    except ConfigError as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, bool(getattr(args, "full_refresh", False))


def run_stages(argv: list[str] | None, description: str, stages: list[str]) -> int:
    """A job's whole body: validated config in, the given stages run in order, exit code out."""
    cfg, full_refresh = parse(argv, description, ingest="ingest" in stages)
    Pipeline(cfg, full_refresh=full_refresh).run(stages)
    return 0
