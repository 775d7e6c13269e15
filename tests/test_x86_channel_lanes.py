"""Pointwise convs on small planes with the output channels as lanes
(schedules/x86_conv_channel_lanes.py): bit-exact against the NumPy twin at the dtype extremes,
taken only where the pixel lanes would waste work (7x7 on AVX-512 VNNI), never on AVX2.

Each case is built once (module-scoped) through ``build.build`` and run on every input pattern.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact, host_runs
from test_int4 import check_patterns, nibbles
from test_x86_kernels import (
    INSTRUCTION,
    PATTERNS,
    TARGETS,
    activations,
    asm_of,
    one_op_module,
    weights,
)
from tvm import relax

from tvm_qplugin.build import build
from tvm_qplugin.ops import OPS
from tvm_qplugin.quant.int4 import pack_int4
from tvm_qplugin.schedules import pack_weights
from tvm_qplugin.schedules.packing import packed_info
from tvm_qplugin.schedules.x86_conv_channel_lanes import _pixel_lane_waste

PARAMS = {"strides": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1, "qmin": -128, "qmax": 127,
          "out_dtype": "int8"}
# (target, x dtype, N, C_in, C_out, plane): 7x7 (49 of 64 pixel lanes), batch 2 (98 pixel rows),
# one channel vector (nr 1), and the cases left to the pixel-lane kernel
CASES = {
    "vnni-u8-7x7": ("vnni", "uint8", 1, 64, 48, 7),
    "vnni-s8-7x7": ("vnni", "int8", 1, 96, 32, 7),
    "vnni-s16-7x7": ("vnni", "int16", 1, 40, 32, 7),
    "vnni-s8-batch2": ("vnni", "int8", 2, 32, 16, 7),
    "vnni-s16-5x5": ("vnni", "int16", 1, 24, 16, 5),
    "vnni-14x14-pixel-lanes": ("vnni", "int8", 1, 32, 32, 14),
    "vnni-odd-channels-pixel-lanes": ("vnni", "int8", 1, 32, 24, 7),
    "avx2-7x7-pixel-lanes": ("avx2", "int8", 1, 32, 32, 7),
}
CHANNEL_LANES = {"vnni-u8-7x7", "vnni-s8-7x7", "vnni-s16-7x7", "vnni-s8-batch2", "vnni-s16-5x5"}


def _consts(rng, o, c, xdt):
    """Full-range weights; per-channel shifts over 31..45 with multipliers scaled to them, so that
    some outputs land inside the range and others clamp at both ends."""
    wt = weights(rng, (o, c, 1, 1))
    bias = rng.integers(-(2**15), 2**15, o).astype(np.int32)
    acc_bits = 8 + (8 if xdt == "int16" else 0) + 6
    shift = rng.integers(31, 46, o).astype(np.int64)
    mult = np.clip(np.exp2(shift + 7.0 - acc_bits) * rng.uniform(1, 2, o), 1, 2**31 - 1).astype(np.int64)
    return [wt, bias, mult, shift]


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request):
    """(case, consts, the VM's main, the packed kernel's description, the assembly) of one case."""
    target_name, xdt, n, c, o, hw = CASES[request.param]
    rng = np.random.default_rng(1)
    consts = _consts(rng, o, c, xdt)
    mod = one_op_module("conv2d_requant", np.zeros((n, c, hw, hw), xdt), consts, **PARAMS)
    target = TARGETS[target_name]
    infos = [packed_info(f) for f in pack_weights(mod, target).functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    executable, _ = build(mod, target)
    main = relax.VirtualMachine(executable, tvm.cpu())["main"] if host_runs(target) else None  # None: ISA not here
    return request.param, consts, main, next(i for i in infos if i), asm_of(executable)


def test_small_plane_pointwise_conv_bit_exact_at_extremes(built):
    case, consts, main, _info, asm = built
    target_name, xdt, n, c, _o, hw = CASES[case]
    rng = np.random.default_rng(2)
    for pattern in PATTERNS if main is not None else ():
        x = activations(rng, (n, c, hw, hw), xdt, pattern)
        got = main(tvm.runtime.tensor(x)).numpy()
        assert_bit_exact(got, OPS["conv2d_requant"].reference(x, *consts, **PARAMS), f"{case} {pattern}")
    ref = OPS["conv2d_requant"].reference(activations(rng, (n, c, hw, hw), xdt, "random"), *consts, **PARAMS)
    assert ((ref > -128) & (ref < 127)).mean() > 0.2, "the requantization constants clamp almost everything"
    assert INSTRUCTION[target_name][xdt] in asm


def test_channel_lanes_only_where_pixel_lanes_waste_work(built):
    case, *_, info, _asm = built
    want = "Conv2D1x1ChannelLanes" if case in CHANNEL_LANES else "Conv2DTensorized"
    assert info["rule"] == want, f"{case}: {info['rule']}"


def test_pixel_lane_waste():
    assert _pixel_lane_waste(49, 16) == pytest.approx(15 / 64)   # 7x7: 2 vectors of 32 pixels
    assert _pixel_lane_waste(196, 16) == pytest.approx(12 / 208)  # 14x14: 13 vectors
    assert _pixel_lane_waste(3136, 16) == 0                       # 56x56


def test_int4_pointwise_conv_widened_into_the_channel_lane_kernel():
    """An int4 1x1 conv on a 7x7 plane goes through Int4WidenedAtBuild into this rule (weights
    widened at build) and stays bit-exact with the int4 op's twin."""
    rng = np.random.default_rng(3)
    w = nibbles(rng, (16, 32, 1, 1))
    consts = [pack_int4(w.reshape(16, -1)), *_consts(rng, 16, 32, "int8")[1:]]
    info, asm = check_patterns(rng, "conv2d_requant_w4", (1, 32, 7, 7), "int8", consts, "vnni",
                               **PARAMS, w_shape=list(w.shape))
    assert info["rule"] == "Conv2D1x1ChannelLanes" and info["int4"] == "widened at build", info
    assert "vpdpbusd" in asm
