"""Depthwise convs on channel lanes (schedules/x86_depthwise_lanes.py): bit-exact against the NumPy
twin for u8/s8/s16 activations at the dtype extremes (all-min, all-max, random, alternating: one
batch item each, so every build also runs a batch of 4), full-range weights, strides 1 and 2, 3x3
and 5x5, on AVX-512 VNNI, on the AVX2-restricted target and on AVX-VNNI without AVX-512; and the
shapes the rule leaves to the pixel-lane rule (odd channel counts, wide output rows, stride 2 on
256-bit ISAs) or to the plain rules (a constant output), still exact.

Every case goes through ``build.build`` (prepacking + schedule rules + tvm.compile) like a compile.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_x86_depthwise import depthwise_params
from test_x86_kernels import (
    INSTRUCTION,
    PATTERNS,
    activations,
    check_kernel,
    requant_consts,
    weights,
)

from tvm_qplugin.schedules.x86_depthwise_lanes import MAX_OUT_WIDTH

# (target, x dtype, channels, input plane, kernel, stride) -> the rule expected to take it
CASES = {
    "vnni-u8-7x7": ("vnni", "uint8", 32, 7, 3, 1, "DepthwiseChannelLanes"),
    "vnni-s8-7x7": ("vnni", "int8", 16, 7, 3, 1, "DepthwiseChannelLanes"),
    "vnni-s16-7x7": ("vnni", "int16", 16, 7, 3, 1, "DepthwiseChannelLanes"),
    "vnni-s8-14x14-s2": ("vnni", "int8", 32, 14, 3, 2, "DepthwiseChannelLanes"),
    "vnni-u8-13x13-s2": ("vnni", "uint8", 16, 13, 3, 2, "DepthwiseChannelLanes"),
    "vnni-s8-5x5": ("vnni", "int8", 16, 7, 5, 1, "DepthwiseChannelLanes"),
    "vnni-u8-asymmetric": ("vnni", "uint8", 16, 5, 3, 1, "DepthwiseChannelLanes"),
    "avx2-u8-7x7": ("avx2", "uint8", 16, 7, 3, 1, "DepthwiseChannelLanes"),
    "avx2-s8-7x7": ("avx2", "int8", 8, 7, 3, 1, "DepthwiseChannelLanes"),
    "avx2-s16-7x7": ("avx2", "int16", 8, 7, 3, 1, "DepthwiseChannelLanes"),
    "avxvnni-s8-7x7": ("avxvnni", "int8", 16, 7, 3, 1, "DepthwiseChannelLanes"),
    # left to the pixel-lane rule
    "vnni-odd-channels": ("vnni", "int8", 24, 7, 3, 1, "DepthwiseConv2DTensorized"),
    "avx2-odd-channels": ("avx2", "uint8", 12, 7, 3, 1, "DepthwiseRowPairs"),   # AVX2 stride 1: row pairs
    "vnni-14x14-s1": ("vnni", "uint8", 16, 14, 3, 1, "DepthwiseConv2DTensorized"),
    "avx2-14x14-s2": ("avx2", "uint8", 16, 14, 3, 2, "DepthwiseConv2DTensorized"),
}


def _extremes(rng, c, plane, xdt, kernel):
    """Four batch items (one per input pattern) and full-range weights with whole channels at
    +127 and -127 (the largest sums the offset / int16 routes can see)."""
    x = np.concatenate([activations(rng, (1, c, plane, plane), xdt, p) for p in PATTERNS])
    wt = weights(rng, (c, 1, kernel, kernel))
    wt[1], wt[2] = 127, -127
    return x, wt


@pytest.mark.parametrize("case", sorted(CASES))
def test_channel_lanes_bit_exact_at_extremes(rng, case):
    target_name, xdt, c, plane, kernel, stride, rule = CASES[case]
    x, wt = _extremes(rng, c, plane, xdt, kernel)
    pad = (kernel // 2,) * 4 if case != "vnni-u8-asymmetric" else (1, 0, 2, 1)   # asymmetric padding: a 6 x 4 output
    params = depthwise_params(c, kernel, stride, pad, "int8")
    consts = [wt, *requant_consts(rng, c, 8 + (8 if xdt == "int16" else 0) + (5 if kernel == 5 else 4))]
    info, asm = check_kernel("conv2d_requant", x, consts, target_name, **params)
    assert info is not None and info["rule"] == rule, case
    assert INSTRUCTION[target_name][xdt] in asm or (target_name, xdt) == ("avxvnni", "int16")
    if rule == "DepthwiseChannelLanes":
        assert info["out_shape"][3] <= MAX_OUT_WIDTH


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_constant_output_is_refused_and_stays_exact(rng, target_name):
    """qmin == qmax (an ONNX Clip to one value after the layer): the requantization is a constant,
    the epilogue no longer reads the sums -- no tensorized rule takes it (x86_int8._constant_output)
    and the plain kernel gives the constant."""
    c = 16
    x = activations(rng, (1, c, 7, 7), "uint8", "random")
    params = {**depthwise_params(c, 3, 1, (1, 1, 1, 1)), "qmin": 3, "qmax": 3}
    info, _ = check_kernel("conv2d_requant", x, [weights(rng, (c, 1, 3, 3)), *requant_consts(rng, c, 19)],
                           target_name, **params)
    assert info is None


def test_rule_is_registered_and_named_in_the_report():
    """The rule is in schedules.RULES ahead of the pixel-lane rule (it must see the kernels first),
    and layers[].kernel.why names it and its file."""
    from tvm_qplugin.schedules import RULES
    from tvm_qplugin.tuning.apply import AppliedTuning

    names = [type(rule).__name__ for rule in RULES]
    assert names.index("DepthwiseChannelLanes") < names.index("DepthwiseRowPairs") < \
        names.index("DepthwiseConv2DTensorized")
    applied = AppliedTuning(db=None, tensorized={"k": {"rule": "DepthwiseChannelLanes", "isa": "vnni"}})
    why = applied._kernel_source("k")["why"]
    assert "DepthwiseChannelLanes" in why and "schedules/x86_depthwise_lanes.py" in why and "vpdpbusd" in why


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_int4_depthwise_runs_on_channel_lanes_bit_exact(rng, target_name):
    """int4 weights (conv2d_requant_w4) are widened at build into the int8 packers
    (schedules/x86_int4.py), this rule among them: all four input patterns, == the twin."""
    from test_int4 import check_patterns, nibbles

    from tvm_qplugin.quant.int4 import pack_int4

    c = 16
    w = nibbles(rng, (c, 1, 3, 3))
    params = {**depthwise_params(c, 3, 1, (1, 1, 1, 1), "int8"), "w_shape": list(w.shape)}
    consts = [pack_int4(w.reshape(c, -1)), *requant_consts(rng, c, 16)]
    info, _ = check_patterns(rng, "conv2d_requant_w4", (1, c, 7, 7), "int8", consts, target_name, **params)
    assert info is not None and info["rule"] == "DepthwiseChannelLanes" and info["int4"] == "widened at build", info
