"""A real detector: ddddocr's YOLOX-like character detector (``ddddocr==1.6.1``, common_det.onnx:
Conv, Sigmoid, SiLU = Mul(x, Sigmoid(x)), Focus Slices, nearest Resize, SPP MaxPools, Concat)
compiled integer-only for the host, bit-exact against the NumPy reference, and compared with
ONNX Runtime fp32 on real images: cosine of the raw output map, and IoU of the boxes after the
model's own decoding + NMS."""
from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

import tvm_qplugin as tq
from qplugin_zoo.ddddocr_det import box_agreement, ddddocr_det_onnx, decode, detector_inputs, evaluation_inputs
from tvm_qplugin.ops import op_of
from tvm_qplugin.passes.graph import Graph

log = logging.getLogger(__name__)


@pytest.mark.slow
@pytest.mark.extended  # 3.3 min in CI: make test-extended
def test_ddddocr_detector_integer_only_bit_exact_and_close_to_fp32():
    path = ddddocr_det_onnx()
    names, evals = evaluation_inputs()
    art = tq.compile(path, calib={"images": detector_inputs(16, seed=0)}, eval={"images": evals}, timing_runs=3)
    r = art.report
    assert r["integer_only"] is True and r["float_ops"] == 0, r.get("allowed_float_ops")
    assert r["bit_exact"] is True and r["bit_exact_inputs"] == len(evals)
    mod = art.integer_mod
    kernels = {op_of(mod[b.args[0]])[0] for b in Graph(mod["core"]).bindings if b.op_name == "relax.call_tir"}
    assert {"lut", "mul_requant", "strided_slice", "resize_nearest", "max_pool2d"} <= kernels, kernels

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = []
    for name, x in zip(names, evals):
        want = sess.run(None, {"images": x[None]})[0]
        got = art.run({"images": x[None]})[0]
        cos = float(got.ravel().astype(np.float64) @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want)))
        iou, n_ref, n_got = box_agreement(decode(want), decode(got))
        rows.append((name, cos, iou, n_ref, n_got))
        log.warning("ddddocr %-16s cosine %.4f  box IoU %.3f  boxes fp32 %d int8 %d", name, cos, iou, n_ref, n_got)
    cosines = [c for _, c, _, _, _ in rows]
    assert min(cosines) >= 0.98, f"output-map cosine vs fp32 {rows} (want >= 0.98 on every image)"
    page = next(row for row in rows if row[0] == "page")
    assert page[3] >= 20 and page[2] >= 0.8, f"page boxes: {page} (want >= 20 fp32 boxes, mean best IoU >= 0.8)"
    log.warning("ddddocr latency %s ms (integer, host, median)", (r.get("latency_ms") or {}).get("median"))


@pytest.mark.parametrize("name,missing", [("common.onnx", ["LSTM (node 'LSTM_79')"]),
                                          ("common_old.onnx", ["ConvInteger (nodes 'Conv_0_quant'", "MatMulInteger",
                                                               "com.microsoft.DynamicQuantizeLSTM"])])
def test_ddddocr_recognisers_are_refused_once_with_every_missing_op(name, missing):
    """The wheel's other two models (CRNN with an LSTM; its ONNX Runtime-quantized twin): one error
    naming every op type without an integer lowering and its nodes."""
    from tvm_qplugin.errors import UnsupportedOpError

    path = ddddocr_det_onnx().with_name(name)
    with pytest.raises(UnsupportedOpError) as e:
        tq.compile(path, calib={"input1": np.zeros((1, 1, 64, 128), np.float32)}, input_shapes=["input1=1,1,64,128"])
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and all(m in msg for m in missing), msg
