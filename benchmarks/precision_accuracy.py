"""Accuracy and weight size per precision: fp32 vs int8 vs int4 (``--precision int4``: 4-bit
weights for every conv / dense but the first and the last, 8-bit activations).

* digits CNN: labelled top-1 on the 540 held-out digits (fp32 and integer), top-1 agreement
  with fp32; calibrated on 128 training digits.
* MobileNetV2 (``--mobilenet``, minutes per compile): top-1 agreement with fp32 on the 256 real
  photo crops of tests/test_mobilenet_v2.py (calibrated on the 64 others), confident-subset
  agreement and int top-1 within fp32's top-5.
* ``--mcu``: the digits CNN's C package for Cortex-M4 (qemu-mps2-an386) per precision: flash
  (weights + code) and instructions per inference under qemu.

Weight bytes are the report's ``size_bytes.weights``: every constant of the integer module, int4
layers counted packed (two weights per byte) -- biases, multipliers and shifts included.

    python benchmarks/precision_accuracy.py [--mobilenet] [--mcu]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import tvm_qplugin as tq
from qplugin_zoo import digits_split

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("int8", "int4")


def _row(label, r, extra=""):
    acc, w = r["accuracy"], r["size_bytes"]["weights"]
    bits = "".join(str(layer["w_bits"]) if layer["w_bits"] != 8 else "8" for layer in r["layers"])
    return (f"{label:<22} weights {w:>9,d} B  agreement {acc['value']:.4f}  confident "
            f"{acc.get('top1_agreement_confident') or float('nan'):.4f}  top5 {acc['top5_contains']:.4f}  "
            f"bit_exact {r['bit_exact']}  w_bits {bits}{extra}")


def digits(tmp: Path) -> None:
    x_train, _, x_test, y_test = digits_split()
    calib, ev = tmp / "calib.npz", tmp / "eval.npz"
    np.savez(calib, input=x_train[:128])
    np.savez(ev, input=x_test, labels=y_test)
    print("digits CNN (540 held-out digits, labelled)")
    base = None
    for precision in PRECISIONS:
        t = time.perf_counter()
        r = tq.compile(ROOT / "examples" / "digits_cnn.onnx", calib=str(calib), eval=str(ev), precision=precision).report
        if base is None:
            base = r["size_bytes"]["weights"]
            print(f"  {'fp32':<20} top-1 {r['accuracy']['top1_fp32']:.4f}")
        ratio = r["size_bytes"]["weights"] / base
        print("  " + _row(precision, r, f"  top-1 {r['accuracy']['top1_int']:.4f}  size x{ratio:.3f}  "
                                       f"({time.perf_counter() - t:.0f} s)"))


def mobilenet() -> None:
    from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx

    calib, evaluation = imagenet_calib_eval()
    print(f"MobileNetV2 ({len(evaluation)} real photo crops, agreement with fp32)")
    base = None
    for precision in PRECISIONS:
        t = time.perf_counter()
        r = tq.compile(mobilenet_v2_onnx(), calib={"input": calib}, eval={"input": evaluation},
                       precision=precision).report
        base = base or r["size_bytes"]["weights"]
        print("  " + _row(precision, r, f"  size x{r['size_bytes']['weights'] / base:.3f}  latency "
                                       f"{r['latency_ms']['median']:.2f} ms  ({time.perf_counter() - t:.0f} s)"))


def mcu() -> None:
    x_train, _, x_test, _ = digits_split()
    print("digits CNN C package, qemu-mps2-an386 (Cortex-M4)")
    for precision in PRECISIONS:
        r = tq.compile(ROOT / "examples" / "digits_cnn.onnx", target="qemu-mps2-an386", calib={"input": x_train[:128]},
                       eval={"input": x_test[:64]}, precision=precision).report
        m = r["memory"]
        print(f"  {precision:<6} flash {m['flash_bytes']:>8,d} B  ram {m['ram_bytes']:>7,d} B  instructions/inference "
              f"{r['mcu']['instructions_per_inference']}  bit_exact {r['mcu']['bit_exact']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mobilenet", action="store_true", help="also MobileNetV2 (minutes per precision)")
    ap.add_argument("--mcu", action="store_true", help="also the digits C package under qemu Cortex-M4")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        digits(Path(d))
    if a.mcu:
        mcu()
    if a.mobilenet:
        mobilenet()


if __name__ == "__main__":
    main()
