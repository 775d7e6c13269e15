"""The int16 GPU GEMM (schedules/cuda_int16.py): register-tiled dense / matmul with an int16 operand.

Without a GPU: the rule takes the digits ViT's and MiniLM's int16 dense / attention matmul kernels
(single kernels of their shapes, the chunked int64 FFN down included), the scheduled kernels stay
integer-only, pass TVM's GPU verifier, and their PTX for sm_80 / sm_90 stages the operands through shared memory and holds the
unrolled register tile's multiply-adds; kernels whose accumulator could overflow, a ragged
chunked dense and 8-bit pairs are declined; the digits ViT's sm_90 build gives all its 12 GEMMs to
the rule and report.json names it. With a GPU: bit-exact against the NumPy twins, on random
inputs with the dtype extremes planted, on operands filled with the extremes (the largest
accumulators the overflow proof allows) and on small operands with an identity requant (each
output its exact sum); the requant is fitted so that no output saturates.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm
from test_cuda_build import (
    assert_bit_exact_on_gpu,
    extreme_inputs,
    kernel_ptx,
    needs_gpu,
)

from qplugin_zoo import digits_split
from tvm_qplugin.build_cuda import build_cuda, cuda_target, verify_gpu_kernels
from tvm_qplugin.compiler import CompileOptions, integer_front
from tvm_qplugin.ops import OPS, op_of
from tvm_qplugin.ops.conv import _exact_matmul
from tvm_qplugin.passes.verify_tir import scan_kernel
from tvm_qplugin.report import record_cuda
from tvm_qplugin.schedules.cuda_int8 import SCHEDULED_ATTR, apply_cuda_schedules
from tvm_qplugin.schedules.cuda_int16 import INT16_RULES, int16_gemm_kernels
from tvm_qplugin.targets import get_board

ARCHS = ("sm_80", "sm_90")  # nvidia-a100, nvidia-h100 (sm_75 builds the same PTX; test_cuda_build covers it)
PER_CHANNEL = lambda n: [((n,), "int32"), ((n,), "int64"), ((n,), "int64")]
S16 = {"qmin": -32767, "qmax": 32767, "out_dtype": "int16"}
ROW_SUM = 32776  # the digits ViT's softmax row-sum bound (P V), as integer_front sets it
# name -> (op, argument types, params, PTX multiply instruction of the register tile, its least count)
# s16 x s8 in int32 (dense, matmul): nvcc pairs two k steps into dp2a (an int16 pair times two int8 weights);
# P V s16 x s16 in int32: mad.lo.s32; Q Kᵀ in int64: mul.wide.s32 (then add.s64)
INT16_KERNELS = {
    "vit_dense_16x32x64": ("dense_requant", [((1, 16, 32), "int16"), ((64, 32), "int8"), *PER_CHANNEL(64)], S16,
                           "dp2a", 16),
    "vit_head_1x32x10": ("dense_requant", [((1, 32), "int16"), ((10, 32), "int8"), *PER_CHANNEL(10)],
                         {"qmin": -8388607, "qmax": 8388607, "out_dtype": "int32"}, "dp2a", 2),
    "vit_qk_acc64": ("matmul_requant", [((1, 2, 16, 16), "int16"), ((1, 2, 16, 16), "int16")],
                     dict(acc_bits=64, multiplier=100980030, shift=43, **S16), "mul.wide.s32", 16),
    "vit_pv_row_sum": ("matmul_requant", [((1, 2, 16, 16), "int16"), ((1, 2, 16, 16), "int16")],
                       dict(a_row_sum=ROW_SUM, multiplier=1307172735, shift=45, **S16), "mad.lo.s32", 16),
    "minilm_ffn_up_384x1536": ("dense_requant", [((8, 128, 384), "int16"), ((1536, 384), "int8"),
                                                 *PER_CHANNEL(1536)], S16, "dp2a", 16),
    "minilm_ffn_down_chunked": ("dense_requant", [((8, 128, 1536), "int16"), ((384, 1536), "int8"),
                                                  *PER_CHANNEL(384)], dict(acc_bits=64, **S16), "dp2a", 16),
    "minilm_qk_acc64": ("matmul_requant", [((8, 12, 128, 32), "int16"), ((8, 12, 32, 128), "int16")],
                        dict(acc_bits=64, multiplier=47160347, shift=42, **S16), "mul.wide.s32", 16),
    "minilm_pv_row_sum": ("matmul_requant", [((8, 12, 128, 128), "int16"), ((8, 12, 128, 32), "int16")],
                          dict(a_row_sum=32832, multiplier=1121529240, shift=45, **S16), "mad.lo.s32", 16),
    "matmul_s16s8_broadcast": ("matmul_requant", [((2, 8, 24), "int16"), ((24, 12), "int8")],
                               dict(multiplier=3, shift=9, **S16), "dp2a", 16),
}
# kernels the rule must decline: int32 accumulator that K could overflow (600 * 32768 * 128 >= 2**31),
# a chunked int64 dense whose last chunk is ragged (K 1031 prime: chunked_dot pads it), an 8-bit pair (dp4a's)
DECLINED_KERNELS = {
    "dense_s16s8_k600_acc32": ("dense_requant", [((4, 600), "int16"), ((8, 600), "int8"), *PER_CHANNEL(8)], S16),
    "dense_chunked_ragged_k1031": ("dense_requant", [((4, 1031), "int16"), ((8, 1031), "int8"), *PER_CHANNEL(8)],
                                   dict(acc_bits=64, **S16)),
    "dense_u8s8": ("dense_requant", [((16, 64), "uint8"), ((32, 64), "int8"), *PER_CHANNEL(32)],
                   {"qmin": -128, "qmax": 127, "out_dtype": "int8"}),
}


def kernel(case: dict, name: str) -> tvm.tirx.PrimFunc:
    op, args, params = case[name][:3]
    return OPS[op].prim_func(args, **params)[0]


def int16_scheduled(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.tirx.PrimFunc | None:
    return next((new for rule in INT16_RULES if (new := rule.apply(func, target)) is not None), None)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(INT16_KERNELS))
def test_int16_rule_takes_the_kernel_with_shared_tiles_and_a_register_tile(name, arch):
    func = int16_scheduled(kernel(INT16_KERNELS, name), cuda_target(arch))
    assert func is not None, f"the int16 GEMM rule declined {name}"
    assert not scan_kernel(func, name), "the scheduled kernel must stay integer-only"
    assert verify_gpu_kernels(tvm.IRModule({name: func})) == []
    ptx = kernel_ptx(func, name, arch)
    assert "ld.shared" in ptx and "st.shared" in ptx and "bar.sync" in ptx, "operands not staged in shared memory"
    instr, least = INT16_KERNELS[name][3:]
    assert ptx.count(instr) >= least, f"{instr} x {ptx.count(instr)} < {least}: the register tile is not unrolled"


@pytest.mark.parametrize("name", ["vit_dense_16x32x64", "minilm_ffn_up_384x1536"])
def test_int8_weight_pairs_reach_dp2a_without_byte_shuffles(name):
    """The weight tile's k pairs are adjacent (cuda_int16._b_tile_layout): four columns' pairs are
    one 64-bit shared load, no ``prmt`` byte permutes (a plain k-major tile needed four per step)."""
    ptx = kernel_ptx(int16_scheduled(kernel(INT16_KERNELS, name), cuda_target("sm_90")), name, "sm_90")
    assert "ld.shared.v4.u16" in ptx and "prmt" not in ptx


@pytest.mark.parametrize("name", sorted(DECLINED_KERNELS))
def test_kernels_the_int16_gemm_cannot_prove_exact_are_declined(name):
    assert int16_scheduled(kernel(DECLINED_KERNELS, name), cuda_target("sm_80")) is None


def test_int16_rule_refuses_a_cpu_target():
    assert int16_scheduled(kernel(INT16_KERNELS, "vit_dense_16x32x64"), tvm.target.Target("llvm")) is None


def test_apply_cuda_schedules_lists_dp4a_and_int16_kernels_apart_and_leaves_declined_ones_to_the_fallback():
    mod = tvm.IRModule({"dense_s16": kernel(INT16_KERNELS, "vit_dense_16x32x64"),
                        "dense_u8": kernel(DECLINED_KERNELS, "dense_u8s8"),
                        "dense_k600": kernel(DECLINED_KERNELS, "dense_s16s8_k600_acc32")})
    # sm_75: no tensor-core rule there, so the 8-bit dense is dp4a's (on sm_80+ cuda_mma takes it)
    scheduled, taken = apply_cuda_schedules(mod, cuda_target("sm_75"))
    assert taken == ["dense_u8"]  # CudaBuild.dp4a_kernels: every listed kernel holds dp4a
    assert int16_gemm_kernels(scheduled) == ["dense_s16"]
    assert scheduled["dense_k600"].attrs is None or SCHEDULED_ATTR not in scheduled["dense_k600"].attrs


VIT = Path(__file__).resolve().parents[1] / "examples" / "digits_vit.onnx"


@pytest.fixture(scope="module")
def digits_vit_sm90():
    """The digits ViT's integer module and its sm_90 build (~10-20 s)."""
    x_train, *_ = digits_split()
    mod = integer_front(str(VIT), CompileOptions(), tvm.target.Target("llvm"), {"input": x_train[:64]}).imod.mod
    return mod, build_cuda(mod, "sm_90")


# extended: test_cuda_rows.py's digits ViT sm_80 build runs this rule on the whole model in make test
@pytest.mark.extended
def test_digits_vit_gemms_all_take_the_int16_rule_and_the_report_names_it(digits_vit_sm90):
    mod, built = digits_vit_sm90
    gemms = sorted(gv.name_hint for gv, f in mod.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc) and (op_of(f) or ("",))[0] in ("dense_requant", "matmul_requant"))
    assert len(gemms) == 12 and built.int16_gemm_kernels == gemms  # 4 dense, 4 Q Kᵀ, 4 P V
    assert built.dp4a_kernels == []
    for name in gemms:
        assert "ld.shared" in built.ptx_of(name), f"{name}: not the shared-memory GEMM"
    r = {"layers": [{} for _ in gemms + ["layernorm_int"]], "bit_exact": True}
    record_cuda(r, built, get_board("nvidia-h100"), [*gemms, "layernorm_int"], None)
    assert [layer["kernel"]["source"] for layer in r["layers"]] == ["cuda-int16-gemm"] * 12 + ["cuda-default"]
    assert r["cuda"]["int16_gemm_kernels"] == gemms


def row_sum_bounded(shape, bound: int, rng) -> np.ndarray:
    """Non-negative int16 rows (softmax probabilities) whose sum stays within ``bound``; row 0
    holds the extreme 32767 (and the rest of the bound)."""
    a = rng.integers(0, 2**15, size=shape, dtype=np.int64)
    sums = np.maximum(a.sum(axis=-1, keepdims=True), 1)
    a = np.minimum(a * bound // sums, 32767)
    flat = a.reshape(-1, shape[-1])
    flat[0] = 0
    flat[0, :2] = (32767, min(bound - 32767, 32767))
    return a.astype(np.int16)


FILLS = ("random", "extreme", "small")
UNSATURATED = 2**14  # requant fitted so that |y| <= this: the outputs carry the sums, not the clamp


def fitted_shift(acc_max: int, multiplier: int) -> int:
    """The shift that brings ``acc_max * multiplier`` down to at most :data:`UNSATURATED`."""
    return max(0, (int(acc_max) * int(multiplier)).bit_length() - UNSATURATED.bit_length() + 1)


def gpu_case(name: str, fill: str, rng) -> tuple[list[np.ndarray], dict]:
    """Inputs and params for kernel ``name``. Operands: ``random`` (dtype extremes planted,
    test_cuda_build style), ``extreme`` (filled with their dtype's minimum against alternating-sign
    weights: the largest |acc| the overflow proof allows) or ``small`` (|values| <= 4 with an
    identity requant, so each output is its exact sum); a ``P V`` operand is row-sum bounded as
    the op's contract says. The requant (dense: per-channel inputs, matmul: params) is fitted to
    the exact sums so that no output saturates."""
    op, args, params = INT16_KERNELS[name][:3]
    inputs = extreme_inputs(args, rng)
    if fill == "extreme":
        inputs[0] = np.full(args[0][0], np.iinfo(args[0][1]).min, args[0][1])
        b = np.full(args[1][0], np.iinfo(args[1][1]).min, args[1][1])
        if op == "dense_requant":
            b[1::2] = np.iinfo(args[1][1]).max  # w[n, k]: alternate output channels
        else:
            b[..., 1::2] = np.iinfo(args[1][1]).max  # b[..., k, n]: alternate columns
        inputs[1] = b
    if fill == "small":
        inputs[:2] = [rng.integers(-4, 4, size=shape, endpoint=True).astype(dtype) for shape, dtype in args[:2]]
    if "a_row_sum" in params:  # small: |a| <= 4 keeps every row sum far below the bound
        inputs[0] = np.abs(inputs[0]) if fill == "small" else row_sum_bounded(args[0][0], params["a_row_sum"], rng)
    if op == "dense_requant":
        inputs[2] = inputs[2] // 2**12 if fill == "small" else inputs[2]
        acc = _exact_matmul(inputs[0], inputs[1].T) + inputs[2].astype(np.int64)
        per_channel = np.abs(acc).reshape(-1, acc.shape[-1]).max(axis=0)
        mult = np.ones(acc.shape[-1], np.int64) if fill == "small" else rng.integers(2**14, 2**15, size=acc.shape[-1])
        inputs[3] = mult.astype(np.int64)
        inputs[4] = np.array([0 if fill == "small" else fitted_shift(m, c) for m, c in zip(per_channel, mult)], np.int64)
        return inputs, params
    acc_max = np.abs(_exact_matmul(inputs[0], inputs[1])).max()
    mult = 1 if fill == "small" else 23456
    return inputs, dict(params, multiplier=mult, shift=0 if fill == "small" else fitted_shift(acc_max, mult))


def int16_gpu_case(name: str, fill: str, target):
    """(int16 GEMM kernel for ``target``, inputs, the NumPy twin's output): the GPU test below,
    and tests/gpu_bundle.py for a GPU machine without TVM's compiler."""
    op, args = INT16_KERNELS[name][:2]
    inputs, params = gpu_case(name, fill, np.random.default_rng(3))
    expected = OPS[op].reference(*inputs, **params)
    assert np.abs(expected).max() < params["qmax"], "the case saturates: it would not test the sums"
    return int16_scheduled(OPS[op].prim_func(args, **params)[0], target), inputs, expected


def gpu_cases(arch: str) -> dict:
    """Every int16 GEMM case for ``arch`` (tests/gpu_bundle.py)."""
    return {f"{fill}-{name}": int16_gpu_case(name, fill, cuda_target(arch))
            for name in sorted(INT16_KERNELS) for fill in FILLS}


@needs_gpu
@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("name", sorted(INT16_KERNELS))
def test_int16_gemm_kernel_bit_exact_on_gpu(name, fill, monkeypatch):
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    func, inputs, expected = int16_gpu_case(name, fill, cuda_target("sm_80"))
    assert_bit_exact_on_gpu(func, name, inputs, expected)
