"""The narrowing requantize (int16 -> int8) fused into its conv's gather (schedules/x86_narrowing.py).

Each case builds a two-op integer module -- ``requantize`` of an int16 input, then the conv that
reads it, as ``--wide-inputs 8`` emits them -- through ``build.build`` for AVX-512 VNNI and for the
AVX2-restricted target, and checks: the built module has one kernel (``conv2d_requant_narrowed``,
packed by the tensorized rule), no separate narrowing kernel; the output equals the NumPy
reference of the *two* ops bit for bit on int16 extremes, random values and inputs whose narrowing
lands on exact rounding ties. The integer module itself keeps both ops.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact, host_runs, run_if_host_can
from test_x86_kernels import TARGETS, activations, requant_consts, weights
from tvm import relax

from tvm_qplugin.build import build, lower
from tvm_qplugin.ops import OPS, const, emit, op_of
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.schedules.packing import packed_info
from tvm_qplugin.tie_inputs import TIE_BUILDERS, KernelSite, TieCount

AVX2_TARGET = TARGETS["avx2"]  # benchmarks/isa_variants.py's AVX2 target: znver3, no AVX-512
# 3/1024 (127/32767 is ~1/258): with an odd multiplier of 31 bits no int16 value ties at all
NARROW = {"multiplier": 3 << 28, "shift": 38, "qmin": -128, "qmax": 127, "out_dtype": "int8"}
# (C, O, H, W, kernel, stride, pad) -> the rule that packs the fused kernel on VNNI
CASES = {
    "pointwise_flat_padded_pixels": ((16, 24, 6, 7, 1, 1, 0), "Conv2DTensorized"),
    "pointwise_7x7_channel_lanes": ((32, 32, 7, 7, 1, 1, 0), "Conv2D1x1ChannelLanes"),
    "3x3_padded_rows": ((8, 16, 9, 10, 3, 1, 1), "Conv2DTensorized"),
    "3x3_stride2_split_cols": ((8, 16, 10, 12, 3, 2, 1), "Conv2DTensorized"),
}
PATTERNS = ("min", "max", "alternating", "random", "ties")


def two_op_module(shape, wt, consts, narrow=NARROW, k=1, stride=1, pad=0, second_reader=False):
    """``conv(requantize(x))``; with ``second_reader`` the narrowed tensor is also a graph output."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(list(shape), "int16"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            n = emit(bb, "requantize", [xv], **narrow)
            y = emit(bb, "conv2d_requant", [n, const(wt), *[const(c) for c in consts]], strides=[stride, stride],
                     padding=[pad] * 4, dilation=[1, 1], groups=1, qmin=-128, qmax=127, out_dtype="int8")
            outs = [bb.emit_output(y)] + ([bb.emit_output(n)] if second_reader else [])
        bb.emit_func_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
    return bb.get()


def tie_input(shape, narrow=NARROW) -> np.ndarray:
    """int16 values whose narrowing is an exact, unsaturated rounding tie (tie_inputs' requantize builder)."""
    site = KernelSite("requantize", "requantize", narrow, [(tuple(shape), "int16")], (tuple(shape), "int8"))
    count = TieCount()
    (x,), = TIE_BUILDERS["requantize"](site, count)
    assert count.hit == 1
    return x


def kernels_of(mod) -> list[str]:
    return sorted(op_of(f)[0] for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and op_of(f))


@pytest.fixture(scope="module")
def built():
    """``(case, target name) -> (module, lowered module, VM)``, each built once."""
    cache: dict = {}
    rng = np.random.default_rng(7)

    def get(case, target_name):
        if (case, target_name) not in cache:
            (c, o, h, w, k, s, p), _ = CASES[case]
            wt = weights(rng, (o, c, k, k))
            mod = two_op_module((1, c, h, w), wt, requant_consts(rng, o, 8 + 6), k=k, stride=s, pad=p)
            target = TARGETS[target_name]
            executable, _ = build(mod, target)
            vm = relax.VirtualMachine(executable, tvm.cpu()) if host_runs(target) else None  # None: ISA not here
            cache[case, target_name] = (mod, lower(mod, target)[0], vm)
        return cache[case, target_name]
    return get


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("case", list(CASES))
def test_narrowing_is_read_in_the_conv_gather_bit_exact(built, rng, case, target_name):
    mod, lowered, vm = built(case, target_name)
    # the built module: one fused, tensorized kernel -- no narrowing kernel, no 8-bit copy of x
    assert kernels_of(lowered) == ["conv2d_requant_narrowed"], kernels_of(lowered)
    infos = [packed_info(f) for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    rule = next(i["rule"] for i in infos if i)
    assert rule == (CASES[case][1] if target_name == "vnni" else "Conv2DTensorized"), rule
    assert kernels_of(mod) == ["conv2d_requant", "requantize"]  # the integer module keeps both ops
    shape = tuple(int(d) for d in mod["main"].params[0].ty.shape)
    ref = ReferenceInterpreter(mod)
    for pattern in PATTERNS if vm is not None else ():
        x = tie_input(shape) if pattern == "ties" else activations(rng, shape, "int16", pattern)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert_bit_exact(got, ref.run("main", x)[0], f"{case} {pattern} on {target_name}")


def test_fused_twin_is_the_two_twins_composed(rng):
    """ops/conv_narrowed.py's twin against requantize then conv2d_requant, on a tie input."""
    c, o = 8, 16
    x = tie_input((1, c, 5, 5))
    wt = weights(rng, (o, c, 3, 3))
    bias, mult, shift = requant_consts(rng, o, 14)
    conv = {"strides": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "qmin": -128, "qmax": 127,
            "out_dtype": "int8"}
    two = OPS["conv2d_requant"].reference(OPS["requantize"].reference(x, **NARROW), wt, bias, mult, shift, **conv)
    fused = OPS["conv2d_requant_narrowed"].reference(
        x, wt, bias, mult, shift, np.array([NARROW["multiplier"]]), np.array([NARROW["shift"]]),
        in_qmin=-128, in_qmax=127, in_dtype="int8", **conv)
    np.testing.assert_array_equal(fused, two)


def test_a_narrowing_with_another_reader_stays_its_own_kernel(rng):
    """The 8-bit tensor is also an output: it must exist in memory, so nothing is fused."""
    wt = weights(rng, (16, 8, 1, 1))
    mod = two_op_module((1, 8, 4, 4), wt, requant_consts(rng, 16, 14), second_reader=True)
    lowered, _ = lower(mod, AVX2_TARGET)
    assert kernels_of(lowered) == ["conv2d_requant", "requantize"]
    x = activations(rng, (1, 8, 4, 4), "int16", "random")
    executable, _ = build(mod, AVX2_TARGET)
    got = [t.numpy() for t in relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x))]
    for g, want in zip(got, ReferenceInterpreter(mod).run("main", x)):
        assert_bit_exact(g, want, "unfused narrowing")


# (multiplier, shift) of narrowings: the int32 form's bounds (x86_conv_gather.narrowing_fits_int32),
# MobileNetV2's kind (~127/32767), a tie-rich one, small multipliers
EVERY_VALUE_NARROWINGS = [(2**31 - 1, 17), (2**31 - 1, 46), (1090921693, 38), (3 << 28, 38), (1, 17), (2**30 + 12345, 45)]


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
def test_int32_narrowing_is_exact_on_every_int16_value(target_name):
    """Every int16 value through the fused gather under each narrowing, read back through an
    identity conv (one channel per channel, output = the narrowed value): the int32 form of the
    gather (x86_conv_gather._narrowed_int32) against the requantize's int64 twin, exhaustively.
    One kernel serves every narrowing (its multiplier and shift are runtime constants)."""
    c = 16
    x = np.arange(-(2**15), 2**15, dtype=np.int16).reshape(1, c, 64, 64)
    eye = np.eye(c, dtype=np.int8).reshape(c, c, 1, 1)
    identity = [np.zeros(c, np.int32), np.full(c, 2**30, np.int64), np.full(c, 30, np.int64)]
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(list(x.shape), "int16"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            outs = []
            for m, s in EVERY_VALUE_NARROWINGS:
                n = emit(bb, "requantize", [xv], multiplier=m, shift=s, qmin=-128, qmax=127, out_dtype="int8")
                y = emit(bb, "conv2d_requant", [n, const(eye), *map(const, identity)], strides=[1, 1],
                         padding=[0] * 4, dilation=[1, 1], groups=1, qmin=-128, qmax=127, out_dtype="int8")
                outs.append(bb.emit_output(y))
        bb.emit_func_output(relax.Tuple(outs))
    mod = bb.get()
    target = TARGETS[target_name]
    assert kernels_of(lower(mod, target)[0]) == ["conv2d_requant_narrowed"]
    executable, _ = build(mod, target)
    got = run_if_host_can(executable, target, x)
    for (m, s), g, want in zip(EVERY_VALUE_NARROWINGS, got or [], ReferenceInterpreter(mod).run("main", x)):
        assert_bit_exact(g, want, f"narrowing ({m}, {s}) on {target_name}")
        np.testing.assert_array_equal(want, OPS["requantize"].reference(x, multiplier=m, shift=s, qmin=-128,
                                                                         qmax=127, out_dtype="int8"))


def test_a_narrowing_outside_the_int32_form_stays_its_own_kernel(rng):
    """A shift past the int32 form's bound (47 and up: its rounding term would overflow) is not fused."""
    wt = weights(rng, (16, 8, 1, 1))
    mod = two_op_module((1, 8, 4, 4), wt, requant_consts(rng, 16, 14), narrow={**NARROW, "shift": 47})
    assert kernels_of(lower(mod, TARGETS["vnni"])[0]) == ["conv2d_requant", "requantize"]
