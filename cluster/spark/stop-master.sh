#!/usr/bin/env bash
# Stops the master started by start-master.sh on this host (by its pid file in $SPARK_PID_DIR; nothing else).
set -euo pipefail
. "$(dirname "$0")/_env.sh"
"$SPARK_HOME/sbin/spark-daemon.sh" stop org.apache.spark.deploy.master.Master 1
