"""Scheduled job: evaluate the latest answers and write the HTML report (and metrics.json).

Local / cron:  .venv/bin/python jobs/report.py --config configs/demo.yaml --out reports/$(date +%F)
"""

from __future__ import annotations

import sys

from _common import run_stages


def main(argv: list[str] | None = None) -> int:
    return run_stages(argv, __doc__ or "", ["evaluate", "report"])


if __name__ == "__main__":
    sys.exit(main())
