"""Ray job: batch QA — retrieve for every question, answer with an actor pool of vLLM engines.

Local:    .venv/bin/python jobs/qa.py --config configs/demo.yaml
Cluster:  ray job submit --address http://HEAD:8265 --working-dir . -- \
            python jobs/qa.py --config configs/demo.yaml
A rerun (or a resumed run) answers only the questions without an answer for this configuration.
"""

from __future__ import annotations

import sys

from _common import run_stages


def main(argv: list[str] | None = None) -> int:
    return run_stages(argv, __doc__ or "", ["retrieve", "generate"])


if __name__ == "__main__":
    sys.exit(main())
