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
