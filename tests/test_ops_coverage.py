"""The coverage ops (lut, prelu_requant, mul_requant, resize_nearest, strided_slice): TVM build of
the TE kernel == NumPy twin bit for bit, at the dtype extremes."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_bit_exact
from test_ops import edge_int8, run_both

from tvm_qplugin.quant import qrange


@pytest.mark.parametrize("xdt,odt", [("int8", "uint8"), ("uint8", "int8"), ("int8", "int16")])
def test_lut_every_input_value(rng, xdt, odt):
    lo, hi = qrange(xdt)
    x = np.arange(lo, hi + 1).astype(xdt).reshape(2, 8, 16)      # all 256 inputs, both extremes
    olo, ohi = qrange(odt)
    table = rng.integers(olo, ohi + 1, size=256).astype(odt)
    table[0], table[-1] = olo, ohi
    got, ref = run_both("lut", [x, table])
    assert_bit_exact(got, ref, "lut")
    assert ref.reshape(-1)[0] == olo and ref.reshape(-1)[-1] == ohi   # entry k <-> input qmin + k


@pytest.mark.parametrize("xdt,channels", [("int8", 1), ("int16", 6), ("uint8", 6), ("int32", 6)])
def test_prelu_requant_extremes(rng, xdt, channels):
    x = edge_int8(rng, (2, 6, 5, 3), xdt)
    neg = rng.integers(-(2**30), 2**31, size=channels).astype(np.int64)
    got, ref = run_both("prelu_requant", [x, neg], pos=2**30, shift=31 if xdt != "int32" else 40, axis=1,
                        qmin=-32768, qmax=32767, out_dtype="int16")
    assert_bit_exact(got, ref, "prelu_requant")
    if xdt != "uint8":
        assert (ref == -32768).any() or (ref == 32767).any() or (ref < 0).any()


@pytest.mark.parametrize("adt,bdt,bshape", [("int16", "uint8", (2, 4, 1, 1)), ("int16", "int16", (2, 4, 3, 5)),
                                            ("int8", "uint8", (1, 1, 3, 5))])
def test_mul_requant_broadcast_extremes(rng, adt, bdt, bshape):
    a = edge_int8(rng, (2, 4, 3, 5), adt)
    b = edge_int8(rng, bshape, bdt)
    got, ref = run_both("mul_requant", [a, b], n_inputs=2, multiplier=2**31 - 1, shift=38, qmin=-128, qmax=127,
                        out_dtype="int8")
    assert_bit_exact(got, ref, "mul_requant")
    assert (ref == 127).any() and (ref == -128).any()   # saturation both ways


def test_mul_requant_largest_product_does_not_overflow():
    a = np.array([[-32768, 32767, -32768]], np.int16)
    b = np.array([[-32768, -32768, 32767]], np.int16)
    got, ref = run_both("mul_requant", [a, b], n_inputs=2, multiplier=2**31 - 1, shift=62, qmin=-2**31,
                        qmax=2**31 - 1, out_dtype="int32")
    assert_bit_exact(got, ref, "mul_requant")
    exact = [(int(u) * int(v) * (2**31 - 1) + 2**61) >> 62 for u, v in zip(a[0], b[0])]   # Python ints: no overflow
    assert ref[0].tolist() == exact


def test_resize_nearest_index_maps(rng):
    x = edge_int8(rng, (1, 3, 4, 5), "int16")
    rows = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
    cols = np.array([4, 3, 0, 0, 2, 1, 1], np.int32)
    got, ref = run_both("resize_nearest", [x, rows, cols])
    assert_bit_exact(got, ref, "resize_nearest")
    assert ref[0, 1, 7, 0] == x[0, 1, 3, 4]


@pytest.mark.parametrize("begin,stride,out_shape", [([0, 0, 1, 0], [1, 1, 2, 2], [1, 3, 3, 4]),
                                                    ([0, 2, 4, 6], [1, -1, -2, -1], [1, 3, 3, 7])])
def test_strided_slice(rng, begin, stride, out_shape):
    x = edge_int8(rng, (1, 3, 6, 7), "int8")
    got, ref = run_both("strided_slice", [x], begin=begin, stride=stride, out_shape=out_shape)
    assert_bit_exact(got, ref, "strided_slice")
    sl = tuple(slice(b, (b + s * n) if b + s * n >= 0 else None, s) for b, s, n in zip(begin, stride, out_shape))
    np.testing.assert_array_equal(ref, x[sl])


def test_lookup_table_is_the_correctly_rounded_function():
    """Entry k of the sigmoid table is round_half_up(sigmoid(s_in * (qmin + k)) / s_out), saturated."""
    from tvm_qplugin.passes.rules.activation import LOOKUP_FUNCTIONS, lookup_table
    from tvm_qplugin.quant import QType

    sigmoid = LOOKUP_FUNCTIONS["relax.sigmoid"][0]
    out = QType("uint8", 1 / 255)
    table = lookup_table(sigmoid, "int8", 0.05, out)
    assert table.dtype == np.uint8 and table.shape == (256,)
    assert table[128] == 128                      # input 0 -> 0.5 * 255 = 127.5 rounds half up
    assert np.all(np.diff(table.astype(int)) >= 0) and table[0] == 0 and table[-1] == 255   # 0.42, 254.56 rounded
    q = np.arange(-128, 128)
    want = np.floor(1 / (1 + np.exp(-0.05 * q)) * 255 + 0.5)
    np.testing.assert_array_equal(table, want)
    tanh = lookup_table(LOOKUP_FUNCTIONS["relax.tanh"][0], "uint8", 0.02, QType("int8", 1 / 127))
    assert tanh[0] == 0 and tanh[255] == round(np.tanh(5.1) * 127)


@pytest.mark.parametrize("dtype,value", [("int8", -128), ("uint8", 255), ("int16", 0)])
def test_pad_constant(rng, dtype, value):
    x = edge_int8(rng, (1, 2, 3, 4), dtype)
    got, ref = run_both("pad_constant", [x], before=[0, 1, 2, 0], after=[1, 0, 1, 3], value=value)
    assert_bit_exact(got, ref, "pad_constant")
    assert ref.shape == (2, 3, 6, 7) and ref[0, 0, 0, 0] == value and ref[0, 1, 2, 0] == x[0, 0, 0, 0]


@pytest.mark.parametrize("dtype", ["int16", "uint8"])
def test_resize_bilinear_extremes(rng, dtype):
    x = edge_int8(rng, (1, 2, 4, 5), dtype)
    x.reshape(-1)[:4] = np.iinfo(dtype).max if dtype == "uint8" else [-32768, 32767, -32768, 32767]
    rows = np.array([[0, 0], [0, 1], [1, 2], [3, 3]], np.int32)
    rw = np.array([[1024, 0], [256, 768], [512, 512], [0, 1024]], np.int32)
    cols = np.array([[0, 1], [4, 4], [2, 3]], np.int32)
    cw = np.array([[1023, 1], [1024, 0], [1, 1023]], np.int32)
    got, ref = run_both("resize_bilinear", [x, rows, rw, cols, cw], multiplier=2**25, shift=45,   # acc < 2**36
                        qmin=int(np.iinfo(dtype).min), qmax=int(np.iinfo(dtype).max), out_dtype=dtype)
    assert_bit_exact(got, ref, "resize_bilinear")
    assert ref[0, 0, 0, 0] == round((1023 * int(x[0, 0, 0, 0]) + int(x[0, 0, 0, 1])) / 1024 + 1e-9)


@pytest.mark.parametrize("strides", [(2, 2), (3, 1)])
def test_zero_insert(rng, strides):
    x = edge_int8(rng, (1, 2, 3, 4), "int16")
    got, ref = run_both("zero_insert", [x], strides=list(strides))
    assert_bit_exact(got, ref, "zero_insert")
    assert ref[0, 1, strides[0], strides[1]] == x[0, 1, 1, 1]
    assert (ref[:, :, 1::strides[0]] == 0).all()       # the inserted rows are zeros
