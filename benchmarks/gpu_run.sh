#!/bin/bash
# GPU machine: run what benchmarks/gpu_stage.sh staged, with TVM's runtime only (no compiler, no
# CUDA toolkit needed: the kernels load from the PTX built beside them, cuda_device_check.py).
#   bash STAGE/run.sh [RESULTS_DIR]
set -u
G=$(cd "$(dirname "$0")" && pwd); OUT=${1:-$G/results}; mkdir -p "$OUT" /tmp/tvm_site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tvm_site "$G"/whl/*.whl || exit 3
tar xJf "$G/tvm_runtime.tar.xz" -C /tmp/tvm_site || exit 3
CUDART=$(dirname "$(ls /usr/local/cuda*/lib64/libcudart.so.* 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH=$CUDART:/tmp/tvm_site/tvm_ffi/lib:${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/tvm_site:$G/src TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1
cd "$G/src"   # our tvm_qplugin copy first on sys.path
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for d in "$G"/cli/*/cuda; do [ -d "$d" ] && python3 -m tvm_qplugin.cuda_device_check "$d" --runs 30; done
python3 tests/gpu_bundle.py run "$G/kernels"
python3 benchmarks/gpu.py run "$G/bench" --json "$OUT/gpu_bench.json"
