#!/usr/bin/env bash
# Stops the worker started by start-worker.sh on this host (by its pid file in $SPARK_PID_DIR; nothing else).
set -euo pipefail
. "$(dirname "$0")/_env.sh"
"$SPARK_HOME/sbin/spark-daemon.sh" stop org.apache.spark.deploy.worker.Worker 1
