"""The AVX2 row-pair depthwise rule (schedules/x86_depthwise_pairs.py): bit-exact against the NumPy
twin at the dtype extremes (u8 / s8 / s16, full-range weights), on odd planes (an odd number of
output rows: the tile's padded row; widths that are not whole vectors; 5x5; asymmetric or no
padding; 1-row planes), and taken only where it was measured faster (AVX2, stride 1).

The AVX2 kernels run on any x86-64 CI machine with AVX2; the VNNI / AVX-VNNI cases only pack (the
rule must leave them to the other rules), nothing of theirs runs.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact
from test_x86_depthwise import depthwise_params
from test_x86_kernels import PATTERNS, TARGETS, activations, check_kernel, requant_consts, weights
from tvm import relax

from tvm_qplugin.build import build
from tvm_qplugin.ops import OPS, const, emit
from tvm_qplugin.schedules import pack_weights
from tvm_qplugin.schedules.packing import packed_info
from tvm_qplugin.schedules.x86_requant_narrow import narrow_consts

RULE = "DepthwiseRowPairs"


def _full_range_weights(rng, c: int, k: int) -> np.ndarray:
    """Random int8 weights with the first channel all +127 and the last all -127 (the largest sums)."""
    wt = weights(rng, (c, 1, k, k))
    wt[0], wt[-1] = 127, -127
    return wt


@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("h", [16, 9])
def test_row_pairs_bit_exact_at_extremes(rng, xdt, h):
    """All-min, all-max, random and alternating activations (one batch item each) against
    full-range weights; 16 rows (2 pair rows x 2 vectors per tile: 8 accumulators) and 9 rows (an odd number of
    output rows: the last tile's second row is computed into the tile and dropped)."""
    c, w = 5, 13   # 2 vectors a row (the second partial)
    x = np.concatenate([activations(rng, (1, c, h, w), xdt, p) for p in PATTERNS])
    consts = [_full_range_weights(rng, c, 3), *requant_consts(rng, c, 8 + (8 if xdt == "int16" else 0) + 4)]
    info, asm = check_kernel("conv2d_requant", x, consts, "avx2", **depthwise_params(c, 3, 1, (1, 1, 1, 1), "int8"))
    assert info is not None and info["rule"] == RULE and info["isa"] == "avx2" and "vpmaddwd" in asm
    assert info["npar"] == 2 and info["rows"] == {16: 2, 9: 1}[h], info
    # shifts >= 33 and int32 sums: the narrow epilogue without the pre-shift (x86_requant_narrow)
    assert info["epilogue"] == "narrow" and "vpsllvd" not in asm, info
    # 16 rows: the plane of pairs (9 pair rows x 18 pairs) fits the stack in 2 even steps of 9 (_chunk)
    assert info["chunk"] == {16: 9, 9: 16}[h], info


@pytest.mark.parametrize("xdt", ["uint8", "int8"])
def test_unpacked_pairs_on_a_workspace_plane_bit_exact(rng, xdt):
    """A padded plane over the stack limit (18 x 81 bytes): the pairs are interleaved 8 at a time
    (UNPACK_ROWS: vpunpcklbw, then the widening)."""
    c, h, w = 2, 16, 64
    x = np.concatenate([activations(rng, (1, c, h, w), xdt, p) for p in PATTERNS])
    consts = [_full_range_weights(rng, c, 3), *requant_consts(rng, c, 8 + 4)]
    info, asm = check_kernel("conv2d_requant", x, consts, "avx2", **depthwise_params(c, 3, 1, (1, 1, 1, 1), "int8"))
    assert info["rule"] == RULE and info["chunk"] == 16 and "vpunpcklbw" in asm, info


@pytest.mark.parametrize("xdt", ["uint8", "int8"])
def test_narrow_epilogue_with_pre_shift_bit_exact(rng, xdt):
    """Shifts below 33 (small multipliers, small weights): the narrow epilogue shifts the
    accumulator left first (``narrow_shift``, vpsllvd); one channel at shift 32, one at 20."""
    c, h, w = 5, 10, 19
    x = np.concatenate([activations(rng, (1, c, h, w), xdt, p) for p in PATTERNS])
    wt = rng.integers(-20, 21, (c, 1, 3, 3)).astype(np.int8)
    bias = rng.integers(-(2**12), 2**12, c).astype(np.int32)
    mult = rng.integers(2**9, 2**11, c).astype(np.int64)
    shift = np.array([24, 32, 20, 24, 28], np.int64)
    info, asm = check_kernel("conv2d_requant", x, [wt, bias, mult, shift], "avx2",
                             **depthwise_params(c, 3, 1, (1, 1, 1, 1), "int8"))
    assert info["rule"] == RULE and info["epilogue"] == "narrow_shift" and "vpsllvd" in asm, info


def test_narrow_epilogue_refused_when_the_shifted_sum_can_leave_int32(rng):
    """A bias near the int32 limit: ``max|acc| + |bias|`` may not fit int32, so the kernel keeps
    x86_requant's int64 epilogue (bit-exact either way)."""
    c = 4
    x = np.concatenate([activations(rng, (1, c, 9, 11), "uint8", p) for p in PATTERNS])
    wt = _full_range_weights(rng, c, 3)
    bias = np.array([2**31 - 2**10, -(2**31) + 2**10, 5, -7], np.int32)
    mult = rng.integers(2**30, 2**31 - 1, c).astype(np.int64)
    shift = np.full(c, 56, np.int64)
    info, _ = check_kernel("conv2d_requant", x, [wt, bias, mult, shift], "avx2",
                           **depthwise_params(c, 3, 1, (1, 1, 1, 1), "int8"))
    assert info["rule"] == RULE and "epilogue" not in info, info   # x86_requant's (the info names only the narrow ones)


def test_narrow_consts_bounds():
    """The compile-time proof itself, at its edges: the reach ``(max|acc| + |bias'|) << t`` just
    under and at 2**31, a multiplier of 2**31, and ``t`` / ``s2`` from shifts around 33."""
    w = np.full((1, 9), 127, np.int64)                   # u8: max|acc| = 255 * 1143 = 291465
    ok = narrow_consts(w, np.array([2**31 - 1 - 291465]), np.array([2**30]), np.array([40]), "uint8", 0, 1)
    assert ok is not None and [int(v[0]) for v in ok[2:]] == [0, 2**7, 8]
    assert narrow_consts(w, np.array([2**31 - 291465]), np.array([2**30]), np.array([40]), "uint8", 0, 1) is None
    assert narrow_consts(w, np.array([0]), np.array([2**31]), np.array([40]), "uint8", 0, 1) is None
    low = narrow_consts(w, np.array([0]), np.array([2**10]), np.array([30]), "uint8", 0, 2)  # t = 3, s2 = 1
    assert [int(v[0]) for v in low[2:]] == [3, 1, 1] and all(len(v) == 2 for v in low)
    assert narrow_consts(w, np.array([0]), np.array([2**10]), np.array([20]), "uint8", 0, 1) is None  # 291465 << 13


ODD_CASES = [  # (c, h, w, k, padding (top, left, bottom, right))
    (3, 7, 7, 3, (1, 1, 1, 1)),        # 7 x 7 with 3 channels (no channel-lane block): 7 output rows
    (4, 10, 13, 5, (2, 2, 2, 2)),      # 5x5: 3 pair rows per output row (the odd rows' first weight 0)
    (3, 6, 40, 3, (0, 0, 0, 0)),       # no padding, 5 vectors a row
    (2, 5, 7, 3, (2, 0, 1, 2)),        # padding wider than the kernel reaches on one side
    (3, 1, 33, 3, (1, 1, 1, 1)),       # one input row: the pair rows are mostly padding
    (2, 13, 3, 3, (1, 2, 1, 0)),       # narrow and tall, asymmetric columns
    (4, 12, 12, 1, (0, 0, 0, 0)),      # 1x1: one pair row, its second element's weight 0
]


@pytest.mark.parametrize("xdt", ["uint8", "int8"])
def test_odd_planes_bit_exact(rng, xdt):
    """Each odd case in its own kernel of one module (independent graph inputs), full-range weights."""
    bb = relax.BlockBuilder()
    xs = [activations(rng, (2, c, h, w), xdt, "random") for c, h, w, *_ in ODD_CASES]
    xvs = [relax.Var(f"x{n}", relax.TensorType(x.shape, xdt)) for n, x in enumerate(xs)]
    cases = []
    with bb.function("main", xvs):
        with bb.dataflow():
            outs = []
            for xv, (c, _h, _w, k, pad) in zip(xvs, ODD_CASES):
                consts = [_full_range_weights(rng, c, k), *requant_consts(rng, c, 8 + 7 + (5 if k == 5 else 4))]
                params = depthwise_params(c, k, 1, pad, "int8")
                cases.append((consts, params))
                outs.append(emit(bb, "conv2d_requant", [xv, *[const(v) for v in consts]], **params))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    mod = bb.get()
    target = TARGETS["avx2"]
    infos = [packed_info(f) for f in pack_weights(mod, target).functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(infos) == len(ODD_CASES) and all(i["rule"] == RULE for i in infos), infos
    got = relax.VirtualMachine(build(mod, target)[0], tvm.cpu())["main"](*[tvm.runtime.tensor(x) for x in xs])
    for n, (x, (consts, params), case) in enumerate(zip(xs, cases, ODD_CASES)):
        assert_bit_exact(got[n].numpy(), OPS["conv2d_requant"].reference(x, *consts, **params), f"{case} {xdt}")


def test_rule_takes_avx2_stride_1_only(rng):
    """Packing only: stride 2 on AVX2 stays on the pixel-lane rule (its windows need no shuffle
    there); the VNNI and AVX-VNNI targets' 8-bit kernels keep their rules. The AVX2 stride-2 kernel
    also runs, bit-exact."""
    c = 4
    wt, consts = weights(rng, (c, 1, 3, 3)), requant_consts(rng, c, 19)
    x = activations(rng, (1, c, 12, 12), "uint8", "random")
    info, _ = check_kernel("conv2d_requant", x, [wt, *consts], "avx2", **depthwise_params(c, 3, 2, (1, 1, 1, 1)))
    assert info is not None and info["rule"] == "DepthwiseConv2DTensorized"
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = emit(bb, "conv2d_requant", [xv, const(wt), *[const(v) for v in consts]],
                     **depthwise_params(c, 3, 1, (1, 1, 1, 1)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    for target_name in ("vnni", "avxvnni"):
        infos = [packed_info(f) for f in pack_weights(bb.get(), TARGETS[target_name]).functions.values()
                 if isinstance(f, tvm.tirx.PrimFunc)]
        assert infos and all(i["rule"] != RULE for i in infos), (target_name, infos)
