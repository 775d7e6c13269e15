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
