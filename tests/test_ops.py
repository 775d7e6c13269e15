"""Each integer op: TVM build of its TE kernel == its NumPy twin, bit for bit (verification ladder 1)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax

from conftest import assert_bit_exact
from tvm_qplugin.ops import OPS, const, emit

TARGET = tvm.target.Target.from_device(tvm.cpu())


def run_both(op_name: str, args: list[np.ndarray], n_inputs: int = 1, **params):
    """Compile one op (first ``n_inputs`` args as function inputs, the rest as constants)."""
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(args[:n_inputs])]
    with bb.function("main", xs):
        with bb.dataflow():
            y = emit(bb, op_name, [*xs, *[const(a) for a in args[n_inputs:]]], **params)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=TARGET), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a) for a in args[:n_inputs]]).numpy()
    return got, OPS[op_name].reference(*args, **params)


def edge_int8(rng, shape, dtype="int8"):
    """Random values with the extremes planted (saturation paths)."""
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, size=shape, dtype=np.int64)
    flat = a.reshape(-1)
    flat[: min(4, flat.size)] = [info.min, info.max, 0, info.max][: min(4, flat.size)]
    return a.astype(dtype)


@pytest.mark.parametrize("groups,stride,pad,dil,xdt", [
    (1, 1, (1, 1, 1, 1), 1, "int8"),
    (1, 2, (0, 1, 1, 0), 1, "uint8"),      # strided, asymmetric padding
    (8, 1, (1, 1, 1, 1), 1, "uint8"),      # depthwise
    (2, 1, (2, 2, 2, 2), 2, "int8"),       # grouped + dilated
])
def test_conv2d_requant_bit_exact(rng, groups, stride, pad, dil, xdt):
    c, o, k = 8, 8, 3
    x = edge_int8(rng, (1, c, 9, 7), xdt)
    w = edge_int8(rng, (o, c // groups, k, k))
    bias = rng.integers(-(2**20), 2**20, size=o).astype(np.int32)
    mult = rng.integers(2**30, 2**31, size=o).astype(np.int64)
    shift = rng.integers(31, 45, size=o).astype(np.int64)
    got, ref = run_both("conv2d_requant", [x, w, bias, mult, shift], strides=[stride, stride], padding=list(pad),
                        dilation=[dil, dil], groups=groups, qmin=-128, qmax=127, out_dtype="int8")
    assert_bit_exact(got, ref, "conv2d_requant")
    assert (ref == 127).any() or (ref == -128).any() or ref.std() > 1  # exercised a real range


def test_dense_requant_rounding_ties_and_wide_output(rng):
    x = edge_int8(rng, (3, 64))
    w = edge_int8(rng, (5, 64))
    bias = np.array([0, 1, -1, 2**30, -(2**30)], dtype=np.int32)
    mult = np.full(5, 1, dtype=np.int64)
    shift = np.array([1, 1, 2, 62, 0], dtype=np.int64)  # ties at shift 1, identity at 0, largest shift
    got, ref = run_both("dense_requant", [x, w, bias, mult, shift], qmin=-(2**31), qmax=2**31 - 1, out_dtype="int32")
    assert_bit_exact(got, ref, "dense_requant")


@pytest.mark.parametrize("shape_a,shape_b", [((1, 4, 5, 5), (1, 4, 5, 5)), ((1, 4, 5, 5), (1, 4, 1, 1))])
def test_add_requant_broadcast(rng, shape_a, shape_b):
    a, b = edge_int8(rng, shape_a), edge_int8(rng, shape_b, "uint8")
    got, ref = run_both("add_requant", [a, b], n_inputs=2, ma=1_500_000_000, mb=-700_000_000, shift=31, qmin=-128,
                        qmax=127, out_dtype="int8")
    assert_bit_exact(got, ref, "add_requant")


def test_requantize_to_uint8(rng):
    x = edge_int8(rng, (2, 3, 4))
    got, ref = run_both("requantize", [x], multiplier=1_717_986_918, shift=30, qmin=0, qmax=255, out_dtype="uint8")
    assert_bit_exact(got, ref, "requantize")


@pytest.mark.parametrize("ceil_mode,pad", [(False, (0, 0, 0, 0)), (True, (1, 1, 0, 0))])
def test_max_pool2d(rng, ceil_mode, pad):
    x = edge_int8(rng, (1, 3, 7, 6))
    got, ref = run_both("max_pool2d", [x], pool_size=[3, 3], strides=[2, 2], dilation=[1, 1], padding=list(pad),
                        ceil_mode=ceil_mode, pad_value=-128)
    assert_bit_exact(got, ref, "max_pool2d")


def test_sum_requant_global_average(rng):
    x = edge_int8(rng, (2, 16, 7, 7), "uint8")
    got, ref = run_both("sum_requant", [x], axes=[2, 3], keepdims=True, multiplier=1_402_438_300, shift=36, qmin=0,
                        qmax=255, out_dtype="uint8")
    assert_bit_exact(got, ref, "sum_requant")


def test_avg_pool2d_per_position_divisor(rng):
    x = edge_int8(rng, (1, 2, 6, 6))
    mult = rng.integers(2**29, 2**31, size=(3, 3)).astype(np.int64)
    got, ref = run_both("avg_pool2d_requant", [x, mult], pool_size=[3, 3], strides=[2, 2], padding=[1, 1, 1, 1],
                        shift=33, qmin=-128, qmax=127, out_dtype="int8")
    assert_bit_exact(got, ref, "avg_pool2d_requant")


def test_quantize_boundary_round_half_up():
    x = np.array([[0.5, -0.5, 1.5, -1.5, 1e9, -1e9, 0.49999997]], dtype=np.float32)
    got, ref = run_both("quantize", [x], inv_scale=1.0, qmin=-128, qmax=127, out_dtype="int8")
    assert_bit_exact(got, ref, "quantize")
    # the rule is floor(x * inv_scale + 0.5) evaluated in float32 (0.49999997 + 0.5 == 1.0f)
    np.testing.assert_array_equal(ref, [[1, 0, 2, -1, 127, -128, 1]])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.sampled_from([1, 2, 4]), o_mult=st.sampled_from([1, 2]), k=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]), h=st.integers(3, 8), depthwise=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_property_random_shapes(c, o_mult, k, stride, h, depthwise, seed):
    rng = np.random.default_rng(seed)
    groups = c if depthwise else 1
    o = c * o_mult
    x = rng.integers(-128, 128, size=(1, c, h, h + 1)).astype(np.int8)
    w = rng.integers(-127, 128, size=(o, c // groups, k, k)).astype(np.int8)
    bias = rng.integers(-1000, 1000, size=o).astype(np.int32)
    mult = rng.integers(2**30, 2**31, size=o).astype(np.int64)
    shift = rng.integers(30, 40, size=o).astype(np.int64)
    p = k // 2
    got, ref = run_both("conv2d_requant", [x, w, bias, mult, shift], strides=[stride, stride], padding=[p, p, p, p],
                        dilation=[1, 1], groups=groups, qmin=-128, qmax=127, out_dtype="int8")
    assert_bit_exact(got, ref, "conv2d_requant (hypothesis)")


def assert_scheduled_bit_exact(scheduled, out_ty, op: str, args, params, what: str) -> None:
    """Build a schedule rule's PrimFunc, run it on ``args``, compare with the op's NumPy twin."""
    lib = tvm.tirx.build(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), target=TARGET)
    out = tvm.runtime.tensor(np.zeros([int(d) for d in out_ty.shape], str(out_ty.dtype)))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    assert_bit_exact(out.numpy(), OPS[op].reference(*args, **params), what)


def test_pointwise_conv_schedule_rule_is_bit_exact(rng):
    """The x86 rule reorders the reduction; the scheduled kernel must equal the reference."""
    from tvm_qplugin.ops.registry import OPS as REG
    from tvm_qplugin.schedules.x86 import Conv2D1x1Reorder

    args = [rng.integers(0, 256, (1, 48, 7, 9)).astype(np.uint8), rng.integers(-127, 128, (16, 48, 1, 1)).astype(np.int8),
            rng.integers(-5000, 5000, 16).astype(np.int32), rng.integers(2**30, 2**31, 16).astype(np.int64),
            np.full(16, 38, np.int64)]
    params = dict(strides=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1], groups=1, qmin=-32767, qmax=32767,
                  out_dtype="int16")
    func, out_ty = REG["conv2d_requant"].prim_func([(a.shape, str(a.dtype)) for a in args], **params)
    scheduled = Conv2D1x1Reorder().apply(func, TARGET)
    assert scheduled is not None and "T.parallel" in scheduled.script()
    assert Conv2D1x1Reorder().apply(REG["conv2d_requant"].prim_func(
        [(a.shape, str(a.dtype)) for a in args], **{**params, "padding": [1, 1, 1, 1]})[0], TARGET) is None
    assert_scheduled_bit_exact(scheduled, out_ty, "conv2d_requant", args, params, "scheduled 1x1 conv")


@pytest.mark.parametrize("case", ["dense32", "dense64", "dense64_ragged", "matmul64", "matmul_rowsum"])
def test_transformer_schedule_rules_are_bit_exact(rng, case):
    """DenseRowBlocks / MatmulRequantIKJ restructure loops (and dense int64 accumulation is int32
    chunks); the scheduled kernels must equal the NumPy reference at the dtype extremes."""
    from tvm_qplugin.ops.registry import OPS as REG
    from tvm_qplugin.schedules.x86 import DenseRowBlocks, MatmulRequantIKJ

    def ext(shape, dtype):  # extremes included: the int32 chunk bound is tight at -32768 * -128
        info = np.iinfo(dtype)
        v = rng.integers(int(info.min), int(info.max) + 1, shape).astype(dtype)
        v.reshape(-1)[: v.size // 4] = info.min
        return v

    if case.startswith("dense"):
        k = {"dense32": 64, "dense64": 1536, "dense64_ragged": 1031}[case]
        x = ext((2, 8, k), "int16")
        w = np.full((12, k), -128, np.int8)
        w[:, ::3] = rng.integers(-127, 128, (12, len(range(0, k, 3))))
        args = [x, w, rng.integers(-5000, 5000, 12).astype(np.int32),
                rng.integers(2**20, 2**26, 12).astype(np.int64), np.full(12, 44, np.int64)]
        params = dict(qmin=-32768, qmax=32767, out_dtype="int16", acc_bits=32 if case == "dense32" else 64)
        op, rule = "dense_requant", DenseRowBlocks()
    else:
        a = ext((2, 3, 8, 32), "int16") if case == "matmul64" else rng.integers(0, 600, (2, 3, 8, 96)).astype(np.int16)
        b = ext((2, 3, 32 if case == "matmul64" else 96, 16), "int16")
        params = dict(multiplier=1 << 24, shift=40, qmin=-32768, qmax=32767, out_dtype="int16",
                      acc_bits=64 if case == "matmul64" else 32)
        if case == "matmul_rowsum":
            params["a_row_sum"] = 96 * 600
        args, op, rule = [a, b], "matmul_requant", MatmulRequantIKJ()
    func, out_ty = REG[op].prim_func([(a.shape, str(a.dtype)) for a in args], **params)
    scheduled = rule.apply(func, TARGET)
    assert scheduled is not None and "T.parallel" in scheduled.script()
    assert_scheduled_bit_exact(scheduled, out_ty, op, args, params, f"scheduled {case}")


@pytest.mark.parametrize("variant,approx", [("ivit", "tanh"), ("ibert", "tanh"), ("ibert", "paper"),
                                            ("division-free", "tanh"), ("ivit", "paper")])
def test_gelu_inline_rule_is_bit_exact(variant, approx):
    """GeluInlineStages folds single-use stages into the output: every int16 input, same integers."""
    from tvm_qplugin.ops.registry import OPS as REG
    from tvm_qplugin.schedules.x86 import GeluInlineStages

    x = np.arange(-32768, 32768).astype(np.int16).reshape(128, 512)
    params = dict(in_scale=4e-4, out_scale=3e-4, qmin=-32768, qmax=32767, out_dtype="int16", variant=variant,
                  approx=approx)
    func, out_ty = REG["gelu_int"].prim_func([(x.shape, "int16")], **params)
    scheduled = GeluInlineStages().apply(func, TARGET)
    assert scheduled is not None and scheduled.script().count("T.sblock(") < func.script().count("T.sblock(")
    assert_scheduled_bit_exact(scheduled, out_ty, "gelu_int", [x], params, f"inlined gelu {variant} {approx}")
