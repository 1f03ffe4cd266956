"""Ray job: batch QA — questions (a file or the `queries` table) are retrieved and answered in bounded rounds by
an actor pool of LLM engines (vLLM or llama.cpp), each round merged into `answers` before the next is read.

Local:    .venv/bin/python jobs/qa.py --config configs/demo.yaml [--questions questions.jsonl] [--limit N]
Cluster:  ray job submit --address http://HEAD:8265 --working-dir . -- \
            python jobs/qa.py --config configs/demo.yaml --questions /shared/questions.jsonl
A rerun (or a resumed run after a kill) answers only the questions without an answer for this configuration.
Needs the index of an earlier run (`rag-spark run --stages ingest,clean,chunk,embed,index`).
"""

from __future__ import annotations

import sys

from rag_spark.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["qa", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
