"""Integerize rules tested the TVM way, without a compile: a float ``Before`` in TVMScript, ranges
given by hand, ``integerize``, and the integer module compared with an ``Expected``.

``Expected`` is built with the op registry's ``emit`` (the kernels' TE definitions are tested
bit-exactly in test_ops.py; here the question is which kernel a rule picks, with which constants,
parameters and types). Its constants come from the scheme's stated rules, written out below:
symmetric per-channel int8 weights (``max |w_c| / 127``), int32 bias at ``s_x * s_w``, dyadic
``s_x * s_w / s_out``, unsigned 8-bit after a fused ReLU, 24-bit int32 graph outputs. The
``qplugin.op`` / ``qplugin.params`` tags of the main kernel are also checked as plain data, so a
regression inside ``emit`` itself cannot hide behind both sides using it.

``int_io`` keeps the module to the integer function alone; bias correction needs calibrated
channel means and is off (Ranges without them).
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_qplugin.calibrate import Ranges
from tvm_qplugin.errors import UnsupportedOpError
from tvm_qplugin.ops import const, emit, op_of
from tvm_qplugin.passes.graph import Graph
from tvm_qplugin.passes.integerize import IntegerizeConfig, integerize
from tvm_qplugin.quant import QType, dyadic, dyadic_pair

CONFIG = IntegerizeConfig(int_io=True, bias_correction=False)
OUT24 = 2**23 - 1          # a signed graph output keeps 24 bits: int32 in [-(2**23 - 1), 2**23 - 1]


def ranges_by_name(mod: tvm.IRModule, by_name: dict[str, tuple[float, float]]) -> Ranges:
    """Calibrated ranges keyed by the Relax vars of ``main`` (params and bindings), given by name."""
    g = Graph(mod["main"])
    named = {v.name: v for v in list(g.params) + [b.var for b in g.bindings]}
    return Ranges({named[n]: r for n, r in by_name.items()}, histograms={})


def integer_function(params: list[relax.Var], body) -> tvm.IRModule:
    """The Expected integer module: ``main(params)`` whose dataflow block ``body(bb, *params)`` emits."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.finalize()


def kernel_calls(mod: tvm.IRModule) -> list[tuple[str, dict]]:
    """``(qplugin.op, qplugin.params)`` of every call_tir of ``main``, in binding order."""
    return [op_of(mod[b.args[0]]) for b in Graph(mod["main"]).bindings if b.op_name == "relax.call_tir"]


def per_channel_int8(w_q: np.ndarray, step: np.ndarray) -> np.ndarray:
    """float32 weights ``w_q * step[c]`` with some ``|w_q| = 127`` in every channel, so that the
    rule's integers are ``w_q`` (its scales are :func:`weight_scale`, ``step`` up to float32)."""
    assert (np.abs(w_q).reshape(len(step), -1).max(axis=1) == 127).all()
    return (w_q * step.reshape((-1,) + (1,) * (w_q.ndim - 1))).astype(np.float32)


def weight_scale(w: np.ndarray) -> np.ndarray:
    """The scheme's per-output-channel weight scale, ``max |w_c| / 127`` (channels on axis 0)."""
    return np.abs(w).reshape(len(w), -1).max(axis=1).astype(np.float64) / 127


# --- conv2d + bias + ReLU -> one conv2d_requant (uint8), then max_pool2d on the same type -------

RNG = np.random.default_rng(5)
CONV_WQ = RNG.integers(-127, 128, (2, 3, 3, 3)).astype(np.int8)
CONV_WQ[0, 0, 0, 0], CONV_WQ[1, 2, 1, 1] = 127, -127
CONV_STEP = np.array([0.01, 0.02])
CONV_W = per_channel_int8(CONV_WQ, CONV_STEP)
CONV_B = np.array([0.3, -0.7], np.float32)

X_QT = QType("int8", 2.0 / 127)          # x in [-2, 2]
RELU_QT = QType("uint8", 6.0 / 255)      # ReLU output in [0, 6]


@I.ir_module
class ConvBiasReluPool:
    @R.function
    def main(x: R.Tensor((1, 3, 4, 4), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(CONV_W), padding=[1, 1, 1, 1])
            b = R.add(c, R.const(CONV_B.reshape(1, 2, 1, 1)))
            r = R.nn.relu(b)
            gv = R.nn.max_pool2d(r, pool_size=[2, 2], strides=[2, 2])
            R.output(gv)
        return gv


def _conv_expected_constants():
    w_scale = weight_scale(CONV_W)
    bias = np.floor(CONV_B / (X_QT.scale * w_scale) + 0.5).astype(np.int32)
    ds = [dyadic(X_QT.scale * s / RELU_QT.scale) for s in w_scale]
    mult = np.array([d.multiplier for d in ds], np.int64)
    shift = np.array([d.shift for d in ds], np.int64)
    return bias, mult, shift


def test_conv_bias_relu_becomes_one_conv2d_requant():
    ranges = ranges_by_name(ConvBiasReluPool, {"x": (-2.0, 2.0), "c": (-9.0, 9.0), "b": (-9.0, 9.0),
                                               "r": (0.0, 6.0), "gv": (0.0, 6.0)})
    im = integerize(ConvBiasReluPool, ranges, CONFIG)
    bias, mult, shift = _conv_expected_constants()
    conv_params = dict(strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=1, qmin=0, qmax=255,
                       out_dtype="uint8")

    def body(bb, x):
        y = emit(bb, "conv2d_requant", [x, const(CONV_WQ), const(bias), const(mult), const(shift)], **conv_params)
        return emit(bb, "max_pool2d", [y], pool_size=[2, 2], strides=[2, 2], dilation=[1, 1],
                    padding=[0, 0, 0, 0], ceil_mode=False, pad_value=0)

    expected = integer_function([relax.Var("x", relax.TensorType((1, 3, 4, 4), "int8"))], body)
    tvm.ir.assert_structural_equal(im.mod, expected)
    assert kernel_calls(im.mod) == [
        ("conv2d_requant", conv_params),
        ("max_pool2d", {"pool_size": [2, 2], "strides": [2, 2], "dilation": [1, 1], "padding": [0, 0, 0, 0],
                        "ceil_mode": False, "pad_value": 0}),
    ]
    assert im.inputs == [("x", (1, 3, 4, 4), X_QT)] and im.outputs == [("gv", (1, 2, 2, 2), RELU_QT)]
    assert [(l.name, l.op, l.macs) for l in im.layers] == [("c", "conv2d", 2 * 4 * 4 * 3 * 3 * 3)]


# --- matmul + bias as a graph output -> dense_requant to 24-bit int32 --------------------------

DENSE_WQ = RNG.integers(-127, 128, (3, 4)).astype(np.int8)     # (N, K)
DENSE_WQ[:, 0] = [127, -127, 127]
DENSE_STEP = np.array([0.5, 0.25, 0.125])
DENSE_W = per_channel_int8(DENSE_WQ, DENSE_STEP).T               # the graph holds (K, N)
DENSE_B = np.array([1.0, -2.0, 0.5], np.float32)


@I.ir_module
class DenseBias:
    @R.function
    def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 3), "float32"):
        with R.dataflow():
            y = R.matmul(x, R.const(DENSE_W))
            gv = R.add(y, R.const(DENSE_B))
            R.output(gv)
        return gv


def test_dense_bias_output_becomes_dense_requant_int32_24bit():
    ranges = ranges_by_name(DenseBias, {"x": (-1.0, 0.5), "y": (-100.0, 100.0), "gv": (-120.0, 80.0)})
    im = integerize(DenseBias, ranges, CONFIG)
    x_qt, out_qt = QType("int8", 1.0 / 127), QType("int32", 120.0 / OUT24, levels=OUT24)
    w_scale = weight_scale(DENSE_W.T)
    bias = np.floor(DENSE_B / (x_qt.scale * w_scale) + 0.5).astype(np.int32)
    ds = [dyadic(x_qt.scale * s / out_qt.scale) for s in w_scale]
    params = dict(qmin=-OUT24, qmax=OUT24, out_dtype="int32")

    def body(bb, x):
        return emit(bb, "dense_requant", [x, const(DENSE_WQ), const(bias),
                                          const(np.array([d.multiplier for d in ds], np.int64)),
                                          const(np.array([d.shift for d in ds], np.int64))], **params)

    expected = integer_function([relax.Var("x", relax.TensorType((2, 4), "int8"))], body)
    tvm.ir.assert_structural_equal(im.mod, expected)
    assert kernel_calls(im.mod) == [("dense_requant", params)]
    assert im.outputs == [("gv", (2, 3), out_qt)]


# --- residual add + ReLU -> one add_requant, two multipliers on one shift ----------------------

@I.ir_module
class AddRelu:
    @R.function
    def main(a: R.Tensor((1, 8), "float32"), b: R.Tensor((1, 8), "float32")) -> R.Tensor((1, 8), "float32"):
        with R.dataflow():
            s = R.add(a, b)
            gv = R.nn.relu(s)
            R.output(gv)
        return gv


def test_add_relu_becomes_one_add_requant():
    ranges = ranges_by_name(AddRelu, {"a": (-1.0, 1.0), "b": (0.0, 4.0), "s": (-1.0, 5.0), "gv": (0.0, 5.0)})
    im = integerize(AddRelu, ranges, CONFIG)
    a_qt, b_qt = QType("int8", 1.0 / 127), QType("uint8", 4.0 / 255)
    out_qt = QType("int32", 5.0 / (2**24 - 1), levels=2**24 - 1)   # unsigned 24-bit graph output
    ma, mb, shift = dyadic_pair(a_qt.scale / out_qt.scale, b_qt.scale / out_qt.scale)
    params = dict(ma=ma, mb=mb, shift=shift, qmin=0, qmax=2**24 - 1, out_dtype="int32")

    def body(bb, a, b):
        return emit(bb, "add_requant", [a, b], **params)

    expected = integer_function([relax.Var("a", relax.TensorType((1, 8), "int8")),
                                 relax.Var("b", relax.TensorType((1, 8), "uint8"))], body)
    tvm.ir.assert_structural_equal(im.mod, expected)
    assert kernel_calls(im.mod) == [("add_requant", params)]
    assert [t.dtype for _, _, t in im.inputs] == ["int8", "uint8"]


# --- what no rule takes is reported once, by name -------------------------------------------------

@I.ir_module
class ConvOfTwoInputs:
    @R.function
    def main(x: R.Tensor((1, 3, 4, 4), "float32"), w: R.Tensor((2, 3, 1, 1), "float32")
             ) -> R.Tensor((1, 2, 4, 4), "float32"):
        with R.dataflow():
            gv = R.nn.conv2d(x, w)
            R.output(gv)
        return gv


def test_conv_with_activation_weight_is_refused_by_name():
    ranges = ranges_by_name(ConvOfTwoInputs, {"x": (-1.0, 1.0), "w": (-1.0, 1.0), "gv": (-3.0, 3.0)})
    with pytest.raises(UnsupportedOpError, match=r"cannot integerize 1 op\(s\): gv: relax.nn.conv2d "
                                                 r"\(weight is not a constant\)"):
        integerize(ConvOfTwoInputs, ranges, CONFIG)


# --- avg_pool2d -> avg_pool2d_requant: one dyadic 1/count per output position ----------------------

def _avg_pool(count_include_pad: bool) -> tvm.IRModule:
    @I.ir_module
    class AvgPool:
        @R.function
        def main(x: R.Tensor((1, 2, 3, 3), "float32")) -> R.Tensor((1, 2, 3, 3), "float32"):
            with R.dataflow():
                gv = R.nn.avg_pool2d(x, pool_size=[3, 3], strides=[1, 1], padding=[1, 1, 1, 1],
                                     count_include_pad=count_include_pad)
                R.output(gv)
            return gv

    return AvgPool


@pytest.mark.parametrize("count_include_pad,counts", [
    (False, [[4, 6, 4], [6, 9, 6], [4, 6, 4]]),     # corners see 4 real pixels, edges 6, the centre 9
    (True, [[9, 9, 9], [9, 9, 9], [9, 9, 9]]),
])
def test_avg_pool_divides_each_position_by_its_own_count(count_include_pad, counts):
    mod = _avg_pool(count_include_pad)
    im = integerize(mod, ranges_by_name(mod, {"x": (0.0, 1.0), "gv": (0.0, 1.0)}), CONFIG)
    levels = 2**24 - 1   # unsigned 24-bit graph output, in int32's symmetric range (never negative here)
    ((op, params),) = kernel_calls(im.mod)
    shift = params.pop("shift")
    assert (op, params) == ("avg_pool2d_requant", {"pool_size": [3, 3], "strides": [1, 1], "padding": [1, 1, 1, 1],
                                                   "qmin": -levels, "qmax": levels, "out_dtype": "int32"})
    (call,) = [b for b in Graph(im.mod["main"]).bindings if b.op_name == "relax.call_tir"]
    mult = call.args[1].fields[1].value.numpy()
    # s_in / s_out = (1 / 255) / (1 / levels): each position's multiplier is that ratio / its count
    want = (levels / 255) / np.array(counts, np.float64)
    np.testing.assert_allclose(mult / 2.0**shift, want, rtol=2.0**-30)
