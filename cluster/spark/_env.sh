#!/usr/bin/env bash
# Sourced by the start/stop/submit scripts: finds the checkout, the pyspark distribution inside its venv (its bin/
# and sbin/ are the Spark distribution: spark-submit, spark-class, spark-daemon.sh) and points Spark at conf/.
RAG_SPARK_HOME=${RAG_SPARK_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export RAG_SPARK_HOME
PYTHON=${PYTHON:-$RAG_SPARK_HOME/.venv/bin/python}
if [ -z "${SPARK_HOME:-}" ]; then
  SPARK_HOME=$("$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
fi
export SPARK_HOME
export SPARK_CONF_DIR=${SPARK_CONF_DIR:-$RAG_SPARK_HOME/cluster/spark/conf}
# shellcheck source=conf/spark-env.sh
. "$SPARK_CONF_DIR/spark-env.sh"
mkdir -p "$SPARK_LOG_DIR" "$SPARK_PID_DIR" "$SPARK_WORKER_DIR" "$SPARK_LOCAL_DIRS"
