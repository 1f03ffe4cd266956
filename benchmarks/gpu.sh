#!/usr/bin/env bash
# GPU measurements for embedding and exact search (benchmarks/gpu_bench.py), as one prepared script.
#
#   benchmarks/gpu.sh prepare .gpu     # here (no GPU needed): fp16 copy of the packaged MiniLM, demo passages,
#                                      # wheels the GPU image lacks (pydantic) for its Python 3.12
#   benchmarks/gpu.sh run .gpu OUTDIR  # on the GPU machine: installs the wheels into /tmp/site, measures
#   benchmarks/gpu.sh prepare-train .gpu CONFIG MODEL  # here: benchmarks/gpu_train.py prepare + the wheels
#   benchmarks/gpu.sh train .gpu OUTDIR                # on the GPU machine: e5 embedding + train-retriever's loop
#   benchmarks/gpu.sh timing .gpu OUTDIR               # on the GPU machine: warm fp32 vs bf16 training timings
#
# The GPU image has its own torch/sentence-transformers; only what it lacks travels (64 MiB limit per call).
set -euo pipefail
cmd=${1:?prepare|run}; dir=${2:?folder}
here=$(cd "$(dirname "$0")/.." && pwd)

py=${PYTHON:-$here/.venv/bin/python}
wheels() {  # what the GPU image lacks (pydantic) or has in another version (sentence-transformers), for Python 3.12
  mkdir -p "$dir/whl"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir/whl" pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 "$@"
}
install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$dir"/whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
}

if [[ $cmd == prepare-train ]]; then
  wheels sentence-transformers==6.2.0
  "$py" "$here/benchmarks/gpu_train.py" prepare "$dir" --config "${3:?config}" --model "${4:?model folder}"
  du -sh "$dir"
  exit 0
fi

if [[ $cmd == train || $cmd == timing ]]; then  # timing: warm fp32 vs bf16 training, embedding at 512 vs 256
  out=${3:?output folder}
  mkdir -p "$out"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
  install_wheels
  PYTHONUNBUFFERED=1 python3 "$here/benchmarks/gpu_train.py" run "$dir" "$out" $([[ $cmd == timing ]] && echo --timing)
  exit 0
fi

if [[ $cmd == prepare ]]; then
  "$py" - "$dir" <<'PY'
import gzip, json, sys
from pathlib import Path
from sentence_transformers import SentenceTransformer
from rag_spark.embed.models import resolve_encoder
from rag_spark.embed.encoders import passage_text
out = Path(sys.argv[1])
m = SentenceTransformer(resolve_encoder("packaged:all-MiniLM-L6-v2"), device="cpu")
m.half().save(str(out / "minilm-fp16"))
with open("data/demo/corpus.jsonl") as src, gzip.open(out / "texts.jsonl.gz", "wt") as dst:
    for i, line in enumerate(src):
        d = json.loads(line)
        dst.write(json.dumps({"text": passage_text(d.get("title"), d["text"])}) + "\n")
PY
  wheels
  du -sh "$dir"
  exit 0
fi

out=${3:?output folder}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
python3 -c "import pydantic" 2>/dev/null || install_wheels
# faiss-gpu on PyPI (faiss-gpu-cu12) links CUDA 12's cuBLAS/cudart: record whether this image has them.
{ echo "cuda12 libs:"; ldconfig -p | grep -E 'libcublas\.so\.12|libcudart\.so\.12' || echo none;
  find / -xdev \( -name 'libcublas.so.12*' -o -name 'libcudart.so.12*' \) 2>/dev/null | head -5; } | tee "$out/cuda12.txt"
PYTHONUNBUFFERED=1 python3 "$here/benchmarks/gpu_bench.py" --model "$dir/minilm-fp16" --texts "$dir/texts.jsonl.gz" \
  --out "$out/gpu_bench.json"
