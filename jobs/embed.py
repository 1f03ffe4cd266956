"""Ray job: embed the chunks with an actor pool and build the sharded FAISS index.

Local:    .venv/bin/python jobs/embed.py --config configs/demo.yaml
Cluster:  ray job submit --address http://HEAD:8265 --working-dir . -- \
            python jobs/embed.py --config configs/demo.yaml
(set `ray.address: auto` in the config so the job joins the cluster it runs on)
"""

from __future__ import annotations

import sys

from _common import run_stages


def main(argv: list[str] | None = None) -> int:
    return run_stages(argv, __doc__ or "", ["embed", "index"])


if __name__ == "__main__":
    sys.exit(main())
