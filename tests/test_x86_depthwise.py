"""Depthwise x86 kernels (schedules/x86_depthwise.py): bit-exact against the NumPy twin on
MobileNetV2's plane sizes and strides, on odd shapes (widths that are not whole vectors, 5x5,
stride 2 on odd sizes, asymmetric or no padding), for u8/s8/s16 activations at the dtype extremes,
on AVX-512 VNNI, on AVX2 (`znver3`) and on AVX-VNNI without AVX-512 (each built and inspected on
any machine, run where the CPU has the ISA: conftest.host_runs).

Every case goes through ``build.build`` (prepacking + schedule rules + tvm.compile) like a compile.
Several convs share one module (one build) where the shapes allow, to keep the file fast.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact, run_if_host_can
from test_x86_kernels import AVX2_TARGET, VNNI_TARGET, activations, asm_of, check_kernel, requant_consts, weights
from tvm import relax

from tvm_qplugin.build import build
from tvm_qplugin.ops import OPS, const, emit
from tvm_qplugin.schedules import pack_weights
from tvm_qplugin.schedules.packing import packed_info
from tvm_qplugin.tuning.apply import AppliedTuning

TARGETS = {"vnni": VNNI_TARGET, "avx2": AVX2_TARGET}   # test_x86_kernels' (no SSE4a)
# the window shuffle and the dot instruction of each target (AVX2: int16 pairs on vpmaddwd)
INSTRUCTIONS = {"vnni": ("vpermb", "vpdpbusd"), "avx2": ("vpmaddwd",)}
# MobileNetV2-224's depthwise 3x3 convs as (input plane, stride): 112 s1, 112 s2, ... 7 s1
MOBILENET_V2_PLANES = [(112, 1), (112, 2), (56, 1), (56, 2), (28, 1), (28, 2), (14, 1), (14, 2), (7, 1)]


def pixel_rule(target_name: str, stride: int) -> str:
    """The rule that takes a depthwise conv with pixel lanes: AVX2's stride 1 goes to the row-pair
    rule (schedules/x86_depthwise_pairs.py, tests/test_x86_depthwise_pairs.py), the rest to
    DepthwiseConv2DTensorized."""
    return "DepthwiseRowPairs" if target_name == "avx2" and stride == 1 else "DepthwiseConv2DTensorized"


@pytest.fixture
def pixel_lanes_only(monkeypatch):
    """The row-pair rule off (its strides emptied), for the tests of the pixel-lane rule's own
    tiles on AVX2; check_kernel's cached builds are dropped on both sides."""
    from test_x86_kernels import _BUILDS

    from tvm_qplugin.schedules import x86_depthwise_pairs

    _BUILDS.clear()
    monkeypatch.setattr(x86_depthwise_pairs, "STRIDES", ())
    yield
    _BUILDS.clear()


def depthwise_params(c: int, k: int, stride: int, pad, out_dtype="uint8") -> dict:
    qmin, qmax = (0, 255) if out_dtype == "uint8" else (-128, 127)
    return {"strides": [stride, stride], "padding": list(pad), "dilation": [1, 1], "groups": c, "qmin": qmin,
            "qmax": qmax, "out_dtype": out_dtype}


def chain(x: np.ndarray, layers: list[tuple[list, dict]], target_name: str):
    """A module applying the depthwise ``layers`` one after the other; built, run, and compared with
    the NumPy twins layer by layer (the first differing layer is named). Returns the packed
    kernels' descriptions and the assembly."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
    with bb.function("main", [xv]):
        with bb.dataflow():
            outs, cur = [], xv
            for consts, params in layers:
                cur = emit(bb, "conv2d_requant", [cur, *[const(c) for c in consts]], **params)
                outs.append(cur)
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    mod = bb.get()
    target = TARGETS[target_name]
    infos = [packed_info(f) for f in pack_weights(mod, target).functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    executable, _ = build(mod, target)
    got = run_if_host_can(executable, target, x)
    ref = x
    for n, (consts, params) in enumerate(layers):
        ref = OPS["conv2d_requant"].reference(ref, *consts, **params)
        if got is not None:
            assert_bit_exact(got[n], ref, f"layer {n} ({params['strides']}, {consts[0].shape}) on {target_name}")
    return infos, asm_of(executable)


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_mobilenet_v2_planes_bit_exact(rng, target_name):
    """MobileNetV2's depthwise plane sizes and strides (fewer channels), chained as in the model:
    u8 in, u8 out (the ReLU6 range), requantization spread so that both clamps are hit."""
    c = 6
    x = activations(rng, (1, c, 112, 112), "uint8", "random")
    layers = [([weights(rng, (c, 1, 3, 3)), *requant_consts(rng, c, 8 + 7 + 4)], depthwise_params(c, 3, stride, (1, 1, 1, 1)))
              for _plane, stride in MOBILENET_V2_PLANES]
    infos, asm = chain(x, layers, target_name)
    assert infos and all(i is not None for i in infos)
    assert sorted(i["rule"] for i in infos) == sorted(pixel_rule(target_name, s) for _plane, s in MOBILENET_V2_PLANES)
    assert all(instr in asm for instr in INSTRUCTIONS[target_name])


ODD_CASES = [  # (c, h, w, k, stride, padding (top, left, bottom, right))
    (5, 9, 11, 3, 1, (1, 1, 1, 1)),      # 11 wide: a partial vector of lanes
    (3, 13, 37, 3, 2, (1, 1, 1, 1)),     # stride 2 on odd sizes, 3 vectors' worth of columns
    (4, 10, 13, 5, 1, (2, 2, 2, 2)),     # 5x5: two 4-deep tap windows per kernel row (pad taps 0)
    (4, 11, 17, 5, 2, (2, 1, 2, 2)),     # 5x5 stride 2, asymmetric padding
    (3, 8, 8, 3, 2, (0, 0, 1, 1)),       # TF-style "same" stride 2: padding only bottom / right
    (3, 6, 40, 3, 1, (0, 0, 0, 0)),      # no padding
    (2, 5, 7, 3, 1, (2, 0, 1, 2)),       # padding wider than the kernel reaches on one side
]


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_odd_shapes_bit_exact(rng, target_name):
    """Each odd case in its own kernel of one module (the inputs are independent graph inputs)."""
    bb = relax.BlockBuilder()
    xs = [activations(rng, (1, c, h, w), "int8", "random") for c, h, w, *_ in ODD_CASES]
    xvs = [relax.Var(f"x{n}", relax.TensorType(x.shape, "int8")) for n, x in enumerate(xs)]
    cases = []
    with bb.function("main", xvs):
        with bb.dataflow():
            outs = []
            for xv, (c, _h, _w, k, stride, pad) in zip(xvs, ODD_CASES):
                consts = [weights(rng, (c, 1, k, k)), *requant_consts(rng, c, 8 + 7 + (5 if k == 5 else 4))]
                params = depthwise_params(c, k, stride, pad, "int8")
                cases.append((consts, params))
                outs.append(emit(bb, "conv2d_requant", [xv, *[const(v) for v in consts]], **params))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    mod = bb.get()
    target = TARGETS[target_name]
    infos = [packed_info(f) for f in pack_weights(mod, target).functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert sorted(i["rule"] for i in infos) == sorted(pixel_rule(target_name, case[4]) for case in ODD_CASES)
    got = run_if_host_can(build(mod, target)[0], target, *xs)
    for n, (x, (consts, params), case) in enumerate(zip(xs if got is not None else [], cases, ODD_CASES)):
        assert_bit_exact(got[n], OPS["conv2d_requant"].reference(x, *consts, **params), f"{case} on {target_name}")


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
def test_dtype_extremes_bit_exact(rng, target_name, xdt):
    """All-min, all-max, random and alternating min/max activations (one batch item each) against
    full-range weights with both extremes: the largest sums the offset / int16 routes can see."""
    c, h, w = 7, 9, 19
    x = np.concatenate([activations(rng, (1, c, h, w), xdt, p) for p in ("min", "max", "random", "alternating")])
    wt = weights(rng, (c, 1, 3, 3))
    wt[1] = 127
    wt[2] = -127
    params = depthwise_params(c, 3, 1, (1, 1, 1, 1), "int8")
    info, _ = check_kernel("conv2d_requant", x, [wt, *requant_consts(rng, c, 8 + (8 if xdt == "int16" else 0) + 4)],
                             target_name, **params)
    assert info is not None and info["rule"] == pixel_rule(target_name, 1)
    assert info["isa"] == {"vnni": "vnni16" if xdt == "int16" else "vnni", "avx2": "avx2"}[target_name]


@pytest.mark.parametrize("xdt, k, stride", [("int8", 3, 1), ("uint8", 3, 2), ("int16", 5, 1), ("int8", 5, 2)])
def test_avx_vnni_target_bit_exact(rng, xdt, k, stride):
    """AVX-VNNI without AVX-512 (``alderlake``): 8 lanes of 256-bit ``vpdpbusd`` (int16 on
    ``vpmaddwd``), the byte shuffle without ``vpermb``; batch 2; no zmm register anywhere."""
    c = 4
    x = activations(rng, (2, c, 9, 19), xdt, "random")
    params = depthwise_params(c, k, stride, (k // 2,) * 4, "int8")
    info, asm = check_kernel("conv2d_requant", x, [weights(rng, (c, 1, k, k)), *requant_consts(rng, c, 19)], "avxvnni",
                             **params)
    assert info is not None and info["rule"] == ("DepthwiseRowPairs" if xdt == "int16" and stride == 1 else
                                                 "DepthwiseConv2DTensorized")
    assert info["isa"] == ("avx2" if xdt == "int16" else "avxvnni") and "zmm" not in asm


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_one_row_planes_read_only_inside_the_padded_plane(rng, target_name):
    """A 1x2 plane, 1x1 kernel, int16 output (a random graph of tests/test_graphs.py): the padded
    plane is a few bytes on the stack, and a whole-register window load past its end was
    undefined behaviour that LLVM turned into garbage for every lane (the row pitch now leaves
    room for it)."""
    for c, w in ((2, 2), (3, 3), (4, 2)):
        x = activations(rng, (1, c, 1, w), "uint8", "random")
        bias, mult, shift = requant_consts(rng, c, 8 + 7 + 4)
        params = {**depthwise_params(c, 1, 1, (0, 0, 0, 0)), "qmin": -32768, "qmax": 32767, "out_dtype": "int16"}
        info, _ = check_kernel("conv2d_requant", x, [weights(rng, (c, 1, 1, 1)), bias, mult, shift - 8], target_name,
                               **params)
        assert info is not None and info["rule"] == pixel_rule(target_name, 1)


def test_kernels_the_rule_cannot_take_stay_exact_on_the_plain_rules(rng):
    """A multiplier beyond int32 (the packed epilogue's int32 x int32 product), a depth multiplier
    of 2 (O = 2C) and a dilated kernel keep the plain kernel -- and stay exact."""
    x = activations(rng, (1, 4, 8, 8), "uint8", "random")
    bias, mult, shift = requant_consts(rng, 4, 19)
    mult[1] = 2**31 + 5
    info, _ = check_kernel("conv2d_requant", x, [weights(rng, (4, 1, 3, 3)), bias, mult, shift], "vnni",
                           **depthwise_params(4, 3, 1, (1, 1, 1, 1)))
    assert info is None
    info, _ = check_kernel("conv2d_requant", x, [weights(rng, (8, 1, 3, 3)), *requant_consts(rng, 8, 19)], "vnni",
                           **depthwise_params(4, 3, 1, (1, 1, 1, 1)))
    assert info is None
    dilated = {**depthwise_params(4, 3, 1, (2, 2, 2, 2)), "dilation": [2, 2]}
    info, _ = check_kernel("conv2d_requant", x, [weights(rng, (4, 1, 3, 3)), *requant_consts(rng, 4, 19)], "vnni",
                           **dilated)
    assert info is None


def test_report_names_the_depthwise_rule():
    """layers[].kernel.why names the rule that tensorized the kernel and its file."""
    applied = AppliedTuning(db=None, tensorized={"k": {"rule": "DepthwiseConv2DTensorized", "isa": "vnni"}})
    why = applied._kernel_source("k")["why"]
    assert "DepthwiseConv2DTensorized" in why and "schedules/x86_depthwise.py" in why and "vpdpbusd" in why


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
def test_row_tiles_bit_exact_at_extremes(rng, target_name, xdt, pixel_lanes_only):
    """Several output rows per tile (``_row_tile``: each input row's window feeds every output row
    it lies under) at the dtype extremes, with full-range weights: a 16-row plane takes 8 rows per
    tile on AVX-512 (2 vectors a row) and 2 on AVX2 (3 vectors a row: 6 accumulators of 8)."""
    c, h, w = 5, 16, 21
    x = np.concatenate([activations(rng, (1, c, h, w), xdt, p) for p in ("min", "max", "random", "alternating")])
    wt = weights(rng, (c, 1, 3, 3))
    wt[1], wt[2] = 127, -127
    params = depthwise_params(c, 3, 1, (1, 1, 1, 1), "int8")
    info, _ = check_kernel("conv2d_requant", x, [wt, *requant_consts(rng, c, 8 + (8 if xdt == "int16" else 0) + 4)],
                           target_name, **params)
    assert info is not None and info["rule"] == "DepthwiseConv2DTensorized"
    assert info["rows"] == {"vnni": 8, "avx2": 2}[target_name]


ROW_TILE_CASES = [  # (target, c, h, w, k, stride, padding, rows per tile expected)
    ("vnni", 3, 32, 30, 3, 2, (1, 1, 1, 1), 8),      # stride 2: 5 + 2 * 7 input rows for 8 output rows
    ("vnni", 4, 12, 13, 5, 1, (2, 2, 2, 2), 4),      # 5x5: two tap windows per kernel row
    ("avx2", 4, 12, 13, 5, 1, (2, 2, 2, 2), 1),      # 5x5 on AVX2: its 15 weight registers leave none
    ("avx2", 4, 12, 13, 3, 1, (1, 1, 1, 1), 4),      # 3x3, 2 vectors a row: 4 rows fill AVX2's 8
    ("avx2", 3, 32, 30, 3, 2, (1, 1, 1, 1), 1),      # stride 2 on AVX2 keeps one row per tile
    ("avxvnni", 3, 14, 9, 3, 1, (1, 1, 1, 1), 2),    # 256-bit vpdpbusd: 7 rows x 2 vectors are over its budget
    ("vnni", 6, 7, 7, 3, 1, (1, 1, 1, 1), 1),        # 7 x 7: a tile of the whole plane was slower
]


@pytest.mark.parametrize("case", ROW_TILE_CASES, ids=lambda c: f"{c[0]}-{c[4]}x{c[4]}s{c[5]}-h{c[2]}")
def test_row_tiles_strides_and_kernels_bit_exact(rng, case, pixel_lanes_only):
    """Row tiles with stride 2 (the tile's input rows overlap by one), 5x5 kernels (ten windows
    per kernel row pair), the 256-bit targets' smaller register budget and the planes that keep
    one row per tile."""
    target_name, c, h, w, k, stride, pad, rows = case
    x = activations(rng, (2, c, h, w), "uint8", "random")
    params = depthwise_params(c, k, stride, pad)
    info, _ = check_kernel("conv2d_requant", x, [weights(rng, (c, 1, k, k)), *requant_consts(rng, c, 8 + 7 + 5)],
                           target_name, **params)
    assert info is not None and info["rule"] == "DepthwiseConv2DTensorized" and info["rows"] == rows


def _narrow_case(rng, xdt: str, kind: str):
    """Activations at the extremes and constants for each epilogue of the pixel-lane rule: ``narrow``
    (full-range weights, shifts >= 33), ``narrow_shift`` (small weights and multipliers, shifts
    below 33: the accumulator shifted left first) and ``exact`` (a bias near the int32 limit: the
    narrow epilogue cannot be proven, x86_requant's is kept)."""
    c, h, w = 5, 10, 19
    x = np.concatenate([activations(rng, (1, c, h, w), xdt, p) for p in ("min", "max", "random", "alternating")])
    if kind == "narrow_shift":
        wt = rng.integers(-20, 21, (c, 1, 3, 3)).astype(np.int8)
        bias = rng.integers(-(2**12), 2**12, c).astype(np.int32)
        mult = rng.integers(2**9, 2**11, c).astype(np.int64)
        shift = np.array([24, 32, 20, 24, 28], np.int64) + (4 if xdt == "int16" else 0)
        return x, [wt, bias, mult, shift]
    wt = weights(rng, (c, 1, 3, 3))
    wt[0], wt[-1] = 127, -127
    if kind == "narrow":
        return x, [wt, *requant_consts(rng, c, 8 + (8 if xdt == "int16" else 0) + 4)]
    bias = np.array([2**31 - 2**10, -(2**31) + 2**10, 5, -7, 9], np.int32)
    return x, [wt, bias, rng.integers(2**28, 2**29, c).astype(np.int64), np.full(c, 56, np.int64)]


@pytest.mark.parametrize("target_name", ["vnni", "avxvnni"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("kind", ["narrow", "narrow_shift", "exact"])
def test_narrow_epilogue_on_vnni_bit_exact(rng, target_name, xdt, kind):
    """The pixel-lane rule on the VNNI ISAs (512-bit and AVX-VNNI; stride 2, which AVX-VNNI's
    int16 stride 1 leaves to it) takes x86_requant_narrow's epilogue where the call's constants
    prove it (``NARROW_WIDE``): the accumulator starts at the offset-corrected bias, and the
    s8 + 128 offset of vpdpbusd is in that bias. Each epilogue at the dtype extremes, bit-exact."""
    x, consts = _narrow_case(rng, xdt, kind)
    params = depthwise_params(5, 3, 2, (1, 1, 1, 1), "int8")
    info, _ = check_kernel("conv2d_requant", x, consts, target_name, **params)
    assert info is not None and info["rule"] == "DepthwiseConv2DTensorized", info
    assert info.get("epilogue", "exact") == kind, info
