"""C kernels of the coverage ops (lut, mul_requant, prelu_requant, resize_nearest, strided_slice)
against their NumPy twins, bit for bit: host build under ASan + UBSan, and Cortex-M4 under qemu."""
from __future__ import annotations

import numpy as np
import pytest
from package_probe import check_board, check_host, packaged
from tvm import relax

from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.ops import const, emit
from tvm_qplugin.quant import dyadic


def coverage_zoo():
    """(module, inputs): every coverage kernel, both 8-bit LUT inputs, broadcast and flat products,
    per-channel and single-slope PRelu, a reversed strided slice."""
    rng = np.random.default_rng(3)
    bb = relax.BlockBuilder()
    xs = relax.Var("xs", relax.TensorType([1, 6, 5, 7], "int8"))
    xu = relax.Var("xu", relax.TensorType([1, 6, 5, 7], "uint8"))
    xw = relax.Var("xw", relax.TensorType([1, 6, 5, 7], "int16"))
    gate = relax.Var("gate", relax.TensorType([1, 6, 1, 1], "uint8"))
    d = dyadic(1 / 300)
    with bb.function("main", [xs, xu, xw, gate]):
        with bb.dataflow():
            outs = [
                emit(bb, "lut", [xs, const(rng.integers(0, 256, 256).astype(np.uint8))]),
                emit(bb, "lut", [xu, const(rng.integers(-32768, 32768, 256).astype(np.int16))]),
                emit(bb, "mul_requant", [xw, gate], multiplier=d.multiplier, shift=d.shift, qmin=-32768, qmax=32767,
                     out_dtype="int16"),
                emit(bb, "mul_requant", [xw, xw], multiplier=2**31 - 1, shift=45, qmin=-128, qmax=127,
                     out_dtype="int8"),
                emit(bb, "prelu_requant", [xw, const(rng.integers(-(2**30), 2**30, 6).astype(np.int64))],
                     pos=2**30, shift=31, axis=1, qmin=-32768, qmax=32767, out_dtype="int16"),
                emit(bb, "prelu_requant", [xs, const(np.array([-(2**29)], np.int64))], pos=2**30, shift=30, axis=0,
                     qmin=-128, qmax=127, out_dtype="int8"),
                emit(bb, "requantize", [emit(bb, "resize_nearest", [xw, const(np.array([0, 0, 1, 2, 4, 4, 3], np.int32)),
                                                                   const(np.array([6, 5, 0, 0, 1], np.int32))])],
                     multiplier=2**30, shift=31, qmin=-32768, qmax=32767, out_dtype="int16"),   # arena intermediate
                emit(bb, "strided_slice", [xs], begin=[0, 5, 0, 6], stride=[1, -2, 2, -3], out_shape=[1, 3, 3, 3]),
                emit(bb, "pad_constant", [xw], before=[0, 1, 2, 0], after=[0, 0, 1, 3], value=0),
                emit(bb, "resize_bilinear", [xw, const(np.array([[0, 1], [2, 3], [4, 4]], np.int32)),
                                             const(np.array([[1024, 0], [256, 768], [1000, 24]], np.int32)),
                                             const(np.array([[0, 1], [5, 6]], np.int32)),
                                             const(np.array([[1, 1023], [512, 512]], np.int32))],
                     multiplier=2**25, shift=45, qmin=-32768, qmax=32767, out_dtype="int16"),
                emit(bb, "zero_insert", [xs], strides=[2, 3]),
            ]
            gv = [bb.emit_output(o) for o in outs]
        bb.emit_func_output(relax.Tuple(gv))
    inputs = [np.concatenate([np.array([-128, 127, 0]), rng.integers(-128, 128, 207)]).astype(np.int8).reshape(1, 6, 5, 7),
              np.concatenate([np.array([0, 255]), rng.integers(0, 256, 208)]).astype(np.uint8).reshape(1, 6, 5, 7),
              np.concatenate([np.array([-32768, 32767, 0]), rng.integers(-32768, 32768, 207)]).astype(np.int16)
              .reshape(1, 6, 5, 7),
              np.array([0, 255, 7, 128, 1, 200], np.uint8).reshape(1, 6, 1, 1)]
    return bb.finalize(), inputs


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return packaged(*coverage_zoo(), tmp_path_factory.mktemp("cov"))


def test_coverage_kernels_host_sanitized(zoo, tmp_path):
    check_host(zoo, 11, tmp_path)


def test_coverage_kernels_cortex_m4(zoo, tmp_path):
    check_board(zoo, 11, "qemu-mps2-an386", tmp_path)


def test_nonzero_pad_value_is_refused_in_one_line(tmp_path):
    from tvm_qplugin.errors import UnsupportedOpError

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 2, 3, 3], "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            o = bb.emit_output(emit(bb, "pad_constant", [x], before=[0, 0, 1, 1], after=[0, 0, 1, 1], value=5))
        bb.emit_func_output(o)
    with pytest.raises(UnsupportedOpError, match=r"pad_constant with value 5 \(the C kernel pads with 0 only\)"):
        write_c_package(bb.finalize(), tmp_path / "pkg")
