#!/usr/bin/env bash
# Stops the workers of conf/workers (ssh) and the master here; each daemon by its own pid file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/_env.sh"
workers="$SPARK_CONF_DIR/workers"
if [ -f "$workers" ]; then
  grep -v '^\s*\(#\|$\)' "$workers" | while read -r host; do
    ssh -o BatchMode=yes "$host" "cd '$RAG_SPARK_HOME' && cluster/spark/stop-worker.sh" < /dev/null
  done
else
  "$here/stop-worker.sh"
fi
"$here/stop-master.sh"
