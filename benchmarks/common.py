"""Shared timing helper for the side-by-side benchmarks."""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np


def timed_ms(fn, runs: int) -> list[float]:
    """Wall times of ``runs`` calls of ``fn()`` in milliseconds, after one warm-up call."""
    fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return ts


def median_ms(fn, runs: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls, after one warm-up call."""
    return float(np.median(timed_ms(fn, runs)))


def onnxruntime_static_int8(path: str, feeds: list[dict], activation_type: str = "QUInt8", sess_options=None):
    """ONNX Runtime's static QDQ int8 (per-channel weights) calibrated on ``feeds``: the peer session."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        qpath = os.path.join(d, "int8.onnx")
        quantize_static(path, qpath, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8)
        return ort.InferenceSession(qpath, sess_options, providers=["CPUExecutionProvider"])


def onnxruntime_dynamic_int8(path: str, sess_options=None):
    """ONNX Runtime's dynamic int8 (int8 weights, activations quantized at run time): the peer
    ONNX Runtime documents for transformer encoders."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        qpath = os.path.join(d, "dynamic_int8.onnx")
        quantize_dynamic(path, qpath, weight_type=QuantType.QInt8)
        return ort.InferenceSession(qpath, sess_options, providers=["CPUExecutionProvider"])
