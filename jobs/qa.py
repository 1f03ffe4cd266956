"""Ray job: batch QA — retrieve for every question, answer with an actor pool of vLLM engines.

Local:    .venv/bin/python jobs/qa.py --config configs/demo.yaml
Cluster:  ray job submit --address http://HEAD:8265 --working-dir . -- \
            python jobs/qa.py --config configs/demo.yaml
A rerun (or a resumed run) answers only the questions without an answer for this configuration.
"""

from __future__ import annotations

import sys

from _common import parse

from rag_spark.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv, __doc__ or "")
    Pipeline(cfg).run(["retrieve", "generate"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
