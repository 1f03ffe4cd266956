"""Keeps the last N scheduled reports: moves a run's new report into `REPORTS/<timestamp>/`, deletes the oldest
report folders beyond N and rewrites `REPORTS/index.html` listing the kept ones, newest first.

Usage (after jobs/report.py wrote OUT/report.html and OUT/metrics.json):
    python cluster/schedule/rotate_reports.py --from OUT --reports REPORTS --keep 14

Standard library only, so it runs anywhere the cron job or the Kubernetes CronJob runs. Only folders named like a
timestamp (`20261126T023000Z`) count as reports: nothing else under REPORTS is ever deleted. The index is written
to a temporary file and renamed, so a browser never sees half of it; every value shown is HTML-escaped.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("rotate_reports")

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
STAMP_RE = re.compile(r"^\d{8}T\d{6}Z$")
REPORT_FILES = ("report.html", "metrics.json")
"""What a run leaves in OUT that belongs to its report (report.html is required, metrics.json optional)."""


def report_dirs(reports: Path) -> list[Path]:
    """The report folders under `reports`, oldest first (timestamp names sort chronologically)."""
    if not reports.is_dir():
        return []
    return sorted(p for p in reports.iterdir() if p.is_dir() and STAMP_RE.match(p.name))


def collect(out: Path, reports: Path, stamp: str) -> Path:
    """Moves the report files of `out` into `reports/<stamp>/` and returns that folder.

    Raises:
        FileNotFoundError: if `out` holds no report.html (the report job did not run or failed).
        FileExistsError: if a report folder with this timestamp already exists.
        ValueError: if `stamp` is not a timestamp like 20261126T023000Z.
    """
    if not STAMP_RE.match(stamp):
        raise ValueError(f"timestamp {stamp!r}: expected the form 20261126T023000Z")
    if not (out / "report.html").is_file():
        raise FileNotFoundError(f"{out / 'report.html'}: no report to collect (did jobs/report.py run?)")
    target = reports / stamp
    if target.exists():
        raise FileExistsError(f"{target}: a report with this timestamp already exists")
    reports.mkdir(parents=True, exist_ok=True)
    # Assemble in a hidden folder, then rename: the index and the pruning never see a half-moved report.
    partial = reports / f".{stamp}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for name in REPORT_FILES:
        if (out / name).is_file():
            shutil.move(str(out / name), str(partial / name))
    partial.rename(target)
    return target


def prune(reports: Path, keep: int) -> list[Path]:
    """Deletes all but the newest `keep` report folders; returns the deleted ones."""
    if keep < 1:
        raise ValueError(f"keep={keep}: must be at least 1")
    dirs = report_dirs(reports)
    doomed = dirs[:-keep]
    for d in doomed:
        shutil.rmtree(d)
    return doomed


def _headline(folder: Path) -> dict[str, Any]:
    """A few numbers from metrics.json (missing or unreadable metrics give an empty row, not an error)."""
    try:
        m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(m, dict):
        return {}
    retrieval = m.get("retrieval") if isinstance(m.get("retrieval"), dict) else {}
    answers = m.get("answers") if isinstance(m.get("answers"), dict) else {}
    return {
        "run_id": m.get("run_id"),
        "mrr@10": retrieval.get("mrr@10"),
        "f1": answers.get("f1"),
        "config_hash": m.get("config_hash"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def write_index(reports: Path, title: str = "rag-spark reports") -> Path:
    """Writes `reports/index.html`: one row per kept report, newest first, linking its report.html."""
    rows = []
    for d in reversed(report_dirs(reports)):
        when = datetime.strptime(d.name, STAMP_FORMAT).replace(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        h = _headline(d)
        href = html.escape(f"{d.name}/report.html", quote=True)
        rows.append(
            f'<tr><td><a href="{href}">{html.escape(when)}</a></td><td>{_cell(h.get("run_id"))}</td>'
            f"<td>{_cell(h.get('mrr@10'))}</td><td>{_cell(h.get('f1'))}</td><td>{_cell(h.get('config_hash'))}</td></tr>"
        )
    body = "\n".join(rows) or '<tr><td colspan="5">no reports yet</td></tr>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table><thead><tr><th>report</th><th>run id</th><th>MRR@10</th><th>answer F1</th><th>config hash</th></tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
    index = reports / "index.html"
    tmp = reports / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    return index


def rotate(out: Path, reports: Path, keep: int, stamp: str | None = None, title: str = "rag-spark reports") -> Path:
    """collect + prune + write_index; returns the new report's folder."""
    if keep < 1:
        raise ValueError(f"keep={keep}: must be at least 1")
    folder = collect(out, reports, stamp or datetime.now(UTC).strftime(STAMP_FORMAT))
    for d in prune(reports, keep):
        log.info("deleted old report %s", d)
    write_index(reports, title)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Keep the last N reports and write an index page.")
    p.add_argument("--from", dest="out", type=Path, required=True, help="the run's out folder (report.html)")
    p.add_argument("--reports", type=Path, required=True, help="folder of kept reports and index.html")
    p.add_argument("--keep", type=int, default=14, help="reports to keep (default 14)")
    p.add_argument("--timestamp", help="folder name, e.g. 20261126T023000Z (default: now, UTC)")
    p.add_argument("--title", default="rag-spark reports")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        folder = rotate(args.out, args.reports, args.keep, args.timestamp, args.title)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"rotate_reports: {err}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
