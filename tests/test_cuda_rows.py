"""Row-parallel CUDA kernels (schedules/cuda_rows.py): softmax / LayerNorm, one block per row.

Without a GPU: the rules take the row kernels (rows shorter than a warp, a warp multiple, longer
than a block), the scheduled kernels stay integer-only, pass TVM's GPU verifier and build to PTX
with warp-shuffle reductions in seconds (LayerNorm through dlight's fallback did not finish:
module docstring of cuda_rows.py); the digits ViT builds for sm_80. With a GPU: bit-exact
against the NumPy twins.
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
from tvm_qplugin.ops.nonlinear import layernorm_int_args
from tvm_qplugin.passes.verify_tir import scan_kernel
from tvm_qplugin.quant import nonlinear_consts as nc
from tvm_qplugin.schedules.cuda_int8 import apply_cuda_schedules
from tvm_qplugin.schedules.cuda_rows import MAX_THREADS, ROW_RULES, threads_for


def softmax_case(shape, dtype="int8", variant="ivit", out_dtype="uint8"):
    scale = 0.05 if dtype == "int8" else 4e-4
    n = nc.choose_softmax_n(scale, None, shape[-1], variant)
    return "softmax_int", [(shape, dtype)], dict(in_scale=scale, n=n, variant=variant, out_dtype=out_dtype)


def layernorm_case(shape, dtype="int8", variant="ivit"):
    c = shape[-1]
    rng = np.random.default_rng(c)
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.uniform(-0.2, 0.2, c).astype(np.float32)
    mult, bias, params = layernorm_int_args(gamma, beta, in_scale=0.05 if dtype == "int8" else 4e-4, out_scale=0.03,
                                            eps=1e-5, in_dtype=dtype, c=c, qmin=-128, qmax=127, out_dtype="int8",
                                            variant=variant)
    return "layernorm_int", [(shape, dtype), ((c,), str(mult.dtype)), ((c,), str(bias.dtype))], params, (mult, bias)


# rows shorter than a warp (the digits ViT's 17 tokens), a warp multiple, longer than one block
ROW_KERNELS = {
    "softmax_17": softmax_case((4, 17, 17)),
    "softmax_128_int16": softmax_case((2, 128), "int16", "division-free", "int16"),
    "softmax_384_ibert": softmax_case((3, 384), "int8", "ibert"),
    "layernorm_17x64": layernorm_case((17, 64))[:3],
    "layernorm_384_int16_divfree": layernorm_case((2, 384), "int16", "division-free")[:3],
    "layernorm_32_ibert": layernorm_case((1, 5, 32), "int8", "ibert")[:3],
    "softmax_197_ivit_paper": ("softmax_int", [((2, 197), "int8")],
                               dict(in_scale=0.05, n=16, variant="ivit-paper", out_dtype="int8")),
    "shiftgelu_64_ivit_paper": ("gelu_int", [((3, 64), "int8")],  # subtracts the row max: a row kernel
                                dict(in_scale=0.05, out_scale=0.05 / 128, qmin=-2**31, qmax=2**31 - 1,
                                     out_dtype="int32", variant="ivit-paper")),
}
LAYERNORM_CONSTS = {"layernorm_17x64": layernorm_case((17, 64))[3],
                    "layernorm_384_int16_divfree": layernorm_case((2, 384), "int16", "division-free")[3],
                    "layernorm_32_ibert": layernorm_case((1, 5, 32), "int8", "ibert")[3]}


def row_kernel(name: str) -> tvm.tirx.PrimFunc:
    op, args, params = ROW_KERNELS[name]
    return OPS[op].prim_func(args, **params)[0]


def row_scheduled(func, target):
    return next((new for rule in ROW_RULES if (new := rule.apply(func, target)) is not None), None)


def test_threads_cover_the_row_in_whole_warps_up_to_the_block_limit():
    assert [threads_for(n) for n in (1, 17, 32, 33, 128, 384)] == [32, 32, 32, 64, 128, MAX_THREADS]


@pytest.mark.parametrize("name", sorted(ROW_KERNELS))
def test_row_rule_takes_the_kernel_and_builds_with_warp_reductions(name):
    func = row_scheduled(row_kernel(name), cuda_target("sm_80"))
    assert func is not None, f"no row rule took {name}"
    assert not scan_kernel(func, name), "the scheduled kernel must stay integer-only"
    assert verify_gpu_kernels(tvm.IRModule({name: func})) == []
    ptx = kernel_ptx(func, name, "sm_80")
    assert "shfl.sync" in ptx, "the row reductions must be warp shuffles"
    assert "%ctaid.x" in ptx and "%tid.x" in ptx


def test_elementwise_gelu_and_cpu_targets_are_not_the_row_rules():
    gelu = OPS["gelu_int"].prim_func([((17, 128), "int8")], in_scale=0.05, out_scale=0.05, qmin=-128, qmax=127,
                                     out_dtype="int8", variant="ivit")[0]
    assert row_scheduled(gelu, cuda_target("sm_80")) is None
    assert row_scheduled(row_kernel("layernorm_17x64"), tvm.target.Target("llvm")) is None


def test_apply_cuda_schedules_gives_layernorm_its_row_schedule_and_lists_only_dp4a_kernels():
    mod = tvm.IRModule({"layernorm_int": row_kernel("layernorm_17x64")})
    scheduled, taken = apply_cuda_schedules(mod, cuda_target("sm_80"))
    assert taken == []  # CudaBuild.dp4a_kernels: every listed kernel must hold dp4a
    assert scheduled["layernorm_int"].attrs["tirx.is_scheduled"]


def row_gpu_case(name: str, target=None):
    """(scheduled kernel, inputs with the dtype extremes, the NumPy twin's output) for a GPU run:
    the test below, and tests/gpu_bundle.py for a GPU machine without TVM's compiler."""
    op, args, params = ROW_KERNELS[name]
    inputs = extreme_inputs(args[:1], np.random.default_rng(2))
    if op == "layernorm_int":
        inputs += [np.asarray(a) for a in LAYERNORM_CONSTS[name]]
    expected = OPS[op].reference(*inputs, **params)
    return row_scheduled(row_kernel(name), target or cuda_target("sm_80")), inputs, expected


def gpu_cases(arch: str) -> dict:
    """Every row kernel case, scheduled for ``arch`` (tests/gpu_bundle.py)."""
    return {name: row_gpu_case(name, cuda_target(arch)) for name in sorted(ROW_KERNELS)}


@needs_gpu
@pytest.mark.parametrize("name", sorted(ROW_KERNELS))
def test_row_kernel_bit_exact_on_gpu(name, monkeypatch):
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    func, inputs, expected = row_gpu_case(name)
    assert_bit_exact_on_gpu(func, name, inputs, expected)


VIT = Path(__file__).resolve().parents[1] / "examples" / "digits_vit.onnx"


@pytest.fixture(scope="module")
def digits_vit_sm80():
    """The digits ViT's integer module built for sm_80 (~20 s; through the fallback it never ended)."""
    x_train, *_ = digits_split()
    mod = integer_front(str(VIT), CompileOptions(), tvm.target.Target("llvm"), {"input": x_train[:64]}).imod.mod
    return mod, build_cuda(mod, "sm_80")


def test_digits_vit_builds_for_sm80_with_row_kernels_and_passes_the_checks(digits_vit_sm80):
    mod, built = digits_vit_sm80
    rows = [gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and (op_of(f) or ("",))[0] in ("softmax_int", "layernorm_int")]
    assert len(rows) == 13, rows  # 4 softmax + 9 LayerNorm (2 per block, 1 final)
    for name in rows:
        assert "shfl.sync" in built.ptx_of(name), f"{name}: not the row-parallel kernel"
    assert built.integer_only.float_ops == [] and built.integer_only.tir_kernels > 0
    assert ".target sm_80" in built.ptx


@pytest.mark.extended
def test_minilm_encoder_builds_for_sm80_with_row_kernels():
    """MiniLM (batch 8, 128 tokens): 6 softmax + 13 LayerNorm row kernels, ~60 s to build."""
    from qplugin_zoo.minilm import fortune_sentences, minilm_onnx, tokenize

    mod = integer_front(str(minilm_onnx()), CompileOptions(), tvm.target.Target("llvm"),
                        tokenize(fortune_sentences(64))).imod.mod
    built = build_cuda(mod, "sm_80")
    rows = [gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and (op_of(f) or ("",))[0] in ("softmax_int", "layernorm_int")]
    assert len(rows) == 19, rows
    assert all("shfl.sync" in built.ptx_of(name) for name in rows)
    assert built.integer_only.float_ops == []
