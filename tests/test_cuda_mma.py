"""The int8 tensor-core kernels (schedules/cuda_mma.py): checks without a GPU, bit-exact runs with one.

Without a GPU, for sm_80 and sm_90: the rule takes each GEMM shape family (dense, batched matmul,
1x1 conv; odd sizes padded in the kernel), the kernel stays integer-only, TVM's GPU verifier
passes, and its PTX holds ``mma.sync.aligned.m16n8k32`` with the kernel's operand signedness;
the shapes it declines stay with the dp4a rules. With a GPU of sm_80 or newer
(``tvm.cuda().exist``): each kernel bit-exact against the op's NumPy twin, on random values with
the dtype extremes planted and on operands that are nothing but extremes.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx_builders import OnnxGraph
from test_cuda_build import (
    PER_CHANNEL,
    REQUANT,
    assert_bit_exact_on_gpu,
    cuda_scheduled,
    extreme_inputs,
    kernel,
    kernel_ptx,
)
from tvm.script import tirx as T

from tvm_qplugin.build_cuda import build_cuda, cuda_target, verify_gpu_kernels
from tvm_qplugin.compiler import CompileOptions, integer_front
from tvm_qplugin.ops import OPS
from tvm_qplugin.passes.verify_tir import scan_kernel
from tvm_qplugin.schedules.cuda_int8 import apply_cuda_schedules
from tvm_qplugin.schedules.cuda_mma import MMA_ARCHS, MMA_RULES, is_mma_kernel

ARCHS = ("sm_80", "sm_90")  # nvidia-a100, nvidia-h100 (sm_75 keeps dp4a: its s8 MMA is m8n8k16)
POINTWISE = {"strides": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1}
# (op, argument types, params): each GEMM family, sizes that tile and sizes that do not, and each
# tile copy (int32 words along k: K % 4 == 0; words along n of a k-major B: N % 4 == 0; bytes)
MMA_KERNELS = {
    "dense_u8s8_m100_n40": ("dense_requant", [((100, 64), "uint8"), ((40, 64), "int8"), *PER_CHANNEL(40)], REQUANT),
    "dense_s8s8_3d_k72_n30": ("dense_requant", [((2, 17, 72), "int8"), ((30, 72), "int8"), *PER_CHANNEL(30)], REQUANT),
    "dense_u8s8_k20_u8out": ("dense_requant", [((16, 20), "uint8"), ((8, 20), "int8"), *PER_CHANNEL(8)],
                             {"qmin": 0, "qmax": 255, "out_dtype": "uint8"}),
    "matmul_s8s8_batched": ("matmul_requant", [((2, 48, 80), "int8"), ((2, 80, 24), "int8")],
                            dict(multiplier=3, shift=9, **REQUANT)),
    "matmul_u8s8_odd": ("matmul_requant", [((3, 17, 33), "uint8"), ((3, 33, 9), "int8")],
                        dict(multiplier=5, shift=11, **REQUANT)),
    "conv1x1_u8s8_7x7": ("conv2d_requant", [((1, 32, 7, 7), "uint8"), ((64, 32, 1, 1), "int8"), *PER_CHANNEL(64)],
                         dict(POINTWISE, **REQUANT)),
    "conv1x1_s8s8_14x14_96to24": ("conv2d_requant", [((1, 96, 14, 14), "int8"), ((24, 96, 1, 1), "int8"),
                                                     *PER_CHANNEL(24)], dict(POINTWISE, **REQUANT)),
    "conv1x1_s8s8_b2_k24": ("conv2d_requant", [((2, 24, 5, 5), "int8"), ((16, 24, 1, 1), "int8"), *PER_CHANNEL(16)],
                            dict(POINTWISE, **REQUANT)),
}
# 8-bit GEMMs cuda_mma declines and the dp4a rules take
DP4A_ONLY = {
    "dense_batch1": ("dense_requant", [((1, 64), "uint8"), ((32, 64), "int8"), *PER_CHANNEL(32)], REQUANT),
    "conv3x3": ("conv2d_requant", [((1, 8, 10, 10), "uint8"), ((16, 8, 3, 3), "int8"), *PER_CHANNEL(16)],
                dict(POINTWISE, padding=[1, 1, 1, 1], **REQUANT)),
    "conv1x1_stride2": ("conv2d_requant", [((2, 16, 8, 8), "int8"), ((32, 16, 1, 1), "int8"), *PER_CHANNEL(32)],
                        dict(POINTWISE, strides=[2, 2], **REQUANT)),
}
SIGN = {"uint8": "u8", "int8": "s8"}


def mma_scheduled(name: str, arch: str, table=MMA_KERNELS):
    return next((new for rule in MMA_RULES if (new := rule.apply(kernel(table, name), cuda_target(arch))) is not None),
                None)


def operand_types(name: str) -> tuple[str, str]:
    """mma's (A, B) element types: a conv's A is its weights (rows = output channels)."""
    op, args, _ = MMA_KERNELS[name]
    x, w = (SIGN[dtype] for _, dtype in args[:2])
    return (w, x) if op == "conv2d_requant" else (x, w)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(MMA_KERNELS))
def test_mma_rule_takes_the_kernel_and_its_ptx_uses_m16n8k32(name, arch):
    func = mma_scheduled(name, arch)
    assert func is not None and is_mma_kernel(func), f"cuda_mma did not take {name}"
    assert not scan_kernel(func, name), "the mma kernel must stay integer-only"
    assert verify_gpu_kernels(tvm.IRModule({name: func})) == []
    a, b = operand_types(name)
    ptx = kernel_ptx(func, name, arch)
    assert f"mma.sync.aligned.m16n8k32.row.col.s32.{a}.{b}.s32" in ptx, "operand signedness must be the kernel's"
    assert "dp4a" not in ptx


@pytest.mark.parametrize("name", sorted(DP4A_ONLY))
def test_declined_8bit_gemms_stay_with_dp4a(name):
    assert mma_scheduled(name, "sm_90", DP4A_ONLY) is None
    assert cuda_scheduled(kernel(DP4A_ONLY, name), cuda_target("sm_90")) is not None


def test_mma_rule_declines_sm75_int16_and_cpu_targets():
    assert mma_scheduled("dense_u8s8_m100_n40", "sm_75") is None  # T4: dp4a
    assert set(MMA_ARCHS) >= set(ARCHS)
    int16 = {"d": ("dense_requant", [((32, 64), "int16"), ((8, 64), "int8"), *PER_CHANNEL(8)], REQUANT)}
    assert mma_scheduled("d", "sm_90", int16) is None
    assert all(rule.apply(kernel(MMA_KERNELS, "matmul_s8s8_batched"), tvm.target.Target("llvm")) is None
               for rule in MMA_RULES)


def test_apply_cuda_schedules_puts_mma_ahead_of_dp4a_and_lists_only_dp4a_kernels():
    mod = tvm.IRModule({"mma_me": kernel(MMA_KERNELS, "dense_u8s8_m100_n40"),
                        "dp4a_me": kernel(DP4A_ONLY, "dense_batch1")})
    scheduled, dp4a = apply_cuda_schedules(mod, cuda_target("sm_90"))
    assert dp4a == ["dp4a_me"] and is_mma_kernel(scheduled["mma_me"])
    _, dp4a_t4 = apply_cuda_schedules(mod, cuda_target("sm_75"))
    assert sorted(dp4a_t4) == ["dp4a_me", "mma_me"]


@T.prim_func(s_tir=True)
def mma_of(A: T.Buffer((4,), "int32"), B: T.Buffer((2,), "int32"), C: T.Buffer((4,), "int32")):
    T.evaluate(T.ptx_legacy.mma("m16n8k32", "row", "col", "int8", "uint8", "int32", A.data, 0, B.data, 0, C.data, 0,
                                False, dtype="int32"))


@T.prim_func(s_tir=True)
def fp16_mma_in_int_registers(A: T.Buffer((4,), "int32"), B: T.Buffer((2,), "int32"), C: T.Buffer((4,), "int32")):
    T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "fp16", "fp16", "fp32", A.data, 0, B.data, 0, C.data, 0,
                                False, dtype="int32"))


def test_integer_checker_accepts_integer_mma_and_refuses_a_float_one():
    assert scan_kernel(mma_of, "k") == []
    found = scan_kernel(fp16_mma_in_int_registers, "k")
    assert len(found) == 1 and "ptx_legacy.mma" in found[0].construct and "fp16" in found[0].construct


@pytest.fixture(scope="module")
def dense_batch16_build(tmp_path_factory):
    """A two-dense model at batch 16 (rows enough for an m16 tile), built for sm_90."""
    path = tmp_path_factory.mktemp("dense16") / "dense16.onnx"
    g = OnnxGraph((16, 32))
    g.save(g.gemm(g.relu(g.gemm("x", 64)), 16), path)
    rng = np.random.default_rng(0)
    imod = integer_front(str(path), CompileOptions(), tvm.target.Target("llvm"),
                         {"x": rng.standard_normal((64, 32)).astype(np.float32)}).imod
    return build_cuda(imod.mod, "sm_90")


def test_model_build_lists_mma_kernels_and_exports(dense_batch16_build, tmp_path):
    built = dense_batch16_build
    assert len([k for k in built.mma_kernels if k.startswith("dense_requant")]) == 2, built.mma_kernels
    assert not set(built.mma_kernels) & set(built.dp4a_kernels)
    for name in built.mma_kernels:
        assert "mma.sync.aligned.m16n8k32" in built.ptx_of(name), f"{name}: no mma in its PTX"
    assert built.integer_only.float_ops == []
    built.executable.export_library(str(tmp_path / "model.so"))  # what the GPU machine loads
    assert (tmp_path / "model.so").stat().st_size > 0


needs_mma_gpu = pytest.mark.skipif(
    not tvm.cuda().exist or f"sm_{tvm.cuda().compute_version.replace('.', '')}" not in MMA_ARCHS,
    reason="no CUDA GPU of sm_80 or newer on this machine: the mma kernels are built and checked above, "
           "running them bit-exact needs one")


def mma_gpu_case(name: str, extremes_only: bool, target):
    """(mma kernel for ``target``, inputs, the NumPy twin's output): the GPU test below, and
    tests/gpu_bundle.py for a GPU machine without TVM's compiler."""
    op, args, params = MMA_KERNELS[name]
    func = next(new for rule in MMA_RULES if (new := rule.apply(kernel(MMA_KERNELS, name), target)) is not None)
    rng = np.random.default_rng(2)
    inputs = extreme_inputs(args, rng)
    if extremes_only:  # every 8-bit operand at its dtype's min or max: the largest |accumulator|
        for n, (_, dtype) in enumerate(args[:2]):
            info = np.iinfo(dtype)
            inputs[n] = rng.choice(np.array([info.min, info.max], dtype), size=inputs[n].shape)
    if op != "matmul_requant":  # multiplier in [1, 2**15], shift in [8, 24]: a plausible dyadic scale
        inputs[-2] = rng.integers(1, 2**15, size=inputs[-2].shape).astype(np.int64)
        inputs[-1] = rng.integers(8, 24, size=inputs[-1].shape).astype(np.int64)
    return func, inputs, OPS[op].reference(*inputs, **params)


def gpu_cases(arch: str) -> dict:
    """Every mma kernel case for ``arch`` (tests/gpu_bundle.py); none below sm_80."""
    if arch not in MMA_ARCHS:
        return {}
    return {f"{fill}-{name}": mma_gpu_case(name, fill == "extremes", cuda_target(arch))
            for name in sorted(MMA_KERNELS) for fill in ("random", "extremes")}


@needs_mma_gpu
@pytest.mark.parametrize("extremes_only", [False, True], ids=["random", "extremes"])
@pytest.mark.parametrize("name", sorted(MMA_KERNELS))
def test_mma_kernel_bit_exact_on_gpu(name, extremes_only, monkeypatch):
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    func, inputs, expected = mma_gpu_case(name, extremes_only, tvm.target.Target.from_device(tvm.cuda()))
    assert_bit_exact_on_gpu(func, name, inputs, expected)


def test_report_names_mma_layers_cuda_mma(dense_batch16_build):
    from tvm_qplugin import report
    from tvm_qplugin.targets import get_board

    built = dense_batch16_build
    kernels = [*built.mma_kernels, *built.dp4a_kernels, "some_fallback_kernel"]
    r = {"layers": [{} for _ in kernels]}
    report.record_cuda(r, built, get_board("nvidia-h100"), kernels, None)
    sources = [layer["kernel"]["source"] for layer in r["layers"]]
    assert sources == ["cuda-mma"] * len(built.mma_kernels) + ["cuda-dp4a"] * len(built.dp4a_kernels) + ["cuda-default"]
    assert r["cuda"]["mma_kernels"] == sorted(built.mma_kernels) and r["cuda"]["arch"] == "sm_90"


def test_an_op_variant_with_an_unknown_param_is_declined():
    """The GEMM reading (what the accumulator sums) was written for the ops' current params; a
    variant carrying another one (an input offset, say) must not be read as a plain GEMM."""
    import json

    from tvm_qplugin.ops.registry import PARAMS_ATTR, op_of

    func = kernel(MMA_KERNELS, "dense_u8s8_m100_n40")
    params = dict(op_of(func)[1], input_offset=128)
    variant = func.with_attr(PARAMS_ATTR, json.dumps(params, sort_keys=True))
    assert all(rule.apply(variant, cuda_target("sm_90")) is None for rule in MMA_RULES)
    assert all(rule.apply(func, cuda_target("sm_90")) is not None for rule in MMA_RULES)
