#!/usr/bin/env bash
# Sourced by the pyspark distribution's bin/load-spark-env.sh (master, workers, spark-submit) because the scripts in
# cluster/spark/ export SPARK_CONF_DIR to this folder. Override any value from the environment.

# Master: the host workers and spark-submit connect to (spark://$SPARK_MASTER_HOST:$SPARK_MASTER_PORT).
export SPARK_MASTER_HOST=${SPARK_MASTER_HOST:-$(hostname -f)}
export SPARK_MASTER_PORT=${SPARK_MASTER_PORT:-7077}
export SPARK_MASTER_WEBUI_PORT=${SPARK_MASTER_WEBUI_PORT:-8080}

# Worker: what one worker offers to executors (leave ~1 core and ~15 % of memory to the OS and Ray, if co-located).
export SPARK_WORKER_CORES=${SPARK_WORKER_CORES:-$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))}
export SPARK_WORKER_MEMORY=${SPARK_WORKER_MEMORY:-8g}
export SPARK_WORKER_WEBUI_PORT=${SPARK_WORKER_WEBUI_PORT:-8081}
# Shuffle spill and executor work dirs: a local disk with room for the dedup band shuffle (docs/scaling.md).
export SPARK_WORKER_DIR=${SPARK_WORKER_DIR:-/var/tmp/rag-spark/work}
export SPARK_LOCAL_DIRS=${SPARK_LOCAL_DIRS:-/var/tmp/rag-spark/local}
# Clean finished applications' work dirs after a day, so nightly runs do not fill the disk.
export SPARK_WORKER_OPTS=${SPARK_WORKER_OPTS:-"-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=86400"}

# Daemon logs and pid files (spark-daemon.sh); stop scripts find the daemons through these pid files.
export SPARK_LOG_DIR=${SPARK_LOG_DIR:-/var/tmp/rag-spark/logs}
export SPARK_PID_DIR=${SPARK_PID_DIR:-/var/tmp/rag-spark/pids}

# Executors and the driver run the project's venv: the checkout holding this file, at the same path on every node.
export RAG_SPARK_HOME=${RAG_SPARK_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$RAG_SPARK_HOME/.venv/bin/python}
