"""pad_mirror (Pad reflect / edge) and log_softmax_int: TVM build of the TE kernel == NumPy twin bit
for bit at the dtype extremes, through build.build for the AVX-512 VNNI and the AVX2-only target."""
from __future__ import annotations

import numpy as np
import pytest
from test_ops import edge_int8, run_both
from test_x86_kernels import activations, check_kernel

from conftest import assert_bit_exact


@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize("xdt", ["int8", "uint8", "int16", "int32"])
def test_pad_mirror_extremes(rng, mode, xdt):
    x = edge_int8(rng, (2, 3, 5, 4), xdt)
    before, after = ([0, 2, 4, 1], [1, 0, 3, 3]) if mode == "reflect" else ([1, 0, 7, 0], [0, 4, 2, 9])
    got, ref = run_both("pad_mirror", [x], before=before, after=after, mode=mode)
    assert_bit_exact(got, ref, f"pad_mirror {mode} {xdt}")


def test_pad_mirror_twin_is_onnx_reflect():
    """ONNX reflect excludes the border: [1 2 3] padded by 2 on the left is [3 2 1 2 3]."""
    from tvm_qplugin.ops import OPS

    y = OPS["pad_mirror"].reference(np.array([1, 2, 3], np.int8), before=[2], after=[2], mode="reflect")
    assert y.tolist() == [3, 2, 1, 2, 3, 2, 1]
    y = OPS["pad_mirror"].reference(np.array([1, 2, 3], np.int8), before=[2], after=[1], mode="edge")
    assert y.tolist() == [1, 1, 1, 2, 3, 3]


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("pattern", ["min", "max", "random", "alternating"])
@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_pad_mirror_through_the_build_on_both_isas(rng, target_name, pattern, mode):
    x = activations(rng, (1, 8, 6, 5), "int16", pattern)
    check_kernel("pad_mirror", x, [], target_name, before=[0, 0, 5, 1], after=[0, 0, 2, 4], mode=mode)


def log_softmax_params(in_scale: float, length: int, variant: str, out_scale: float, out_dtype: str = "int16"):
    import math

    from tvm_qplugin.ops.log_softmax import LOG2_FRAC_BITS
    from tvm_qplugin.quant import dyadic_pair, qrange
    from tvm_qplugin.quant import nonlinear_consts as nc

    ma, mb, shift = dyadic_pair(in_scale / out_scale, math.log(2.0) / 2**LOG2_FRAC_BITS / out_scale)
    qmin, qmax = qrange(out_dtype)
    return dict(in_scale=in_scale, n=nc.choose_softmax_n(in_scale, None, length, variant), variant=variant, exp_poly=2,
                ma=ma, mb=mb, shift=shift, qmin=qmin, qmax=qmax, out_dtype=out_dtype)


@pytest.mark.parametrize("variant", ["ivit", "ibert", "division-free"])
@pytest.mark.parametrize("xdt,in_scale", [("int8", 0.1), ("int16", 0.0005)])
def test_log_softmax_int_extremes(rng, variant, xdt, in_scale):
    from tvm_qplugin.ops.log_softmax import log2_table

    x = edge_int8(rng, (3, 4, 33), xdt)
    x[0, 0] = np.iinfo(xdt).max          # an all-equal row: log(1/L) exactly
    x[0, 1, ::2] = np.iinfo(xdt).min     # the widest spread
    got, ref = run_both("log_softmax_int", [x, log2_table()], **log_softmax_params(in_scale, 33, variant, 32 / 32768))
    assert_bit_exact(got, ref, f"log_softmax_int {variant} {xdt}")


@pytest.mark.parametrize("variant", ["ivit", "ibert", "division-free"])
def test_log_softmax_twin_close_to_float(rng, variant):
    from tvm_qplugin.ops import OPS
    from tvm_qplugin.ops.log_softmax import log2_table

    in_scale, out_scale = 8 / 32767, 20 / 32767
    x = rng.integers(-32767, 32768, (64, 50)).astype(np.int16)
    y = OPS["log_softmax_int"].reference(x, log2_table(), **log_softmax_params(in_scale, 50, variant, out_scale))
    f = x * in_scale
    f = f - f.max(1, keepdims=True)
    f = f - np.log(np.exp(f).sum(1, keepdims=True))
    err = np.abs(y * out_scale - np.maximum(f, -20))
    assert err.max() < 0.01, f"{variant}: max |error| {err.max():.4f} vs float log-softmax"


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("pattern", ["min", "max", "random", "alternating"])
def test_log_softmax_through_the_build_on_both_isas(rng, target_name, pattern):
    from tvm_qplugin.ops.log_softmax import log2_table

    x = activations(rng, (2, 6, 40), "int8", pattern)
    check_kernel("log_softmax_int", x, [log2_table()], target_name, **log_softmax_params(0.05, 40, "ivit", 1 / 1024))
