#!/usr/bin/env bash
# Starts the master here and one worker on each host of conf/workers (ssh; the checkout must be at the same path,
# $RAG_SPARK_HOME, on every host, with `make install` run there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/_env.sh"
"$here/start-master.sh"
master="spark://$SPARK_MASTER_HOST:$SPARK_MASTER_PORT"
workers="$SPARK_CONF_DIR/workers"
[ -f "$workers" ] || { echo "no $workers (copy conf/workers.example); starting a worker here"; "$here/start-worker.sh" "$master"; exit 0; }
grep -v '^\s*\(#\|$\)' "$workers" | while read -r host; do
  ssh -o BatchMode=yes "$host" "cd '$RAG_SPARK_HOME' && cluster/spark/start-worker.sh '$master'" < /dev/null
done
