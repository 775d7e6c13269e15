"""Tensorized x86 kernels (schedules/x86_int8.py): bit-exact against the ops' NumPy twins at the
dtype extremes, chosen per target features, the instruction present in the generated assembly.

Every case goes through ``build.build`` (prepacking + schedule rules + tvm.compile) on a one-op
integer module, exactly the route of a compile. Every ISA level is built and its assembly checked on
any machine; a level's code is run and compared only where the CPU has it (conftest.host_runs:
the AVX2 code runs everywhere, the AVX-512 VNNI / AVX-VNNI code on the machines that have them).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact, host_runs, run_if_host_can
from tvm import relax

from tvm_qplugin.build import build
from tvm_qplugin.ops import OPS, const, emit
from tvm_qplugin.schedules import apply_default_schedules, pack_weights
from tvm_qplugin.schedules.intrin_x86 import select_isa
from tvm_qplugin.schedules.packing import packed_info
from tvm_qplugin.schedules.x86_conv_gather import _border_parts
from tvm_qplugin.schedules.x86_conv_tiles import (
    LONG_K_STEPS,
    STACK_BYTES,
    _conv_tile,
    _conv_tile_rows,
)

# the Zen targets without SSE4a (AMD-only: LLVM emits its insertq in some shuffles, SIGILL on an
# Intel host), so that their code also runs on the Intel machines that have the ISA (conftest.host_runs)
VNNI_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "mattr": ["-sse4a"]})        # AVX-512 VNNI
AVX2_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "znver3", "mattr": ["-sse4a"]})        # AVX2, no VNNI
AVXVNNI_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "alderlake"})      # AVX-VNNI 256, no AVX-512
TARGETS = {"vnni": VNNI_TARGET, "avx2": AVX2_TARGET, "avxvnni": AVXVNNI_TARGET}
INSTRUCTION = {"vnni": {"uint8": "vpdpbusd", "int8": "vpdpbusd", "int16": "vpdpwssd"},
               "avxvnni": {"uint8": "vpdpbusd", "int8": "vpdpbusd", "int16": "vpmaddwd"},
               "avx2": {"uint8": "vpmaddwd", "int8": "vpmaddwd", "int16": "vpmaddwd"}}
PATTERNS = ("min", "max", "random", "alternating")
POINTWISE = {"strides": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1, "qmin": -128, "qmax": 127,
             "out_dtype": "int8"}


def activations(rng, shape, dtype, pattern):
    """All-qmin, all-qmax, random or alternating min/max activations of ``dtype``."""
    info = np.iinfo(dtype)
    if pattern == "min":
        return np.full(shape, info.min, dtype)
    if pattern == "max":
        return np.full(shape, info.max, dtype)
    if pattern == "alternating":
        return np.where(np.arange(int(np.prod(shape))).reshape(shape) % 2, info.max, info.min).astype(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def weights(rng, shape):
    """Full-range int8 weights ([-127, 127], what the quantizer emits) with both extremes planted."""
    w = rng.integers(-127, 128, shape).astype(np.int8)
    flat = w.reshape(-1)
    flat[:2] = [-127, 127]
    return w


def requant_consts(rng, o, acc_scale_bits):
    """bias, multiplier, shift that spread the accumulator over the output range (clamps hit)."""
    bias = rng.integers(-(2**16), 2**16, o).astype(np.int32)
    mult = rng.integers(2**30, 2**31 - 1, o).astype(np.int64)
    shift = np.full(o, 31 + acc_scale_bits - 7, np.int64)
    return bias, mult, shift


def fused_int16(target_name, xdt) -> set[str]:
    """AVX-VNNI has a 256-bit vpdpwssd too: LLVM may fuse the int16 route's vpmaddwd + vpaddd into it."""
    return {"vpdpwssd"} if (target_name, xdt) == ("avxvnni", "int16") else set()


def one_op_module(op, x, consts, **params):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit(bb, op, [xv, *[const(c) for c in consts]], **params))
        bb.emit_func_output(out)
    return bb.get()


def asm_of(executable) -> str:
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports if m.kind == "llvm")


#: the latest builds of check_kernel, by everything a build depends on (op, parameters, input shape
#: and dtype, constants' bytes, target): tests that feed several inputs to one kernel (the patterns,
#: the row-gather cases' two inputs) run the kernel built once. Every input is still run and compared.
#: The last :data:`_KEPT_BUILDS` only (the tests sharing a build are collected close together).
_BUILDS: OrderedDict[tuple, tuple] = OrderedDict()
_KEPT_BUILDS = 64


def _build_key(op, x, consts, target_name, params) -> tuple:
    return (op, target_name, repr(sorted(params.items())), x.shape, x.dtype.str,
            tuple((c.dtype.str, c.shape, c.tobytes()) for c in map(np.asarray, consts)))


def check_kernel(op, x, consts, target_name, **params):
    """Build through build.build for ``target_name``; run; compare with the NumPy twin; return the
    packed kernel's description and the assembly."""
    target = TARGETS[target_name]
    key = _build_key(op, x, consts, target_name, params)
    if key not in _BUILDS:
        mod = one_op_module(op, x, consts, **params)
        before = mod.script()
        packed = pack_weights(mod, target)
        assert mod.script() == before, "pack_weights mutated the integer module"
        infos = [packed_info(f) for f in packed.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        executable, _n_scheduled = build(mod, target)
        _BUILDS[key] = infos, executable
        if len(_BUILDS) > _KEPT_BUILDS:
            _BUILDS.popitem(last=False)
    infos, executable = _BUILDS[key]
    got = run_if_host_can(executable, target, x)
    if got is not None:   # None: this CPU lacks the target's ISA (conftest.host_runs); built and inspected only
        assert_bit_exact(got, OPS[op].reference(x, *consts, **params), f"{op} {x.dtype} on {target_name}")
    return next((i for i in infos if i), None), asm_of(executable)


@pytest.mark.parametrize("target_name", ["vnni", "avx2", "avxvnni"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_pointwise_conv_bit_exact_at_extremes(rng, target_name, xdt, pattern):
    """1x1 stride 1 unpadded: the flat gather (one interleaving pass over the pixels)."""
    c, o, h, w = (40, 24, 5, 7) if xdt == "int16" else (64, 24, 5, 7)  # P = 35: padded pixel vectors
    x = activations(rng, (1, c, h, w), xdt, pattern)
    wt = weights(rng, (o, c, 1, 1))
    bias, mult, shift = requant_consts(rng, o, 8 + (8 if xdt == "int16" else 0) + 6)
    info, asm = check_kernel("conv2d_requant", x, [wt, bias, mult, shift], target_name, strides=[1, 1],
                             padding=[0, 0, 0, 0], dilation=[1, 1], groups=1, qmin=-128, qmax=127, out_dtype="int8")
    assert info is not None and info["rule"] == "Conv2DTensorized" and info["gather"] == "flat"
    assert any(i in asm for i in {INSTRUCTION[target_name][xdt], *fused_int16(target_name, xdt)})


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_dense_bit_exact_at_extremes(rng, target_name, xdt, pattern):
    rows, k, n = 6, (256 if xdt == "int16" else 96), 40   # N = 40: a padded channel vector
    x = activations(rng, (2, rows // 2, k), xdt, pattern)
    wt = weights(rng, (n, k))
    bias, mult, shift = requant_consts(rng, n, 8 + (8 if xdt == "int16" else 0) + 6)
    info, asm = check_kernel("dense_requant", x, [wt, bias, mult, shift], target_name, qmin=-128, qmax=127,
                             out_dtype="int8")
    assert info is not None and info["rule"] == "DenseTensorized"
    assert INSTRUCTION[target_name][xdt] in asm


def test_avx_vnni_target_gets_256_bit_vpdpbusd(rng):
    """AVX-512 off but AVX-VNNI on (mattr): the 256-bit VEX vpdpbusd on ymm registers."""
    x = activations(rng, (1, 32, 4, 8), "int8", "random")
    wt = weights(rng, (16, 32, 1, 1))
    info, asm = check_kernel("conv2d_requant", x, [wt, *requant_consts(rng, 16, 18)], "avxvnni", strides=[1, 1],
                             padding=[0, 0, 0, 0], dilation=[1, 1], groups=1, qmin=-128, qmax=127, out_dtype="int8")
    assert info["isa"] == "avxvnni"
    assert "vpdpbusd" in asm and "zmm" not in asm.split("vpdpbusd", 1)[1].split("\n", 1)[0]


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_shapes_that_do_not_tile(rng, target_name):
    """Channels not a multiple of the dot depth (padded with zero weights), 7x7 pixels (49: pad
    lanes), odd row counts; K % 4 != 0 dense is left to the plain rule -- never wrong."""
    conv = POINTWISE
    x = activations(rng, (1, 30, 7, 7), "int8", "random")
    info, _ = check_kernel("conv2d_requant", x, [weights(rng, (18, 30, 1, 1)), *requant_consts(rng, 18, 18)],
                           target_name, **conv)
    assert info is not None  # C = 30 -> 32, zero-padded
    dense = {"qmin": -128, "qmax": 127, "out_dtype": "int8"}
    info, _ = check_kernel("dense_requant", activations(rng, (5, 36), "uint8", "random"),
                           [weights(rng, (7, 36)), *requant_consts(rng, 7, 18)], target_name, **dense)
    assert info is not None
    info, _ = check_kernel("dense_requant", activations(rng, (3, 30), "uint8", "random"),
                           [weights(rng, (16, 30)), *requant_consts(rng, 16, 18)], target_name, **dense)
    assert info is None or target_name == "avx2"  # K = 30: no whole 4-deep VNNI steps (AVX2 pairs: 15)


def test_kernel_whose_multiplier_exceeds_int32_is_not_packed(rng):
    """The packed epilogue multiplies int32 x int32 (``vpmuldq``): a call whose multiplier does not
    fit int32 keeps the plain kernel (int64 multiply) -- and stays exact; the same call with an
    int32 multiplier is packed."""
    x = activations(rng, (1, 64, 4, 4), "uint8", "random")
    wt = weights(rng, (16, 64, 1, 1))
    bias, mult, shift = requant_consts(rng, 16, 22)
    conv = POINTWISE
    mult[3] = 2**31 + 12345
    info, _ = check_kernel("conv2d_requant", x, [wt, bias, mult, shift], "vnni", **conv)
    assert info is None
    mult[3] = 2**31 - 12345
    info, _ = check_kernel("conv2d_requant", x, [wt, bias, mult, shift], "vnni", **conv)
    assert info is not None


@pytest.mark.parametrize("target, xdt, isa", [
    (VNNI_TARGET, "int8", "vnni"), (VNNI_TARGET, "int16", "vnni16"), (AVXVNNI_TARGET, "uint8", "avxvnni"),
    (AVXVNNI_TARGET, "int16", "avx2"), (AVX2_TARGET, "int8", "avx2"),
    (tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"}), "int8", None),            # SSE2 only: plain rules
    (tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}), "int8", None),
])
def test_isa_follows_target_features(target, xdt, isa):
    chosen = select_isa(target, xdt)
    assert (chosen.name if chosen else None) == isa


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("case", [
    {"c": 3, "o": 16, "hw": (11, 9), "k": 3, "stride": 2, "pad": (1, 1, 1, 1), "dil": 1},   # the stem conv: K = 27
    {"c": 8, "o": 12, "hw": (6, 7), "k": 3, "stride": 1, "pad": (0, 1, 2, 1), "dil": 2},    # asymmetric padding, dilated
])
def test_kxk_conv_bit_exact_at_extremes(rng, target_name, xdt, pattern, case):
    """KxK convs gather an im2col inside the kernel; zero padding must stay the value 0 (u8 128
    under the signed offset, which the weight-sum correction counts for every tap)."""
    x = activations(rng, (1, case["c"], *case["hw"]), xdt, pattern)
    wt = weights(rng, (case["o"], case["c"], case["k"], case["k"]))
    params = {"strides": [case["stride"]] * 2, "padding": list(case["pad"]), "dilation": [case["dil"]] * 2, "groups": 1,
                  "qmin": -128, "qmax": 127, "out_dtype": "int8"}
    info, asm = check_kernel("conv2d_requant", x, [wt, *requant_consts(rng, case["o"], 20)], target_name, **params)
    assert info is not None and info["rule"] == "Conv2DTensorized"
    assert INSTRUCTION[target_name][xdt] in asm


def test_depthwise_conv_is_left_to_the_depthwise_rule(rng):
    """Conv2DTensorized takes groups 1 only; depthwise goes to schedules/x86_depthwise.py
    (tests/test_x86_depthwise.py)."""
    x = activations(rng, (1, 8, 6, 6), "uint8", "random")
    info, _ = check_kernel("conv2d_requant", x, [weights(rng, (8, 1, 3, 3)), *requant_consts(rng, 8, 14)], "vnni",
                           strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=8, qmin=-128, qmax=127,
                           out_dtype="int8")
    assert info is not None and info["rule"] == "DepthwiseConv2DTensorized"


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
def test_requantization_over_the_whole_shift_range(rng, target_name, xdt):
    """The packed epilogue splits the shift around the product's high word (accumulator
    pre-shift below 32, int32 post-shift clamped at 31 above 63): shifts 28..62 per channel,
    multipliers scaled so that the outputs are not all saturated, against the NumPy twin. A
    shift so small that the pre-shifted accumulator could leave int32 keeps the plain kernel."""
    o, c = 35, 48
    x = activations(rng, (1, c, 4, 4), xdt, "random")
    wt = weights(rng, (o, c, 1, 1))
    bias = rng.integers(-(2**12), 2**12, o).astype(np.int32)
    shift = np.arange(28, 63, dtype=np.int64)
    acc_bits = 8 + (8 if xdt == "int16" else 0) + 6
    mult = np.clip(np.exp2(shift + 7.0 - acc_bits) * rng.uniform(1, 2, o), 1, 2**31 - 1).astype(np.int64)
    info, _ = check_kernel("conv2d_requant", x, [wt, bias, mult, shift], target_name, strides=[1, 1],
                           padding=[0, 0, 0, 0], dilation=[1, 1], groups=1, qmin=-128, qmax=127, out_dtype="int8")
    assert info is not None
    ref = OPS["conv2d_requant"].reference(x, wt, bias, mult, shift, strides=[1, 1], padding=[0, 0, 0, 0],
                                          dilation=[1, 1], groups=1, qmin=-128, qmax=127, out_dtype="int8")
    assert ((ref > -128) & (ref < 127)).mean() > 0.3  # most channels land inside the range
    shift[0], mult[0] = 3, 1
    info, _ = check_kernel("conv2d_requant", x, [wt, bias, mult, shift], target_name, strides=[1, 1],
                           padding=[0, 0, 0, 0], dilation=[1, 1], groups=1, qmin=-128, qmax=127, out_dtype="int8")
    assert info is None


def test_one_kernel_two_calls_each_get_their_own_packed_weights(rng):
    """Convs of one shape share one PrimFunc; each call's constants are packed on their own."""
    x = activations(rng, (1, 32, 4, 4), "uint8", "random")
    w1, w2 = weights(rng, (32, 32, 1, 1)), weights(rng, (32, 32, 1, 1))
    c1, c2 = requant_consts(rng, 32, 18), requant_consts(rng, 32, 18)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    params = {**POINTWISE, "qmin": 0, "qmax": 255, "out_dtype": "uint8"}
    with bb.function("main", [xv]):
        with bb.dataflow():
            y1 = emit(bb, "conv2d_requant", [xv, const(w1), *[const(c) for c in c1]], **params)
            y2 = emit(bb, "conv2d_requant", [y1, const(w2), *[const(c) for c in c2]], **params)
            out = bb.emit_output(y2)
        bb.emit_func_output(out)
    mod = bb.get()
    assert sum(isinstance(f, tvm.tirx.PrimFunc) for f in mod.functions.values()) == 1
    packed = pack_weights(mod, VNNI_TARGET)
    assert [packed_info(f)["rule"] for f in packed.functions.values() if isinstance(f, tvm.tirx.PrimFunc)] == \
        ["Conv2DTensorized"]
    target = VNNI_TARGET if host_runs(VNNI_TARGET) else AVX2_TARGET
    got = run_if_host_can(build(mod, target)[0], target, x)
    ref = OPS["conv2d_requant"].reference(OPS["conv2d_requant"].reference(x, w1, *c1, **params), w2, *c2, **params)
    assert_bit_exact(got, ref, "two calls of one packed kernel")


def tile_loop_kind(mod, target) -> tvm.tirx.ForKind:
    """The kind of the outermost loop over the accumulator of ``mod``'s one packed conv kernel."""
    scheduled, _ = apply_default_schedules(pack_weights(mod, target), target)
    func = next(f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and packed_info(f))
    sch = tvm.s_tir.schedule.Schedule(func)
    return sch.get(sch.get_loops(sch.get_sblock("acc_init"))[0]).kind


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_single_output_channel_conv_keeps_its_tile_loop_parallel(rng, target_name):
    """One output channel (mr = 1: PP-OCRv5 det's last conv, a 2x2 ConvTranspose as a conv over
    128x256 pixels). The epilogue used to unroll the loop above its pixel loop -- with one row
    per tile that is the parallel tile loop itself: 1024 tiles unrolled, the kernel serial and
    LLVM busy for many minutes (PP-OCRv5 det: over 15). Builds in seconds now, bit-exact."""
    x = activations(rng, (1, 8, 127, 255), "uint8", "random")
    consts = [weights(rng, (1, 8, 2, 2)), *requant_consts(rng, 1, 16)]
    params = {**POINTWISE, "padding": [1, 1, 1, 1], "qmin": -32767, "qmax": 32767, "out_dtype": "int16"}
    kind = tile_loop_kind(one_op_module("conv2d_requant", x, consts, **params), TARGETS[target_name])
    assert kind == tvm.tirx.ForKind.PARALLEL, kind
    info, _ = check_kernel("conv2d_requant", x, consts, target_name, **params)
    assert info["mr"] == 1


@pytest.mark.parametrize("target_name", ["vnni", "avx2", "avxvnni"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("case", [
    {"c": 5, "o": 20, "hw": (6, 20), "k": 5, "stride": 1, "pad": (2, 2, 2, 2)},     # both borders, narrow interior
    {"c": 4, "o": 8, "hw": (9, 13), "k": 3, "stride": 2, "pad": (0, 0, 1, 1)},      # "same" padding at the end only
    {"c": 6, "o": 16, "hw": (4, 4), "k": 7, "stride": 1, "pad": (3, 3, 3, 3)},      # window wider than the image
    {"c": 12, "o": 8, "hw": (7, 9), "k": 1, "stride": 2, "pad": (0, 0, 0, 0)},      # strided 1x1: the row gather
    {"c": 8, "o": 24, "hw": (5, 6), "k": 1, "stride": 1, "pad": (1, 0, 0, 1)},      # padded 1x1: the row gather
])
def test_row_gather_borders_bit_exact(rng, target_name, xdt, case):
    """The row-wise gather (every conv but the plain 1x1) splits output rows and columns at the
    borders and clamps the pad rows of its last pixel vector; windows that cross one border, both,
    or no interior at all, against the NumPy twin at the dtype extremes and on random data."""
    params = {"strides": [case["stride"]] * 2, "padding": list(case["pad"]), "dilation": [1, 1], "groups": 1,
              "qmin": -128, "qmax": 127, "out_dtype": "int8"}
    wt = weights(rng, (case["o"], case["c"], case["k"], case["k"]))
    consts = [wt, *requant_consts(rng, case["o"], 20)]
    for pattern in ("alternating", "random"):
        x = activations(rng, (1, case["c"], *case["hw"]), xdt, pattern)
        info, asm = check_kernel("conv2d_requant", x, consts, target_name, **params)
        assert info is not None and info["gather"] == "rows", info
    assert any(i in asm for i in {INSTRUCTION[target_name][xdt], *fused_int16(target_name, xdt)})


def test_border_parts_split_where_the_window_leaves_the_image():
    """Output positions by whether their input window may cross the low border, stays inside,
    may cross the high border, or is a clamped pad position (stem: 224 wide, 3 taps, stride 2,
    pad 1 -> 112 outputs; a 7-tap window on 4 pixels has no interior at all)."""
    assert _border_parts(112, 112, 224, 3, 2, 1, 1) == [1, 111, 0, 0]
    assert _border_parts(6, 7, 11, 3, 2, 1, 1) == [1, 4, 1, 1]
    assert _border_parts(4, 4, 4, 7, 1, 1, 3) == [3, 0, 1, 0]
    assert _border_parts(5, 5, 9, 3, 2, 1, 0) == [0, 4, 1, 0]


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("case", [
    {"c": 3, "o": 16, "hw": (10, 12), "k": 3, "pad": (1, 1, 1, 1), "dil": 1},   # the stem conv's form: K = 27
    {"c": 4, "o": 8, "hw": (9, 14), "k": 3, "pad": (0, 0, 1, 1), "dil": 1},     # "same" padding at the end only
    {"c": 5, "o": 12, "hw": (8, 10), "k": 3, "pad": (2, 2, 2, 2), "dil": 2},    # dilated: every tap one parity
    {"c": 12, "o": 8, "hw": (7, 8), "k": 1, "pad": (0, 0, 0, 0), "dil": 1},     # strided 1x1
])
def test_stride_two_convs_read_deinterleaved_columns_bit_exact(rng, target_name, xdt, case):
    """Stride-2 convs on even-width inputs gather from the input with its columns deinterleaved
    (``x_cols``: even columns, then odd), so each tap's parity and offset are read with unit
    stride: the index arithmetic of that split, against the NumPy twin with one image per input
    pattern (all-min, all-max, alternating, random) in one batch."""
    x = np.concatenate([activations(rng, (1, case["c"], *case["hw"]), xdt, p) for p in PATTERNS])
    params = {"strides": [2, 2], "padding": list(case["pad"]), "dilation": [case["dil"]] * 2, "groups": 1,
              "qmin": -128, "qmax": 127, "out_dtype": "int8"}
    wt = weights(rng, (case["o"], case["c"], case["k"], case["k"]))
    info, asm = check_kernel("conv2d_requant", x, [wt, *requant_consts(rng, case["o"], 20)], target_name, **params)
    assert info is not None and info["rule"] == "Conv2DTensorized" and info.get("split_cols"), info
    assert INSTRUCTION[target_name][xdt] in asm


@pytest.mark.parametrize("target_name", ["vnni", "avx2", "avxvnni"])
def test_conv_accumulator_tile_on_the_stack_unless_long(target_name):
    """A "global" accumulator tile must stay under TVM's stack bound: past it (or in any other
    scope) TVM allocates it with a workspace call per tile -- silently, and 1.05-1.27x slower on
    MobileNetV2's thin convs. Only the long reductions on 512-bit vectors keep the bigger
    "local" tile (24 accumulators)."""
    isa = select_isa(TARGETS[target_name], "uint8")
    for o in (1, 7, 16, 24, 32, 64, 96, 144, 160, 320, 576, 960, 1000, 1280):
        for nr in (1, 2):
            for k_steps in (4, 48, LONG_K_STEPS - 1, LONG_K_STEPS, 480):
                mr, scope = _conv_tile_rows(o, nr, isa, k_steps)
                assert o % mr == 0
                tile_bytes = mr * nr * isa.vector_bits // 8
                long_tile = isa.vector_bits == 512 and k_steps >= LONG_K_STEPS
                assert scope == ("local" if long_tile else "global"), (o, nr, k_steps)
                assert long_tile or tile_bytes < STACK_BYTES, (o, nr, mr)


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_dense_accumulator_tile_on_the_stack(rng, target_name):
    """DenseTensorized's register tile fits TVM's stack bound (else a workspace call per tile)."""
    x = activations(rng, (64, 96), "uint8", "random")
    info, _ = check_kernel("dense_requant", x, [weights(rng, (192, 96)), *requant_consts(rng, 192, 20)], target_name,
                           qmin=-128, qmax=127, out_dtype="int8")
    isa = select_isa(TARGETS[target_name], "uint8")
    assert info["mr"] * info["nr"] * isa.vector_bits // 8 < STACK_BYTES


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
def test_one_channel_one_pixel_conv_builds_bit_exact(rng, target_name, xdt):
    """A tile of one output channel and one pixel (Silero VAD's last conv: 128 -> 1 on a 1x1
    plane) has no copy loop of its own under the parallel tile loop: the epilogue vectorized the
    tile loop instead, around the dot intrinsic's vectors, and TVM's vectorizer failed ("Cannot
    broadcast lanes=16 to 64"). Also one channel over a few pixels, and a few channels of one pixel."""
    params = {**POINTWISE, "qmin": -32767, "qmax": 32767, "out_dtype": "int16"}
    for c, o, hw in ((128, 1, (1, 1)), (64, 1, (1, 3)), (32, 5, (1, 1))):
        x = np.concatenate([activations(rng, (1, c, *hw), xdt, p) for p in PATTERNS])
        consts = [weights(rng, (o, c, 1, 1)), *requant_consts(rng, o, 8 + (8 if xdt == "int16" else 0) + 6)]
        info, asm = check_kernel("conv2d_requant", x, consts, target_name, **params)
        assert info is not None and info["rule"] == "Conv2DTensorized", (c, o, hw)
        assert INSTRUCTION[target_name][xdt] in asm


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("op, groups", [("conv2d_requant", 1), ("conv2d_requant", 8), ("dense_requant", None)])
def test_constant_output_kernels_stay_exact(rng, target_name, op, groups):
    """``qmin == qmax`` (an ONNX Clip to [1, 1] after the layer, a fuzz case): the requantization
    is a constant, the simplifier drops the accumulator from the epilogue, and the epilogue
    intrinsic no longer matched it (tensorize's comparator failed). Such a kernel keeps the plain
    rules -- there is no dot product worth tensorizing -- and stays exact."""
    params = {"qmin": 9, "qmax": 9, "out_dtype": "int8"}
    if op == "dense_requant":
        x, wt = activations(rng, (4, 32), "int8", "random"), weights(rng, (16, 32))
    else:
        x = activations(rng, (1, 8, 6, 6), "int8", "random")
        wt = weights(rng, (8, 8 // groups, 3, 3))
        params.update(strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=groups)
    info, _ = check_kernel(op, x, [wt, *requant_consts(rng, wt.shape[0], 14)], target_name, **params)
    assert info is None


def test_fraction_of_peak_uses_the_instruction_the_kernel_reads(rng):
    """``layers[].fraction_of_peak`` is against the peak of the dot instruction the kernel runs,
    chosen by the operand it *reads*: with 16-bit model inputs the first conv of the digits CNN is
    an 8-bit layer (``a_bits`` 8) reading int16 (``vpdpwssd`` on AVX-512: half ``vpdpbusd``'s
    rate), the later layers read 8-bit values. Measured against the plan's ``a_bits`` the first
    conv's fraction read half what it is."""
    from pathlib import Path

    import tvm_qplugin as tq
    from tvm_qplugin.peak import layer_peak_gmacs

    model = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.onnx"
    art = tq.compile(str(model), target="x86-host", calib={"input": (rng.random((8, 1, 8, 8)) * 16).astype(np.float32)},
                     input_bits=16)
    peak8, peak16 = (layer_peak_gmacs(art.build_target, bits) for bits in (8, 16))
    if select_isa(art.build_target, "int16") is not select_isa(art.build_target, "uint8"):
        assert peak8 / peak16 > 1.5, (peak8, peak16)  # two instructions, told apart below
    layers = art.report["layers"]
    assert len(layers) >= 4 and all(layer["a_bits"] == 8 for layer in layers) and layers[0]["fraction_of_peak"]
    for i, layer in enumerate(layers):
        if layer["fraction_of_peak"]:  # a thin layer under load may round to 0
            implied = layer["macs"] / layer["latency_us"] / 1e3 / layer["fraction_of_peak"]
            assert abs(implied / (peak16 if i == 0 else peak8) - 1) < 0.1, (layer["name"], implied, peak8, peak16)


@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_avx2_gemv_keeps_weights_int8_in_memory(rng, xdt, pattern):
    """Batch-1 dense on AVX2 (one row tile: each weight read once per call, from memory): the weights
    stay int8 and are widened as they are loaded (``vpmovsxbw``, isa ``avx2w8``), five channel
    vectors per tile (N = 40) -- bit-exact at the extremes, int16 activations included."""
    k, n = (256 if xdt == "int16" else 96), 40
    x = activations(rng, (1, k), xdt, pattern)
    wt = weights(rng, (n, k))
    bias, mult, shift = requant_consts(rng, n, 8 + (8 if xdt == "int16" else 0) + 6)
    info, asm = check_kernel("dense_requant", x, [wt, bias, mult, shift], "avx2", qmin=-128, qmax=127,
                             out_dtype="int8")
    assert (info["isa"], info["mr"], info["nr"]) == ("avx2w8", 1, 5)
    assert "vpmovsxbw" in asm and "vpmaddwd" in asm


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_small_int16_plane_is_one_tile_row_on_avx2(rng, target_name, pattern):
    """AVX2 vpmaddwd on a 7x7 plane whose packed activations stay in L1: one output channel x the
    whole plane (7 pixel vectors, 49 real lanes) per tile -- bit-exact at the extremes; VNNI's
    tile is unchanged. Built for both targets (only AVX2 code runs on an AVX2-only CPU)."""
    c, o = 40, 24
    x = activations(rng, (1, c, 7, 7), "int16", pattern)
    consts = [weights(rng, (o, c, 1, 1)), *requant_consts(rng, o, 8 + 8 + 6)]
    if target_name == "vnni":  # built, not run: this CPU may lack AVX-512
        info = next(packed_info(f) for f in pack_weights(one_op_module("conv2d_requant", x, consts, **POINTWISE),
                                                         TARGETS["vnni"]).functions.values()
                    if isinstance(f, tvm.tirx.PrimFunc) and packed_info(f))
        build(one_op_module("conv2d_requant", x, consts, **POINTWISE), TARGETS["vnni"])
        assert (info["mr"], info["nr"]) != (1, 7)
        return
    info, asm = check_kernel("conv2d_requant", x, consts, "avx2", **POINTWISE)
    assert (info["isa"], info["mr"], info["nr"]) == ("avx2", 1, 7) and "vpmaddwd" in asm


@pytest.mark.parametrize("c, whole_plane", [(40, True), (320, False)])
def test_whole_plane_tile_only_while_the_packed_plane_fits_l1(c, whole_plane):
    """The whole-plane tile re-reads the packed plane for every channel: 320 channels of int16 at
    56 lanes (36 KB) keep the channel-block tile."""
    isa = select_isa(AVX2_TARGET, "int16")
    mr, nr, _ = _conv_tile(1280, 49, isa, c // isa.kp)
    assert ((mr, nr) == (1, 7)) == whole_plane
    assert _conv_tile(1280, 14 * 14, isa, 20)[:2] == (2, 5)   # 25 vectors: 2 x 5
    assert _conv_tile(96, 28 * 28, isa, 20)[:2] == (6, 2)     # 98 vectors: the pairs of before
    vnni = select_isa(VNNI_TARGET, "int16")                  # 512-bit: 49 pixels in a pair of vectors, as before
    assert _conv_tile(1280, 7 * 7, vnni, 20)[:2] == (_conv_tile_rows(1280, 2, vnni, 20)[0], 2)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_fourteen_by_fourteen_int16_plane_takes_five_pixel_vectors_on_avx2(rng, pattern):
    """A 14x14 plane is 25 pixel vectors (odd: no pairs): AVX2 vpmaddwd takes 2 channels x 5
    vectors per tile -- bit-exact at the extremes (196 real lanes of 200)."""
    x = activations(rng, (1, 40, 14, 14), "int16", pattern)
    consts = [weights(rng, (24, 40, 1, 1)), *requant_consts(rng, 24, 8 + 8 + 6)]
    info, asm = check_kernel("conv2d_requant", x, consts, "avx2", **POINTWISE)
    assert (info["isa"], info["mr"], info["nr"]) == ("avx2", 2, 5) and "vpmaddwd" in asm


@pytest.mark.parametrize("out", [(0, 255, "uint8"), (-128, 127, "int8"), (-32767, 32767, "int16")])
@pytest.mark.parametrize("xdt", ["uint8", "int16"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_avx2_two_vector_epilogue_bit_exact(rng, out, xdt, pattern):
    """An AVX2 tile row of two pixel vectors is requantized in one 16-lane epilogue that takes the
    products' high words in groups of 4 lanes, out of order, and puts the narrowed outputs back
    (x86_int8.epilogue_lanes, x86_requant's ``grouped``): a lane sent to the wrong pixel fails the
    comparison. 8x8 pixels: 8 vectors, tiles of 2; every output dtype's narrowing."""
    qmin, qmax, odt = out
    o, c = 12, 32
    x = activations(rng, (1, c, 8, 8), xdt, pattern)
    wt = weights(rng, (o, c, 1, 1))
    bias, mult, shift = requant_consts(rng, o, 8 + (8 if xdt == "int16" else 0) + 5 - (8 if odt == "int16" else 0))
    info, asm = check_kernel("conv2d_requant", x, [wt, bias, mult, shift], "avx2", strides=[1, 1],
                             padding=[0, 0, 0, 0], dilation=[1, 1], groups=1, qmin=qmin, qmax=qmax, out_dtype=odt)
    assert info is not None and info["nr"] == 2
    # int16 activations run vpmaddwd with x86_requant_narrow's epilogue (no grouped form; Conv2DTensorized.narrow_isas),
    # 8-bit ones (vpmaddwd or the byte pairs) keep x86_requant's, grouped
    assert info.get("epilogue") == ("narrow" if xdt == "int16" else None), info
    if odt == "uint8" and xdt == "uint8":
        assert "vshufps" in asm  # the grouped high words; the one-vector form shifts and blends


def _narrow_consts_for(rng, kind: str, o: int, k: int, xdt: str, scale_bits: int) -> list:
    """Constants of a groups-1 conv for each epilogue: ``narrow`` (full-range weights, shifts >= 33),
    ``narrow_shift`` (small weights and multipliers, some shifts below 33: the accumulator is
    shifted left first) and ``exact`` (a bias near the int32 limit: the narrow epilogue is not
    proven, x86_requant's is kept)."""
    if kind == "narrow_shift":
        wt = rng.integers(-20, 21, (o, k)).astype(np.int8)
        shift = np.resize(np.array([24, 32, 20, 28], np.int64), o) + (8 if xdt == "int16" else 0)
        return [wt, rng.integers(-(2**12), 2**12, o).astype(np.int32), rng.integers(2**9, 2**11, o).astype(np.int64),
                shift]
    wt = weights(rng, (o, k))
    wt[0], wt[-1] = 127, -127
    if kind == "narrow":
        return [wt, *requant_consts(rng, o, scale_bits)]
    bias = rng.integers(-(2**16), 2**16, o).astype(np.int32)
    bias[:2] = [2**31 - 2**10, -(2**31) + 2**10]
    return [wt, bias, rng.integers(2**28, 2**29, o).astype(np.int64), np.full(o, 56, np.int64)]


# (C, O, H, W, kernel, stride, pad): 1x1 with pad pixels (flat gather), a long K (the ``local``
# accumulator tile), a 3x3 stride-2 padded conv (the row gather, deinterleaved columns)
NARROW_SHAPES = {"pointwise": (40, 24, 5, 7, 1, 1, 0), "long_k": (640, 16, 3, 5, 1, 1, 0),
                 "stem": (3, 16, 12, 14, 3, 2, 1)}


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("kind, shape", [("narrow", "pointwise"), ("narrow", "long_k"), ("narrow", "stem"),
                                         ("narrow_shift", "pointwise"), ("exact", "pointwise")])
def test_groups1_conv_narrow_epilogue_bit_exact(rng, target_name, xdt, kind, shape):
    """``Conv2DTensorized`` takes x86_requant_narrow's epilogue where every call's constants prove
    it (``narrow_isas``: AVX-512 VNNI, and AVX2's ``vpmaddwd`` kernels): the accumulator starts at
    the offset-corrected bias (``-128 * sum(w)`` included for s8 on vpdpbusd), the rounding is
    added to the product's high word. Each epilogue at the dtype extremes, on each accumulator
    scope and gather, bit-exact against the NumPy twin (run where the CPU has the ISA). AVX2's
    8-bit kernels go through the byte-pair decision (x86_byte_pairs) and keep x86_requant's."""
    c, o, h, w, kk, s, p = NARROW_SHAPES[shape]
    if xdt == "int16" and shape == "long_k":
        c = 320                                   # the local tile from 160 dot steps: K >= 320 int16
    x = np.concatenate([activations(rng, (1, c, h, w), xdt, pt) for pt in PATTERNS])
    scale_bits = 8 + (8 if xdt == "int16" else 0) + int(np.ceil(np.log2(c * kk * kk)))
    consts = _narrow_consts_for(rng, kind, o, c * kk * kk, xdt, scale_bits)
    consts[0] = consts[0].reshape(o, c, kk, kk)
    params = {**POINTWISE, "strides": [s, s], "padding": [p] * 4}
    info, asm = check_kernel("conv2d_requant", x, consts, target_name, **params)
    assert info is not None and info["rule"] == "Conv2DTensorized", info
    narrow_here = target_name == "vnni" or xdt == "int16"
    assert info.get("epilogue", "exact") == (kind if narrow_here else "exact"), info
    long_tile = target_name == "vnni" and shape == "long_k"
    assert info["acc_scope"] == ("local" if long_tile else "global"), info
    assert INSTRUCTION[target_name][xdt] in asm


@pytest.mark.parametrize("xdt", ["uint8", "int8"])
def test_groups1_narrow_epilogue_not_on_avx_vnni(rng, xdt):
    """AVX-VNNI's 256-bit ``vpdpbusd`` kernels keep x86_requant's epilogue for groups-1 convs (its
    two-vector ``grouped`` epilogue has no narrow form; not measured), even where the constants
    would prove the narrow one; still bit-exact. (Its int16 kernels are AVX2's ``vpmaddwd`` ones.)"""
    c, o = 40, 24
    x = np.concatenate([activations(rng, (1, c, 5, 7), xdt, pt) for pt in PATTERNS])
    consts = _narrow_consts_for(rng, "narrow", o, c, xdt, 8 + (8 if xdt == "int16" else 0) + 6)
    consts[0] = consts[0].reshape(o, c, 1, 1)
    info, _ = check_kernel("conv2d_requant", x, consts, "avxvnni", **POINTWISE)
    assert info is not None and info["rule"] == "Conv2DTensorized" and "epilogue" not in info, info
