#!/usr/bin/env bash
# Starts the standalone master on this host (what Spark's sbin/start-master.sh does; the pip distribution of pyspark
# ships only sbin/spark-daemon.sh). Prints the master URL. Settings: conf/spark-env.sh.
set -euo pipefail
. "$(dirname "$0")/_env.sh"
"$SPARK_HOME/sbin/spark-daemon.sh" start org.apache.spark.deploy.master.Master 1 \
  --host "$SPARK_MASTER_HOST" --port "$SPARK_MASTER_PORT" --webui-port "$SPARK_MASTER_WEBUI_PORT" "$@"
echo "spark://$SPARK_MASTER_HOST:$SPARK_MASTER_PORT (UI http://$SPARK_MASTER_HOST:$SPARK_MASTER_WEBUI_PORT, logs $SPARK_LOG_DIR)"
