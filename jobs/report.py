"""Scheduled job: evaluate the latest answers and write the HTML report (and metrics.json).

Local / cron:  .venv/bin/python jobs/report.py --config configs/demo.yaml --out reports/$(date +%F)
"""

from __future__ import annotations

import sys

from _common import parse

from rag_spark.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv, __doc__ or "")
    Pipeline(cfg).run(["evaluate", "report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
