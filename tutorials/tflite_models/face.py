"""MediaPipe's float TFLite face detector compiled integer-only -- the tutorial's steps as one script.

    python tutorials/tflite_models/face.py --out out/face

(tests/test_face_detection.py runs it and checks what it prints.) Prints, per image, the best
face's score beside the float model's and the IoU of their boxes.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/face")
    a = p.parse_args()

    import tvm

    import tvm_qplugin as tq
    from qplugin_zoo import face_detection as fd
    from tvm_qplugin.calibrate import FloatRunner
    from tvm_qplugin.frontend import import_model
    from tvm_qplugin.passes.canonicalize import canonicalize

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = str(fd.face_detection_tflite())
    names, x = fd.face_inputs()
    np.savez(out / "faces.npz", input=x[1::2])                               # 2. calibration images
    r = subprocess.run([sys.executable, "-m", "tvm_qplugin", "compile", model, "--calib", str(out / "faces.npz"),
                        "-o", str(out / "artifact"), "--no-progress"], cwd=REPO)  # 3. compile
    if r.returncode != 0:
        return r.returncode
    art = tq.load(out / "artifact")                                          # 4. run and decode
    fp32 = FloatRunner(canonicalize(import_model(model).mod), tvm.target.Target("llvm"), observe=False)
    for name, xi in zip(names, x):
        s_q, box_q = fd.best_face(*art.run({"input": xi[None]}))
        s_f, box_f = fd.best_face(*fp32.run({"input": xi[None]})[1])
        print(f"{name:16s} score {s_q:.3f} (fp32 {s_f:.3f})  box IoU with fp32 {fd.iou(box_q, box_f):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
