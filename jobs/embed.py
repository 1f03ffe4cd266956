"""Ray job: embed the chunks with an actor pool and build the sharded FAISS index.

Local:    .venv/bin/python jobs/embed.py --config configs/demo.yaml
Cluster:  ray job submit --address http://HEAD:8265 --working-dir . -- \
            python jobs/embed.py --config configs/demo.yaml
(set `ray.address: auto` in the config so the job joins the cluster it runs on)
"""

from __future__ import annotations

import sys

from _common import parse

from rag_spark.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv, __doc__ or "")
    Pipeline(cfg).run(["embed", "index"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
