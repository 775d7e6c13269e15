"""The transformer kernels on x86 (schedules/x86_matmul.py, x86_nonlinear.py, DenseTensorized's
int64 case): bit-exact against the ops' NumPy twins at MiniLM's shapes and odd ones, dtype
extremes, on AVX-512 VNNI, AVX2 (znver3) and AVX-VNNI (alderlake) targets -- each built and inspected
on any machine, run where the CPU has the ISA (conftest.host_runs).

Every case goes through ``build.build`` (prepacking + schedule rules + tvm.compile) on a one-op
integer module, the route of a compile.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact, host_runs, run_if_host_can
from test_x86_kernels import TARGETS, activations, asm_of, check_kernel, requant_consts
from tvm import relax

from tvm_qplugin.build import build
from tvm_qplugin.ops import OPS, emit
from tvm_qplugin.schedules.packing import pack_call_args
from tvm_qplugin.schedules.x86_matmul import MatmulTensorized
from tvm_qplugin.schedules.x86_nonlinear import GeluTable, SoftmaxRowsParallel

MINILM_GELU = {"approx": "tanh", "exp_poly": 2, "in_scale": 0.00075, "n": 5, "out_dtype": "int16", "out_scale": 0.00075,
               "qmax": 32767, "qmin": -32767}


def run_module(op, inputs, target_name, **params):
    """Build a one-op module whose runtime inputs are ``inputs`` for ``target_name``; return the
    output, the NumPy twin's output and the executable."""
    bb = relax.BlockBuilder()
    vs = [relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, x in enumerate(inputs)]
    with bb.function("main", vs):
        with bb.dataflow():
            out = bb.emit_output(emit(bb, op, vs, **params))
        bb.emit_func_output(out)
    executable, _ = build(bb.get(), TARGETS[target_name])
    got = run_if_host_can(executable, TARGETS[target_name], *inputs)  # None: this CPU lacks the ISA
    return got, OPS[op].reference(*inputs, **params), executable


def weights_with_row_sums(rng, n, k, row_sum_max):
    """int8 weights whose per-channel ``sum |w|`` stays at or below ``row_sum_max``, with +-127 planted."""
    w = rng.integers(-127, 128, (n, k)).astype(np.int64)
    scale = np.minimum(1.0, row_sum_max / np.abs(w).sum(axis=1))[:, None]
    w = np.trunc(w * scale).astype(np.int8)
    w[:, 0] = np.where(np.arange(n) % 2, 127, -127) * (np.abs(w).sum(axis=1) + 127 <= row_sum_max)
    assert np.abs(w.astype(np.int64)).sum(axis=1).max() <= row_sum_max
    return w


PATTERNS = ("min", "max", "random", "alternating")
DOT = {"vnni": "vpdpwssd", "avx2": "vpmaddwd", "avxvnni": "vpmaddwd"}  # int16 operands: AVX-VNNI has no vpdpwssd here


def check_matmul(a, b, target_name, tensorized=True, **params):
    """Build, run, compare with the twin (run where this CPU has the ISA; returns the output, or None);
    the rule took the kernel (or, ``tensorized=False``, left it)."""
    func, _ = OPS["matmul_requant"].prim_func([(a.shape, str(a.dtype)), (b.shape, str(b.dtype))], **params)
    assert (MatmulTensorized().apply(func, TARGETS[target_name]) is not None) == tensorized
    got, ref, executable = run_module("matmul_requant", [a, b], target_name, **params)
    if got is not None:
        assert_bit_exact(got, ref, f"matmul_requant {a.dtype} x {b.dtype} {a.shape} x {b.shape} on {target_name}")
    if tensorized:
        assert DOT[target_name] in asm_of(executable)
    return got


def probabilities(rng, shape, pattern):
    """Non-negative int16 rows summing to at most 2**15 (softmax output at 2**-15): one-hot at the
    maximum, uniform, random splits, alternating one-hot / uniform."""
    rows, k = int(np.prod(shape[:-1])), shape[-1]
    one_hot = np.zeros((rows, k), np.int64)
    one_hot[np.arange(rows), rng.integers(0, k, rows)] = 32767
    uniform = np.full((rows, k), 32768 // k)
    cuts = np.sort(rng.integers(0, 32769, (rows, k - 1)), axis=1)
    split = np.diff(np.concatenate([np.zeros((rows, 1), np.int64), cuts, np.full((rows, 1), 32768)], axis=1), axis=1)
    split = np.minimum(split, 32767)
    p = {"min": uniform, "max": one_hot, "random": split,
         "alternating": np.where((np.arange(rows) % 2)[:, None] == 0, one_hot, uniform)}[pattern]
    return p.astype(np.int16).reshape(shape)


# --------------------------------------------------------------------------------- attention matmuls

@pytest.mark.parametrize("target_name", ["vnni", "avx2", "avxvnni"])
@pytest.mark.parametrize("pa, pb", [("min", "max"), ("max", "alternating"), ("random", "random"), ("alternating", "min")])
def test_qk_int16_int64_accumulation_split_exact(rng, target_name, pa, pb):
    """``Q Kᵀ`` on int16 Q, K (MiniLM: K = 32, acc_bits=64): the a_hi / a_lo split must equal the
    int64 op at the extremes (-32768: hi -128, lo 0; 32767: hi 127, lo 255); M = 40, N = 48 are
    not multiples of MiniLM's tile."""
    a = activations(rng, (2, 3, 40, 32), "int16", pa)
    b = activations(rng, (2, 3, 32, 48), "int16", pb)
    got = check_matmul(a, b, target_name, multiplier=(1 << 26) + 12345, shift=44, qmin=-32767, qmax=32767,
                       out_dtype="int16", acc_bits=64)
    if pa == "random" and got is not None:
        assert ((got > -32767) & (got < 32767)).mean() > 0.3  # the requantization is not all clamps


@pytest.mark.parametrize("target_name", ["vnni", "avx2", "avxvnni"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_pv_int16_probabilities_int32_exact(rng, target_name, pattern):
    """``P V``: int16 probabilities (rows summing to 2**15, ``a_row_sum``) x int16 V over K = 128,
    int32 accumulation proven by the row sum; V at its extremes too."""
    p = probabilities(rng, (2, 3, 24, 128), pattern)
    v = activations(rng, (2, 3, 128, 32), "int16", "alternating" if pattern == "max" else pattern)
    check_matmul(p, v, target_name, multiplier=(1 << 30) + 777, shift=46, qmin=-32767, qmax=32767, out_dtype="int16",
                 a_row_sum=32832)


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("dtypes", [("uint8", "int8"), ("int8", "int8"), ("int8", "int16"), ("uint8", "uint8")])
def test_8bit_operands_widened_exact(rng, target_name, dtypes):
    a = activations(rng, (1, 2, 8, 64), dtypes[0], "alternating")
    b = activations(rng, (1, 2, 64, 32), dtypes[1], "random")
    check_matmul(a, b, target_name, multiplier=(1 << 30) + 99, shift=44 if "int16" in dtypes else 36, qmin=-128,
                 qmax=127, out_dtype="int8")


@pytest.mark.parametrize("case", [
    ((1, 2, 8, 32), (1, 2, 32, 20), {}),                  # N = 20: no whole vector of columns
    ((1, 2, 8, 31), (1, 2, 31, 32), {}),                  # K odd: no whole int16 pair
    ((2, 3, 8, 32), (1, 3, 32, 32), {}),                  # broadcast batch
    ((8, 32), (32, 32), {}),                              # plain 2-D
    ((1, 2, 8, 512), (1, 2, 512, 32), {"acc_bits": 64}),  # K = 512: the split halves could leave int32
])
def test_shapes_the_rule_leaves_to_the_plain_kernel(rng, case):
    a_shape, b_shape, extra = case
    a = activations(rng, a_shape, "int16", "random")
    b = activations(rng, b_shape, "int16", "random")
    params = {"multiplier": (1 << 20) + 5, "shift": 40, "qmin": -32767, "qmax": 32767, "out_dtype": "int16",
              "acc_bits": 64, **extra}
    check_matmul(a, b, "vnni", tensorized=False, **params)


# ------------------------------------------------------------------------- dense, int64 accumulation

@pytest.mark.parametrize("target_name", ["vnni", "avx2", "avxvnni"])
@pytest.mark.parametrize("pattern", ["min", "random", "alternating"])
def test_int64_dense_with_small_weight_sums_is_tensorized_and_exact(rng, target_name, pattern):
    """MiniLM's FFN output: int16 x int8 over K = 1536 needs ``acc_bits=64`` by dtypes alone, yet
    its weights bound every sum below 2**31; the packed kernel sums in int32 and must equal the
    int64 op. Weight sums right at the limit (2**31 - 1) // 32768, so the extremes reach it."""
    k, n = 1536, 40
    x = activations(rng, (2, 3, k), "int16", pattern)
    w = weights_with_row_sums(rng, n, k, (2**31 - 1) // 32768)
    bias, mult, shift = requant_consts(rng, n, 31 - 7)
    mult = mult >> 4  # the int64 path's shorter mantissa (quant/accumulator.py)
    info, asm = check_kernel("dense_requant", x, [w, bias, mult, shift], target_name, qmin=-32767, qmax=32767,
                             out_dtype="int16", acc_bits=64)
    assert info is not None and info["rule"] == "DenseTensorized"
    assert ("vpdpwssd" if target_name == "vnni" else "vpmaddwd") in asm


def test_int64_dense_whose_weights_could_overflow_int32_keeps_the_plain_kernel(rng):
    """Full-range weights over K = 1536: ``32768 * sum|w|`` passes 2**31, so the call keeps the
    chunked int64 kernel (exact either way); one channel over the bound is enough."""
    k, n = 1536, 16
    x = activations(rng, (4, k), "int16", "alternating")
    w = weights_with_row_sums(rng, n, k, (2**31 - 1) // 32768)
    bias, mult, shift = requant_consts(rng, n, 31 - 7)
    w[5, :] = 127
    info, _ = check_kernel("dense_requant", x, [w, bias, mult >> 4, shift], "vnni", qmin=-32767, qmax=32767,
                           out_dtype="int16", acc_bits=64)
    assert info is None


@pytest.mark.parametrize("rows", [1, 7, 128, 256 + 12])
def test_dense_row_blocks_at_odd_row_counts(rng, rows):
    """Row counts that are not a multiple of the row tile or of the row block."""
    x = activations(rng, (rows, 384), "int16", "random")
    w = rng.integers(-127, 128, (48, 384)).astype(np.int8)
    info, _ = check_kernel("dense_requant", x, [w, *requant_consts(rng, 48, 22)], "vnni", qmin=-32767, qmax=32767,
                           out_dtype="int16")
    assert info is not None


# ---------------------------------------------------------------------------------- GELU, softmax

def every_value(dtype, shape, rng):
    """A tensor of ``shape`` holding every value of ``dtype`` (then random ones), shuffled."""
    info = np.iinfo(dtype)
    size = int(np.prod(shape))
    values = np.arange(info.min, info.max + 1)
    flat = np.concatenate([values, rng.integers(info.min, info.max + 1, size - values.size)])
    return rng.permutation(flat).astype(dtype).reshape(shape)


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("variant", ["ivit", "ibert", "division-free"])
def test_gelu_table_covers_every_input_value(rng, target_name, variant):
    """GeluTable evaluates the op once per int16 value at build time and the kernel gathers: every
    value is in the input, so every table entry is compared with the twin."""
    x = every_value("int16", (1, 128, 1536), rng)
    gelu = OPS["gelu_int"]
    func, _ = gelu.prim_func([(x.shape, "int16")], variant=variant, **MINILM_GELU)
    assert GeluTable().pack(func, TARGETS[target_name]) is not None
    got, ref, _ = run_module("gelu_int", [x], target_name, variant=variant, **MINILM_GELU)
    if got is not None:
        assert_bit_exact(got, ref, f"gelu_int {variant} table on {target_name}")


def test_gelu_table_is_appended_to_the_call_and_equals_the_twin(rng):
    """The table is a build-time constant appended to the kernel's arguments (the route the
    per-kernel check takes: packing.pack_call_args); entry ``v - min`` is the twin's output at
    ``v``, for every int16 value."""
    x = every_value("int16", (1, 64, 1024), rng)
    func, _ = OPS["gelu_int"].prim_func([(x.shape, "int16")], variant="ivit", **MINILM_GELU)
    args = pack_call_args([x], GeluTable().pack(func, TARGETS["vnni"]))
    assert len(args) == 2 and args[0] is x and args[1].shape == (65536,)
    assert_bit_exact(args[1][x.astype(np.int64) + 32768], OPS["gelu_int"].reference(x, variant="ivit", **MINILM_GELU),
                     "gelu_int table entries")


def test_gelu_table_int8_and_the_small_tensor_left_to_the_row_rule(rng):
    """int8 input: a 256-entry table; an int16 tensor with fewer elements than 1/16 of the
    table's entries is scheduled row-parallel instead (the table would weigh more in the artifact
    than the tensor it maps) -- both exact."""
    params = {**MINILM_GELU, "in_scale": 0.05, "out_scale": 0.05, "qmin": -127, "qmax": 127, "out_dtype": "int8"}
    x8 = every_value("int8", (4, 384), rng)
    host = "vnni" if host_runs(TARGETS["vnni"]) else "avx2"   # the rules are ISA-independent here
    got, ref, _ = run_module("gelu_int", [x8], host, variant="ivit", **params)
    assert_bit_exact(got, ref, "gelu_int int8 table")
    small = every_value("int16", (2, 65536), rng)[:, :2000]
    func, _ = OPS["gelu_int"].prim_func([(small.shape, "int16")], variant="ivit", **MINILM_GELU)
    assert GeluTable().pack(func, TARGETS["vnni"]) is None
    got, ref, _ = run_module("gelu_int", [small], host, variant="ivit", **MINILM_GELU)
    assert_bit_exact(got, ref, "gelu_int int16 rows")


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("variant", ["ivit", "ibert", "division-free"])
@pytest.mark.parametrize("pattern", ["random", "alternating"])
def test_softmax_rows_parallel_bit_exact(rng, target_name, variant, pattern):
    x = activations(rng, (2, 3, 16, 40), "int16", pattern)
    params = {"in_scale": 0.0034, "n": 14, "variant": variant, "exp_poly": 2, "out_dtype": "int16"}
    func, _ = OPS["softmax_int"].prim_func([(x.shape, "int16")], **params)
    assert SoftmaxRowsParallel().apply(func, TARGETS[target_name]) is not None
    got, ref, _ = run_module("softmax_int", [x], target_name, **params)
    if got is not None:
        assert_bit_exact(got, ref, f"softmax_int {variant} {pattern} on {target_name}")


