#!/usr/bin/env bash
# spark-submit the ingest/clean/chunk job to a standalone master: cluster/spark/submit.sh spark://HOST:7077 CONFIG.yaml
set -euo pipefail
master=${1:?usage: submit.sh spark://HOST:7077 CONFIG.yaml}
config=${2:?usage: submit.sh spark://HOST:7077 CONFIG.yaml}
root=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$root" && rm -f dist/rag_spark.zip && mkdir -p dist && zip -qr dist/rag_spark.zip rag_spark jobs/_common.py)
exec "$root/.venv/bin/spark-submit" \
  --master "$master" \
  --properties-file "$root/cluster/spark/spark-defaults.conf" \
  --jars "$(ls "$root"/.jars/delta-*.jar | paste -sd,)" \
  --files "$config" \
  --py-files "$root/dist/rag_spark.zip" \
  "$root/jobs/ingest.py" --config "$(basename "$config")"
