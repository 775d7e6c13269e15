"""The coverage passes tested the TVM way (``Before`` in TVMScript, the pass, ``Expected``,
``tvm.ir.assert_structural_equal``): SplitToSlices, ConvTransposeToConv, FlattenOutputTuple.
Nothing is compiled or run."""
from __future__ import annotations

import numpy as np
import tvm
from pass_structure import apply
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_qplugin.passes.conv_transpose import ConvTransposeToConv, flipped_conv_weight
from tvm_qplugin.passes.outputs import FlattenOutputTuple
from tvm_qplugin.passes.split import SplitToSlices

W_T = (np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2) / 8).astype(np.float32)   # IOHW: 2 in, 3 out, 2x2


@I.ir_module
class SplitBefore:
    @R.function
    def main(x: R.Tensor((1, 8, 3), "float32")) -> R.Tensor((1, 6, 3), "float32"):
        with R.dataflow():
            t = R.split(x, indices_or_sections=[2], axis=1)
            a = t[0]  # noqa: F841  (the piece nobody reads: dropped)
            b = t[1]
            gv = R.add(b, R.const(1.0, "float32"))
            R.output(gv)
        return gv


@I.ir_module
class SplitExpected:
    @R.function
    def main(x: R.Tensor((1, 8, 3), "float32")) -> R.Tensor((1, 6, 3), "float32"):
        with R.dataflow():
            b = R.strided_slice(x, (1,), (2,), (8,), assume_inbound=False)
            gv = R.add(b, R.const(1.0, "float32"))
            R.output(gv)
        return gv


def test_split_pieces_become_slices_and_the_split_dies():
    tvm.ir.assert_structural_equal(apply(SplitToSlices, SplitBefore), SplitExpected)


def _convt_before():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 3, 8, 8), "float32"):
            with R.dataflow():
                gv = R.nn.conv2d_transpose(x, R.const(W_T), strides=[2, 2], padding=[0, 0, 0, 0],
                                           output_padding=[0, 0], kernel_layout="IOHW")
                R.output(gv)
            return gv

    return Before


def _convt_expected():
    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 3, 8, 8), "float32"):
            with R.dataflow():
                u = R.nn.conv2d_transpose(x, R.const(np.ones((2, 1, 1, 1), np.float32)), strides=[2, 2], groups=2)
                gv = R.nn.conv2d(u, R.const(flipped_conv_weight(W_T, 1)), strides=[1, 1], padding=[1, 1, 1, 1])
                R.output(gv)
            return gv

    return Expected


def test_conv_transpose_becomes_zero_insertion_and_conv():
    tvm.ir.assert_structural_equal(apply(ConvTransposeToConv, _convt_before()), _convt_expected())
    w = flipped_conv_weight(W_T, 1)
    assert w.shape == (3, 2, 2, 2) and w[1, 0, 0, 0] == W_T[0, 1, 1, 1]     # channels swapped, taps flipped


def test_zero_insertion_is_left_alone():
    once = apply(ConvTransposeToConv, _convt_before())
    tvm.ir.assert_structural_equal(apply(ConvTransposeToConv, once), once)


@I.ir_module
class TwoOutputsBefore:
    @R.function
    def main(x: R.Tensor((2,), "float32")) -> R.Tuple(R.Tensor((2,), "float32"), R.Tensor((2,), "float32")):
        with R.dataflow():
            a = R.nn.relu(x)
            b = R.sigmoid(a)
            gv = (a, b)
            R.output(gv)
        return gv


@I.ir_module
class TwoOutputsExpected:
    @R.function
    def main(x: R.Tensor((2,), "float32")) -> R.Tuple(R.Tensor((2,), "float32"), R.Tensor((2,), "float32")):
        with R.dataflow():
            a = R.nn.relu(x)
            b = R.sigmoid(a)
            R.output(a, b)
        return (a, b)


def test_output_tuple_becomes_the_return():
    tvm.ir.assert_structural_equal(FlattenOutputTuple(TwoOutputsBefore), TwoOutputsExpected)
