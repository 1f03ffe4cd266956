#!/usr/bin/env bash
# One scheduled run: ingest -> embed/index -> QA -> report, then keep the last $KEEP reports with an index page.
#
#   cluster/schedule/run_pipeline.sh CONFIG.yaml REPORTS_DIR
#
# Each stage is one of the job entry points in jobs/, run in this process (local Spark / local Ray), unless:
#   SPARK_MASTER=spark://HOST:7077   ingest goes through cluster/spark/submit.sh (spark-submit, standalone)
#   RAY_DASHBOARD=http://HEAD:8265   embed and QA go through cluster/ray/submit.sh (ray job submit; the config
#                                    must then say `ray.address: auto`)
# QA_QUESTIONS=FILE answers that file instead of the `queries` table; KEEP (default 14) reports are kept.
# Every job is idempotent (Delta MERGE, incremental embedding/index, QA answers only what is missing), so a failed
# night is repaired by the next run; `set -e` stops at the first failed stage and keeps the previous reports.
set -euo pipefail
usage="usage: run_pipeline.sh CONFIG.yaml REPORTS_DIR"
config=${1:?$usage}
reports=${2:?$usage}
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
[ -f "$config" ] || { echo "run_pipeline.sh: config file not found: $config" >&2; exit 2; }
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
cd "$root"
# The run's out folder (where jobs/report.py writes report.html), relative paths resolved from the checkout.
out=$("$python" -c 'import sys, pathlib; from rag_spark.config import load_config
print(pathlib.Path(load_config(sys.argv[1]).out).resolve())' "$config")

step() { echo "$(date -u +%FT%TZ) == $*"; }

step ingest
if [ -n "${SPARK_MASTER:-}" ]; then
  cluster/spark/submit.sh "$SPARK_MASTER" "$config" ingest
else
  "$python" jobs/ingest.py --config "$config"
fi

qa_args=()
[ -n "${QA_QUESTIONS:-}" ] && qa_args=(--questions "$QA_QUESTIONS")
for job in embed qa; do
  step "$job"
  args=()
  [ "$job" = qa ] && args=("${qa_args[@]}")
  if [ -n "${RAY_DASHBOARD:-}" ]; then
    cluster/ray/submit.sh "$RAY_DASHBOARD" "$config" "$job" "${args[@]}"
  else
    "$python" "jobs/$job.py" --config "$config" "${args[@]}"
  fi
done

step report
"$python" jobs/report.py --config "$config"

step rotate
"$python" cluster/schedule/rotate_reports.py --from "$out" --reports "$reports" --keep "${KEEP:-14}"
