#!/usr/bin/env bash
# Starts one standalone worker on this host: cluster/spark/start-worker.sh spark://MASTER_HOST:7077
# Cores, memory and dirs: conf/spark-env.sh (SPARK_WORKER_CORES, SPARK_WORKER_MEMORY, SPARK_WORKER_DIR).
set -euo pipefail
master=${1:?usage: start-worker.sh spark://MASTER_HOST:7077}
shift
. "$(dirname "$0")/_env.sh"
"$SPARK_HOME/sbin/spark-daemon.sh" start org.apache.spark.deploy.worker.Worker 1 \
  --webui-port "$SPARK_WORKER_WEBUI_PORT" --cores "$SPARK_WORKER_CORES" --memory "$SPARK_WORKER_MEMORY" \
  --work-dir "$SPARK_WORKER_DIR" "$@" "$master"
