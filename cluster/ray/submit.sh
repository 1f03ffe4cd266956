#!/usr/bin/env bash
# ray job submit the Ray jobs of rag-spark to a running cluster (ray up cluster/ray/cluster.yaml, or a KubeRay
# RayCluster with its dashboard port 8265 reachable):
#
#   cluster/ray/submit.sh http://HEAD_HOST:8265 cluster/config.example.yaml embed
#   cluster/ray/submit.sh http://HEAD_HOST:8265 cluster/config.example.yaml qa --questions /data/rag-spark/questions.jsonl
#
# The config must set `ray.address: auto` (the job driver runs on the head and joins that cluster). A config inside
# the checkout travels with the working directory (the job reads it by its relative path); any other config must
# be at the same absolute path on the head (a shared volume or the ConfigMap mount of cluster/ray/k8s/).
# With token auth (RAY_AUTH_MODE=token on the cluster), export the same RAY_AUTH_MODE and the token here.
# The job runs `python` from the PATH of the head's `ray start` (start Ray from the activated venv or image), or
# JOB_PYTHON (an absolute interpreter path on the head).
set -euo pipefail
usage="usage: submit.sh http://HEAD:8265 CONFIG.yaml embed|qa [JOB ARGS...] (extra args go to the job)"
address=${1:?$usage}
config=${2:?$usage}
job=${3:?$usage}
shift 3
case "$job" in embed|qa) ;; *) echo "$usage (unknown job: $job)" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
[ -f "$config" ] || { echo "submit.sh: config file not found: $config" >&2; exit 2; }
rel=$(realpath --relative-to="$root" "$config")
case "$rel" in ../*) rel=$(realpath "$config"); echo "submit.sh: $rel is outside the checkout: the head must see it there" >&2 ;; esac
cd "$root"
exec "${RAY:-$root/.venv/bin/ray}" job submit \
  --address "$address" \
  --runtime-env cluster/ray/runtime_env.yaml \
  --submission-id "rag-spark-$job-$(date -u +%Y%m%dT%H%M%SZ)" \
  -- "${JOB_PYTHON:-python}" "jobs/$job.py" --config "$rel" "$@"
