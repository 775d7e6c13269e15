"""masked_mean_requant and l2_normalize_int (sentence-embedding heads): TVM build of the TE kernel ==
NumPy twin bit for bit at the dtype extremes, and the twins against float / exact Python integers."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from conftest import assert_bit_exact
from test_ops import edge_int8, run_both

from tvm_qplugin.ops import OPS
from tvm_qplugin.ops.pooling_norm import masked_mean_table
from tvm_qplugin.quant import qrange


def masks(rng, b, t, dtype="int64"):
    """Rows with every count from 0 (all padding) to t (no padding), and a random one."""
    m = np.zeros((b, t), dtype)
    for i in range(b):
        n = [0, t, 1, t - 1][i] if i < 4 else int(rng.integers(0, t + 1))
        m[i, :n] = 1
    return m


@pytest.mark.parametrize("xdt,mdt,odt", [("int8", "int64", "int16"), ("int16", "int32", "int16"),
                                         ("uint8", "int64", "uint8"), ("int32", "bool", "int32")])
def test_masked_mean_requant_extremes(rng, xdt, mdt, odt):
    b, t, d = 6, 9, 5
    x = edge_int8(rng, (b, t, d), xdt)
    lo, hi = qrange(xdt)
    x[1] = hi            # a full row of the largest value: the largest sum
    x[2] = lo
    table, shift = masked_mean_table(0.75 if odt != "int32" else 3.0, t, xdt)
    olo, ohi = qrange(odt)
    got, ref = run_both("masked_mean_requant", [x, masks(rng, b, t, mdt), table], n_inputs=2, shift=shift,
                        qmin=olo, qmax=ohi, out_dtype=odt)
    assert_bit_exact(got, ref, "masked_mean_requant")
    assert (ref[0] == 0).all()                                    # all padding -> 0, not a division by zero


def test_masked_mean_twin_is_the_correctly_rounded_mean(rng):
    """Each output is round_half_up(ratio * sum / count) up to the table's own rounding (< 1 step for
    sums below 2**shift / table[1] ... checked against exact fractions)."""
    b, t, d, ratio = 5, 7, 4, 0.3
    x = rng.integers(-32768, 32768, size=(b, t, d)).astype(np.int16)
    m = masks(rng, b, t)
    table, shift = masked_mean_table(ratio, t, "int16")
    y = OPS["masked_mean_requant"].reference(x, m, table, shift=shift, qmin=-2**31, qmax=2**31 - 1, out_dtype="int64")
    for i in range(b):
        n = int(m[i].sum())
        for j in range(d):
            s = int(x[i, :n, j].astype(np.int64).sum())
            exact = Fraction(ratio) * s / n if n else Fraction(0)
            assert abs(int(y[i, j]) - exact) <= Fraction(1, 2) + Fraction(abs(s), 2 ** (shift + 1)), (i, j, n)


def test_masked_mean_table_keeps_the_product_inside_int64():
    table, shift = masked_mean_table(2.0**4, 4096, "int32")      # a large ratio and long rows: shift lowered
    assert 4096 * 2**31 * int(table[1]) < 2**62 and table[0] == 0 and shift < 31 - 4
    assert table[1] == round(2.0**4 * 2**shift)
    with pytest.raises(ValueError, match="overflow int64"):
        masked_mean_table(2.0**20, 4096, "int32")                # no shift is small enough


@pytest.mark.parametrize("xdt,pre", [("int8", -8), ("int16", 0), ("int32", 16)])
def test_l2_normalize_int_extremes(rng, xdt, pre):
    x = edge_int8(rng, (4, 3, 17), xdt)
    lo, hi = qrange(xdt)
    x[0, 0] = 0                        # all-zero row -> 0
    x[0, 1] = 0
    x[0, 1, 5] = lo                    # one non-zero entry: -1.0 exactly
    x[0, 2] = hi                       # constant row of the largest value
    got, ref = run_both("l2_normalize_int", [x], pre_shift=pre)
    assert_bit_exact(got, ref, "l2_normalize_int")
    assert (ref[0, 0] == 0).all() and ref[0, 1, 5] == -32768
    assert ref[0, 2, 0] == round(2**15 / math.sqrt(17))


def test_l2_normalize_twin_close_to_float(rng):
    x = rng.integers(-32768, 32768, size=(64, 384)).astype(np.int16)
    x[:8] >>= 9                                                   # small norms too
    y = OPS["l2_normalize_int"].reference(x, pre_shift=0).astype(np.float64) / 2**15
    f = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    assert np.abs(y - f).max() <= 2.0**-14, np.abs(y - f).max()


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("pattern", ["min", "max", "random", "alternating"])
def test_heads_through_the_build_on_both_isas(rng, target_name, pattern):
    """The kernels as the pipeline builds them (build.build: default schedules) for the AVX-512 VNNI
    and the AVX2-only target, at the dtype extremes."""
    from test_x86_kernels import activations, check_kernel

    x = activations(rng, (4, 12, 16), "int16", pattern)
    table, shift = masked_mean_table(0.6, 12, "int16")
    check_kernel("masked_mean_requant", x, [masks(rng, 4, 12), table], target_name, shift=shift, qmin=-32768,
                 qmax=32767, out_dtype="int16")
    check_kernel("l2_normalize_int", activations(rng, (3, 5, 40), "int8", pattern), [], target_name, pre_shift=-8)
