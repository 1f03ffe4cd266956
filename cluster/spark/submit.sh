#!/usr/bin/env bash
# spark-submit a rag-spark Spark job to a standalone master (client deploy mode: Spark standalone runs Python
# drivers only in client mode, so the driver is this process and reads the config from its local path).
#
#   cluster/spark/submit.sh spark://MASTER_HOST:7077 configs/cluster.yaml [ingest|report] [JOB ARGS...]
#   e.g. cluster/spark/submit.sh spark://m:7077 cluster/config.example.yaml ingest --dataset /shared/dataset
#
# Environment: DELTA_FROM=jars (default when .jars/ holds the Delta jars) or packages (Ivy, Maven Central);
#              EXTRA_PACKAGES / EXTRA_JARS: object-store connectors, comma-separated (cluster/spark/README.md).
set -euo pipefail
usage="usage: submit.sh spark://HOST:7077 CONFIG.yaml [ingest|report] [JOB ARGS...]"
master=${1:?$usage}
config=${2:?$usage}
job=${3:-ingest}
shift $(( $# >= 3 ? 3 : $# ))
case "$job" in ingest|report) ;; *) echo "$usage (unknown job: $job)" >&2; exit 2 ;; esac
[ -f "$config" ] || { echo "submit.sh: config file not found: $config" >&2; exit 2; }
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
here=$(cd "$(dirname "$0")" && pwd)
. "$here/_env.sh"
root=$RAG_SPARK_HOME

"$PYTHON" "$here/build_pyfiles.py" --out "$root/dist/rag_spark.zip"

delta_jars=$(ls "$root"/.jars/delta-*.jar 2>/dev/null | paste -sd, || true)
packages=${EXTRA_PACKAGES:-}
jars=${EXTRA_JARS:-}
if [ "${DELTA_FROM:-$([ -n "$delta_jars" ] && echo jars || echo packages)}" = jars ]; then
  jars=${jars:+$jars,}$delta_jars
else
  packages=${packages:+$packages,}io.delta:delta-spark_4.2_2.13:4.4.0
fi

# --files ships the config into every executor's (and, in cluster deploy mode, the driver's) working directory;
# the client-mode driver reads the absolute path given to --config.
exec "$SPARK_HOME/bin/spark-submit" \
  --master "$master" \
  --deploy-mode client \
  --name "rag-spark-$job" \
  ${packages:+--packages "$packages"} \
  ${jars:+--jars "$jars"} \
  --files "$config" \
  --py-files "$root/dist/rag_spark.zip" \
  "$root/jobs/$job.py" --config "$config" "$@"
