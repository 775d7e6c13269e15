"""Shift/add primitives (ops/shiftadd.py): the shift linear and add attention kernels bit-exact
against their NumPy twins at the dtype extremes, on AVX-512 VNNI and on the AVX2 target; the
multiply-free check proving them and failing on a multiplying kernel; the power-of-two
quantizer; the option refusals. Single ops only: a few seconds."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact, run_if_host_can
from test_x86_kernels import AVX2_TARGET, VNNI_TARGET, activations
from tvm import relax

from tvm_qplugin.build import build, lower
from tvm_qplugin.compiler import CompileOptions
from tvm_qplugin.errors import QPluginError
from tvm_qplugin.ops import OPS, const, emit
from tvm_qplugin.ops.shiftadd import attention_acc_dtype
from tvm_qplugin.passes.verify import kernel_origins
from tvm_qplugin.passes.verify_tir import MultiplyInShiftAddKernelError, check_multiply_free, multiply_sites
from tvm_qplugin.quant.pow2 import decode, pack_nibbles, shift_quantize, unpack_nibbles

TARGETS = {"vnni": VNNI_TARGET, "avx2": AVX2_TARGET}
PATTERNS = ("min", "max", "random", "alternating")


def _module(cases):
    """One integer module holding every case: ``(op, inputs, constants, params)``; returns it and
    the list of (name, inputs, constants, params) in output order."""
    bb = relax.BlockBuilder()
    params, calls = [], []
    for c, (op, xs, consts, p) in enumerate(cases):
        vs = [relax.Var(f"x{c}_{i}", relax.TensorType(list(x.shape), str(x.dtype))) for i, x in enumerate(xs)]
        params += vs
        calls.append((op, vs, consts, p))
    with bb.function("main", params):
        with bb.dataflow():
            ys = [bb.emit_output(emit(bb, op, [*vs, *(const(k) for k in consts)], **p)) for op, vs, consts, p in calls]
        bb.emit_func_output(relax.Tuple(ys))
    return bb.finalize()


def _run_cases(cases, target):
    ex, _ = build(_module(cases), target)
    got = run_if_host_can(ex, target, *[x for _, xs, _, _ in cases for x in xs])
    for (op, xs, consts, p), g in zip(cases if got is not None else [], got or []):
        assert_bit_exact(g, OPS[op].reference(*xs, *consts, **p), f"{op} {[x.dtype for x in xs]} {p}")


def _shift_cases(rng):
    cases = []
    for x_dtype, k, n in (("int8", 33, 8), ("uint8", 32, 16), ("int16", 64, 7)):  # 16: the vectorized schedule
        codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
        codes[0, :] = 8 | 7                       # the most negative weight everywhere: -64
        codes[1, :] = 7                           # the most positive: +64
        codes[2, :] = 0                           # the zero code (and 8: "negative zero")
        codes[2, ::2] = 8
        info = np.iinfo(x_dtype)
        bias = rng.integers(-(2**16), 2**16, n).astype(np.int32)
        mult = rng.integers(2**30, 2**31 - 1, n).astype(np.int64)
        shift = np.full(n, 31 + 9, np.int64)
        for pattern in PATTERNS:
            x = activations(rng, (1, 3, k), x_dtype, pattern)
            cases.append(("shift_dense_requant", [x], [pack_nibbles(codes), bias, mult, shift],
                          dict(qmin=int(max(info.min, -32768)), qmax=int(min(info.max, 32767)), out_dtype="int16")))
    return cases


def _attention_cases(rng):
    cases = []
    for q_dtype, v_dtype, (b, n, d, dv) in (("int8", "int8", (2, 16, 16, 16)), ("int16", "int16", (2, 12, 40, 8)),
                                          ("uint8", "int16", (3, 9, 37, 5))):
        for pattern in PATTERNS:
            q = activations(rng, (b, n, d), q_dtype, pattern)
            kt = activations(rng, (b, d, n), q_dtype, "random")
            v = activations(rng, (b, n, dv), v_dtype, pattern)
            info = np.iinfo(v_dtype)
            cases.append(("add_attention", [q, kt, v], [], dict(qmin=int(info.min), qmax=int(info.max),
                                                                   out_dtype=v_dtype)))
    # a padding mask over keys (B, 1, 1, N) broadcast over heads; the second sequence fully masked
    q, kt = (activations(rng, s, "int16", "random") for s in ((2, 3, 10, 16), (2, 3, 16, 10)))
    v = activations(rng, (2, 3, 10, 8), "int8", "random")
    keep = np.ones((2, 1, 1, 10), bool)
    keep[0, ..., 7:] = False
    keep[1] = False
    cases.append(("add_attention", [q, kt, v, keep], [], dict(qmin=-128, qmax=127, out_dtype="int8")))
    # n * d = 32768 with int16 v at the extremes: the numerators need int64 (attention_acc_dtype)
    q, kt = (activations(rng, s, "int16", "random") for s in ((1, 256, 128), (1, 128, 256)))
    v = np.where(rng.random((1, 256, 4)) < 0.5, -32768, 32767).astype(np.int16)
    assert attention_acc_dtype(256, 128, "int16") == "int64"
    cases.append(("add_attention", [q, kt, v], [], dict(qmin=-32768, qmax=32767, out_dtype="int16")))
    return cases


@pytest.mark.parametrize("isa", sorted(TARGETS))
def test_shift_dense_bit_exact_at_extremes(isa):
    _run_cases(_shift_cases(np.random.default_rng(1)), TARGETS[isa])


@pytest.mark.parametrize("isa", sorted(TARGETS))
def test_add_attention_bit_exact_at_extremes(isa):
    """d = 16 (one word, d a power of two), 40 (two words), 37 (the d * q multiply of the mean)."""
    _run_cases(_attention_cases(np.random.default_rng(2)), TARGETS[isa])


def test_add_attention_equals_normalised_hamming_scores():
    """The twin's quadratic popcount form against a float recomputation from the definition."""
    rng = np.random.default_rng(3)
    q, kt, v = (rng.integers(-50, 50, s).astype(np.int8) for s in ((1, 6, 8), (1, 8, 6), (1, 6, 3)))
    q64, k64 = q[0].astype(np.int64), kt[0].T.astype(np.int64)
    qb = q64 * 8 > q64.sum(-1, keepdims=True)   # above the token's mean
    kb = k64 * 8 > k64.sum(-1, keepdims=True)
    s = (qb[:, None, :] == kb[None, :, :]).sum(-1).astype(np.float64)
    want = np.floor(s @ v[0].astype(np.float64) / s.sum(-1, keepdims=True) + 0.5)
    got = OPS["add_attention"].reference(q, kt, v, qmin=-128, qmax=127, out_dtype="int8")
    np.testing.assert_equal(got[0].astype(np.float64), want)


def test_power_of_two_codes():
    w = np.array([[1.0, -0.5, 0.26, 0.0, -1.0, 0.74, 1 / 64, 1 / 200]])
    codes, scale = shift_quantize(w)
    assert scale[0] == 1 / 64
    # 0.26 * 64 = 16.6 -> 16; 0.74 * 64 = 47.4 -> 32 (nearer than 64); 1/200 * 64 = 0.32 -> 0
    np.testing.assert_equal(decode(codes)[0], [64, -32, 16, 0, -64, 32, 1, 0])
    assert np.all(codes <= 15)
    np.testing.assert_equal(unpack_nibbles(pack_nibbles(codes), 8), codes)
    odd = np.arange(15, dtype=np.uint8).reshape(1, 15)
    assert pack_nibbles(odd).shape == (1, 8)
    np.testing.assert_equal(unpack_nibbles(pack_nibbles(odd), 15), odd)
    _, zero_scale = shift_quantize(np.zeros((2, 3)))
    np.testing.assert_equal(zero_scale, [1.0, 1.0])


def _lowered(cases):
    mod = _module(cases)
    lowered, _ = lower(mod, VNNI_TARGET)
    return mod, lowered


def test_multiply_free_check_proves_shiftadd_kernels():
    rng = np.random.default_rng(4)
    cases = _shift_cases(rng)[:1] + _attention_cases(rng)[-1:]  # the d = 37 case multiplies, outside reductions
    mod, lowered = _lowered(cases)
    assert check_multiply_free(lowered, kernel_origins(mod, "main"), "main") == 2


def test_multiply_free_check_fails_on_a_multiplying_kernel():
    """dense_requant multiplies in its accumulation: named as a shift kernel, it is refused."""
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (4, 8)).astype(np.int8)
    case = ("dense_requant", [rng.integers(-128, 128, (1, 8)).astype(np.int8)],
            [w, np.zeros(4, np.int32), np.full(4, 2**30, np.int64), np.full(4, 40, np.int64)],
            dict(qmin=-128, qmax=127, out_dtype="int8"))
    mod, lowered = _lowered([case])
    origins = kernel_origins(mod, "main")
    kernel = next(iter(origins))
    assert multiply_sites(lowered[kernel]), "a multiplying accumulation was not found"
    with pytest.raises(MultiplyInShiftAddKernelError, match=rf"kernel {kernel} \[shift_dense_requant\] multiplies"):
        check_multiply_free(lowered, {kernel: "shift_dense_requant"}, "main")
    assert check_multiply_free(lowered, origins, "main") == 0  # as itself (int8 multiply) it is not checked


@pytest.mark.parametrize("options, message", [
    (dict(attention="bogus"), r"--attention 'bogus' .*int8, shiftadd"),
    (dict(shift_linears="some"), r"--shift-linears 'some': choose one of off, rule, all"),
    (dict(primitives=("lv71=add",)), r"--primitive lv71=add: choose one of int8, shift"),
    (dict(primitives=("lv71",)), r"--primitive 'lv71': expected LAYER=int8\|shift"),
])
def test_bad_shiftadd_options_are_refused_in_one_line(options, message):
    with pytest.raises(QPluginError, match=message) as err:
        CompileOptions(**options)
    assert "\n" not in str(err.value)


def test_cli_refuses_a_bad_shift_linears_mode_in_one_line(tmp_path):
    from test_cli_errors import assert_user_error, run_cli

    np.savez(tmp_path / "calib.npz", input=np.zeros((2, 1, 8, 8), np.float32))
    r = run_cli("compile", "examples/digits_vit.onnx", "--calib", tmp_path / "calib.npz", "--attention", "shiftadd",
                "--shift-linears", "most", "-o", tmp_path / "out")
    assert_user_error(r, "--shift-linears", "most", "off, rule, all")


def test_plan_rule_threshold_last_layer_and_overrides():
    from tvm_qplugin.passes.shiftadd import SHIFT_MIN_SQNR_DB, ShiftAddPlan, plan_for

    rule = plan_for("shiftadd", None)
    assert rule.attention and rule.linears == "rule"
    assert rule.linear_choice("fc", SHIFT_MIN_SQNR_DB + 1, is_last=False) == "shift"
    assert rule.linear_choice("fc", SHIFT_MIN_SQNR_DB - 1, is_last=False) == "int8"
    assert rule.linear_choice("head", 40.0, is_last=True) == "int8"
    assert ShiftAddPlan(linears="all").linear_choice("fc", 1.0, is_last=False) == "shift"
    forced = plan_for("int8", "off", ("head=shift", "fc=int8"))
    assert not forced.attention
    assert forced.linear_choice("head", 1.0, is_last=True) == "shift"
    assert plan_for("int8", None) is None and plan_for("int8", "off") is None  # nothing asked: the int8 rules


def test_per_layer_override_reaches_the_integer_graph():
    """``primitives`` overrides one layer of ``--shift-linears all``; the attention cores become
    add attention -- checked on the integer module, no build."""
    from qplugin_zoo import digits_split

    from tvm_qplugin.compiler import integer_front
    from tvm_qplugin.targets import get_board

    x_train = digits_split()[0]
    opts = CompileOptions(attention="shiftadd", shift_linears="all", primitives={"lv71": "int8"})
    front = integer_front("examples/digits_vit.onnx", opts, get_board("x86-host").target(), {"input": x_train[:16]})
    prims = {layer.name: layer.primitive for layer in front.imod.layers}
    assert prims["lv71"] == "int8" and prims["lv101"] == "shift", prims
    assert list(prims.values()).count("add-attention") == 4, prims
