"""ONNX ops accepted because of the coverage rules (passes/rules/activation.py, resample.py).

Kept in a module without TVM imports: the frontend's supported-op check runs before TVM loads.
Shape scaffolding (``ConstantOfShape``, ``Range``, ...) is not listed: it is accepted only where it
folds (passes/static_shapes.py).
"""
from __future__ import annotations

COVERAGE_ONNX_OPS = frozenset({
    "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu",   # rules/activation.py
    "Slice", "Resize", "Split", "Pad",                              # rules/resample.py (passes/split.py, pad.py)
    "ReduceSum",                                                    # rules/reduce.py
    "ConvTranspose",                                                # passes/conv_transpose.py + QZeroInsert
    "ReduceL2",                                                     # rules/pooling_norm.py (L2 normalisation)
    "LogSoftmax",                                                   # rules/log_softmax.py
})
