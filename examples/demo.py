"""`make demo`: compile the digits CNN (trained on sklearn's real load_digits) int8 integer-only
for this machine through the CLI, then print float vs int8 test accuracy, bit-exactness, latency."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # qplugin_zoo: the repository's fixtures, not installed

from qplugin_zoo import digits_cnn_onnx, digits_split  # noqa: E402

build = Path("build/demo")
build.mkdir(parents=True, exist_ok=True)
x_train, _, x_test, y_test = digits_split()
np.savez(build / "calib.npz", input=x_train[:256])            # calibration: training images
np.savez(build / "test.npz", input=x_test, labels=y_test)      # held-out test split with labels
cmd = [sys.executable, "-m", "tvm_qplugin", "compile", str(digits_cnn_onnx()), "--target", "x86-host",
       "--calib", str(build / "calib.npz"), "--eval", str(build / "test.npz"), "-o", str(build / "out")]
print("$", " ".join(cmd), flush=True)
rc = subprocess.call(cmd)
if rc != 0:
    sys.exit(rc)
r = json.loads((build / "out" / "report.json").read_text())
acc = r["accuracy"]
print(f"\ndigits test accuracy: float {100 * acc['top1_fp32']:.2f} %  int8 {100 * acc['top1_int']:.2f} %  "
      f"(delta {100 * (acc['top1_int'] - acc['top1_fp32']):+.2f} pt on {acc['inputs']} held-out images)")
print(f"integer-only: {r['integer_only']}  float ops: {r['float_ops']}  bit-exact: {r['bit_exact']} "
      f"({r['bit_exact_inputs']} inputs)  latency: {r['latency_ms']['median']:.3f} ms")
