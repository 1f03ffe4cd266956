#!/usr/bin/env bash
# benchmarks/index.py on a machine without the project's venv (the GPU lender's 16-core host): installs the
# wheels carried in the folder given (faiss-cpu, pydantic) into /tmp/site and runs the benchmark on its CPUs.
set -euo pipefail
whl=${1:?wheel folder}; out=${2:?output folder}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$whl"/*.whl
export PYTHONPATH=/tmp/site:$(cd "$(dirname "$0")/.." && pwd) OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
lscpu | grep -E "Model name|^CPU\(s\)" | tee "$out/cpu.txt"
python3 "$(dirname "$0")/index.py" --sizes "${SIZES:-100000,1000000}" --json "$out/index.json" | tee "$out/index.txt"
