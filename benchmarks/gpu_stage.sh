#!/bin/bash
# Build machine: stage everything a GPU box with only Python 3, NumPy and the NVIDIA driver needs to
# check and time our CUDA builds (the route that ran on an H200 at stop 22; docs: "H200 results").
#   benchmarks/gpu_stage.sh STAGE [PYVER]      PYVER: the GPU box's Python, e.g. 3.12 (default)
# STAGE gets: whl/ (apache-tvm-ffi for PYVER), tvm_runtime.tar.xz (TVM's Python package without its
# 259 MB compiler library), src/ (tvm_qplugin, benchmarks/gpu.py, tests/gpu_bundle.py), kernels/
# (the GPU tests' kernel cases), bench/ (benchmarks/gpu.py prepare; MODELS / BATCHES env), run.sh.
set -euo pipefail
STAGE=$(realpath -m "$1"); PYVER=${2:-3.12}; ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
mkdir -p "$STAGE"/whl "$STAGE"/src/benchmarks "$STAGE"/src/tests
TVM_VER=$($PY -c "import importlib.metadata as m; print(m.version('apache-tvm'))")
FFI_VER=$($PY -c "import importlib.metadata as m; print(m.version('apache-tvm-ffi'))")
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$STAGE/whl" "apache-tvm==$TVM_VER" "apache-tvm-ffi==$FFI_VER"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
unzip -q "$STAGE"/whl/apache_tvm-*.whl -d "$TMP" && rm "$STAGE"/whl/apache_tvm-*.whl
rm -rf "$TMP"/tvm/lib/libtvm_compiler.so "$TMP"/tvm/3rdparty "$TMP"/tvm/src; find "$TMP" -name "*.h" -delete
tar cJf "$STAGE/tvm_runtime.tar.xz" -C "$TMP" tvm
cp -r "$ROOT/tvm_qplugin" "$STAGE/src/"; find "$STAGE/src" -name __pycache__ -prune -exec rm -rf {} +
cp "$ROOT/benchmarks/gpu.py" "$STAGE/src/benchmarks/"; cp "$ROOT/tests/gpu_bundle.py" "$STAGE/src/tests/"
$PY "$ROOT/tests/gpu_bundle.py" export "$STAGE/kernels" --arch "${ARCH:-sm_90}"
$PY "$ROOT/benchmarks/gpu.py" prepare "$STAGE/bench" --models "${MODELS:-mobilenet_v2}" \
  --batches "${BATCHES:-1,8}" --engines ours,fp32 --arch "${ARCH:-sm_90}"
cp "$ROOT/benchmarks/gpu_run.sh" "$STAGE/run.sh"
du -sh "$STAGE"
