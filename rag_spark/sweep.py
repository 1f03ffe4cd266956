"""`rag-spark sweep`: many configurations over one lake, reusing every stage output whose config hash is unchanged.

A sweep file names a base configuration and a grid over dotted config keys (any key: `chunk.size_tokens`,
`embed.model`, `index.factory`, `retrieve.retriever`, `retrieve.k`, `generate.model`, ...). Each variant is a
normal `Pipeline` run with its own run id, writing into the sweep's shared lake (`<out>/lake`) and index folder
(`<out>/index`) and its own folder for metrics.json (`<out>/variants/<name>/`). Variants run grouped by their
upstream stage hashes, so variants that share ingest..index run back to back and start at the first stage that
differs (`Pipeline.run(reuse=True)`). The sweep ends with one report comparing all variants (`<out>/report.html`).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from rag_spark.config import ConfigError, PipelineConfig, SweepConfig, load_config

log = logging.getLogger(__name__)

_UPSTREAM = ("ingest", "clean", "chunk", "embed", "index", "retrieve", "generate")


@dataclass(frozen=True)
class Variant:
    """One configuration of a sweep: its name (from its overrides) and validated config."""

    name: str
    overrides: dict[str, Any]
    cfg: PipelineConfig


@dataclass
class SweepResult:
    """What a sweep ran: its id, each variant's run id and reused stages, the report's path."""

    sweep_id: str
    runs: dict[str, str] = field(default_factory=dict)
    reused: dict[str, list[str]] = field(default_factory=dict)
    report: Path | None = None


def _name(overrides: dict[str, Any]) -> str:
    if not overrides:
        return "base"
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def _folder(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", name)[:120]


def expand(sweep: SweepConfig) -> list[Variant]:
    """The sweep's variants, validated, in run order (grouped by upstream stage hashes).

    Raises:
        ConfigError: naming the variant and the bad key or value; also for two variants with the same config.
    """
    base = load_config(sweep.base)
    if sweep.overrides:
        base = base.with_dotted(sweep.overrides, source="sweep overrides")
    out = Path(sweep.out)
    combos: list[dict[str, Any]] = []
    if sweep.grid:
        keys = list(sweep.grid)
        combos += [dict(zip(keys, values, strict=True)) for values in itertools.product(*sweep.grid.values())]
    combos += [dict(v) for v in sweep.variants]
    if not combos:
        combos = [{}]
    variants = []
    seen: dict[str, str] = {}
    for combo in combos:
        name = _name(combo)
        cfg = base.with_dotted(combo, source=f"sweep variant {name!r}")
        cfg = cfg.with_overrides(
            out=str(out / "variants" / _folder(name)), lake=str(out / "lake"), index_dir=str(out / "index")
        )
        if cfg.config_hash in seen:
            raise ConfigError(f"sweep variants {seen[cfg.config_hash]!r} and {name!r} are the same configuration")
        seen[cfg.config_hash] = name
        variants.append(Variant(name, combo, cfg))
    if sweep.reference is not None and sweep.reference not in {v.name for v in variants}:
        raise ConfigError(
            f"sweep reference {sweep.reference!r} is not a variant; variants: {[v.name for v in variants]}"
        )
    order = {v.name: i for i, v in enumerate(variants)}
    # Stable grouping: variants sharing ingest..index hashes are adjacent, keeping the file's order otherwise.
    first_seen: dict[tuple[str, ...], int] = {}
    for v in variants:
        for depth in range(1, len(_UPSTREAM) + 1):
            first_seen.setdefault(_prefix(v.cfg, depth), order[v.name])
    return sorted(
        variants,
        key=lambda v: tuple(first_seen[_prefix(v.cfg, d)] for d in range(1, len(_UPSTREAM) + 1)),
    )


def _prefix(cfg: PipelineConfig, depth: int) -> tuple[str, ...]:
    return tuple(cfg.stage_hash(s) for s in _UPSTREAM[:depth])


def run_sweep(sweep: SweepConfig, spark: SparkSession | None = None, sweep_id: str | None = None) -> SweepResult:
    """Runs every variant (reusing unchanged stages), then writes the comparison report.

    Args:
        sweep: The validated sweep.
        spark: A session to share (tests); None builds one from the first variant's `spark` section.
        sweep_id: Id recorded with every variant's run (default: a timestamp).
    """
    from rag_spark.pipeline import STAGES, Pipeline
    from rag_spark.report.assemble import report_for_run

    variants = expand(sweep)
    sid = sweep_id or "sweep-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = SweepResult(sid)
    last: Pipeline | None = None
    for i, v in enumerate(variants, 1):
        log.info("sweep %s: variant %d/%d %s", sid, i, len(variants), v.name)
        p = Pipeline(v.cfg, spark=spark, sweep_id=sid, variant=v.name)
        p.run([s for s in STAGES if s != "report"], reuse=True)
        result.runs[v.name] = p.run_id
        result.reused[v.name] = list(p.reused)
        spark, last = p.spark, p
    assert last is not None
    reference = sweep.reference or _first_in_file_order(sweep, variants)
    out = Path(sweep.out)
    result.report = report_for_run(last.spark, last.cfg.lake_root, result.runs[reference], out / "report.html")
    (out / "sweep.json").write_text(
        json.dumps({"sweep_id": sid, "reference": reference, "runs": result.runs, "reused": result.reused}, indent=2)
        + "\n"
    )
    return result


def _first_in_file_order(sweep: SweepConfig, variants: list[Variant]) -> str:
    """The first variant as the file lists it (the run order may differ): the default reference."""
    if sweep.grid:
        return _name({k: vals[0] for k, vals in sweep.grid.items()})
    return _name(dict(sweep.variants[0])) if sweep.variants else variants[0].name
