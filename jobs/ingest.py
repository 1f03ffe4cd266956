"""Spark job: ingest -> clean -> chunk (bronze, quarantine, silver, duplicates, chunks, QA tables).

Local:    .venv/bin/python jobs/ingest.py --config configs/demo.yaml
Cluster:  cluster/spark/submit.sh spark://HOST:7077 configs/demo.yaml ingest   (builds dist/rag_spark.zip), i.e.
          spark-submit --master spark://HOST:7077 --deploy-mode client \
            --jars .jars/delta-spark_4.2_2.13-4.4.0.jar,.jars/delta-storage-4.4.0.jar,.jars/postgresql-42.7.14.jar \
            --files configs/demo.yaml --py-files dist/rag_spark.zip \
            jobs/ingest.py --config configs/demo.yaml --dataset /shared/dataset --lake s3://bucket/lake
(client mode: the driver reads the config from its path; `dataset` is a shared POSIX path, the lake may be an
object store: cluster/spark/README.md)
`--full-refresh` reads every source in full for this run (stored watermarks and file fingerprints ignored).
Sources with credentials (`ingest.sources`: jdbc `user_env`/`password_env`, http `token_env`) read them from the
driver's environment (e.g. `spark.kubernetes.driverEnv.KB_PASSWORD`).
"""

from __future__ import annotations

import sys

from _common import run_stages


def main(argv: list[str] | None = None) -> int:
    return run_stages(argv, __doc__ or "", ["ingest", "clean", "chunk"])


if __name__ == "__main__":
    sys.exit(main())
