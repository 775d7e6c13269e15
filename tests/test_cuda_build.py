"""CUDA build checks that need no GPU (schedules, PTX contents, verifiers), and GPU runs that do.

Without a GPU: every integer kernel shape the ``__dp4a`` rules take builds for sm_75 / sm_80 /
sm_90 and its PTX holds ``dp4a``; whole models (digits CNN, a small dense model) build, pass the
integer-only checker and TVM's GPU verifier. With a GPU (``tvm.cuda().exist``): the kernels run
bit-exact against their NumPy twins.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx_builders import OnnxGraph
from tvm.script import tirx as T

from qplugin_zoo import digits_split
from qplugin_zoo.digits import digits_cnn_onnx
from tvm_qplugin.build_cuda import (
    build_cuda,
    cuda_target,
    find_nvcc,
    verify_gpu_kernels,
)
from tvm_qplugin.compiler import CompileOptions, integer_front
from tvm_qplugin.errors import TargetError
from tvm_qplugin.ops import OPS
from tvm_qplugin.passes.verify_tir import scan_kernel
from tvm_qplugin.schedules.cuda_int8 import RULES

ARCHS = ("sm_75", "sm_80", "sm_90")  # nvidia-t4, nvidia-a100, nvidia-h100
REQUANT = {"qmin": -128, "qmax": 127, "out_dtype": "int8"}
PER_CHANNEL = lambda n: [((n,), "int32"), ((n,), "int64"), ((n,), "int64")]
# (op, argument types, params): one kernel of each shape family the dp4a rules take
DP4A_KERNELS = {
    "dense_u8s8": ("dense_requant", [((16, 64), "uint8"), ((32, 64), "int8"), *PER_CHANNEL(32)], REQUANT),
    "dense_s8s8_3d": ("dense_requant", [((1, 12, 40), "int8"), ((24, 40), "int8"), *PER_CHANNEL(24)], REQUANT),
    "matmul_s8s8_batched": ("matmul_requant", [((2, 16, 64), "int8"), ((2, 64, 24), "int8")],
                            dict(multiplier=3, shift=9, **REQUANT)),
    "conv3x3_pad_u8s8": ("conv2d_requant", [((1, 8, 10, 10), "uint8"), ((16, 8, 3, 3), "int8"), *PER_CHANNEL(16)],
                         dict(strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=1, **REQUANT)),
    "conv1x1_s2_s8s8": ("conv2d_requant", [((2, 16, 8, 8), "int8"), ((8, 16, 1, 1), "int8"), *PER_CHANNEL(8)],
                        dict(strides=[2, 2], padding=[0, 0, 0, 0], dilation=[1, 1], groups=1, **REQUANT)),
}
# kernels the dp4a rules must leave to dlight's fallback (no 8-bit operand pair, or no K % 4)
FALLBACK_KERNELS = {
    "dense_int16": ("dense_requant", [((4, 64), "int16"), ((8, 64), "int8"), *PER_CHANNEL(8)], REQUANT),
    "conv_depthwise": ("conv2d_requant", [((1, 8, 6, 6), "int8"), ((8, 1, 3, 3), "int8"), *PER_CHANNEL(8)],
                       dict(strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=8, **REQUANT)),
    "conv_c3": ("conv2d_requant", [((1, 3, 6, 6), "uint8"), ((8, 3, 3, 3), "int8"), *PER_CHANNEL(8)],
                dict(strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=1, **REQUANT)),
}


def kernel(case: dict, name: str) -> tvm.tirx.PrimFunc:
    op, args, params = case[name]
    return OPS[op].prim_func(args, **params)[0]


def cuda_scheduled(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tvm.tirx.PrimFunc | None:
    return next((new for rule in RULES if (new := rule.apply(func, target)) is not None), None)


def kernel_ptx(func: tvm.tirx.PrimFunc, name: str, arch: str) -> str:
    from tvm.support import nvcc

    target = cuda_target(arch)
    with target:
        built = tvm.tirx.build(func.with_attr("global_symbol", name), target=target)
        return nvcc.compile_cuda(built.imports[0].inspect_source(), target_format="ptx", arch=arch,
                                 compiler="nvcc").decode()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(DP4A_KERNELS))
def test_dp4a_rule_takes_the_kernel_and_its_ptx_uses_dp4a(name, arch):
    func = cuda_scheduled(kernel(DP4A_KERNELS, name), cuda_target(arch))
    assert func is not None, f"no CUDA rule took {name}"
    assert not scan_kernel(func, name), "the scheduled kernel must stay integer-only"
    assert verify_gpu_kernels(tvm.IRModule({name: func})) == []
    # the PTX instruction's operand signedness must be the kernel's: u8 read as s8 would be wrong
    a_dtype, b_dtype = (dtype for _, dtype in DP4A_KERNELS[name][1][:2])
    sign = {"uint8": "u32", "int8": "s32"}
    assert f"dp4a.{sign[a_dtype]}.{sign[b_dtype]}" in kernel_ptx(func, name, arch)


@pytest.mark.parametrize("name", sorted(FALLBACK_KERNELS))
def test_kernels_without_8bit_dp4a_operands_are_left_to_the_fallback(name):
    assert cuda_scheduled(kernel(FALLBACK_KERNELS, name), cuda_target("sm_80")) is None


def test_cuda_rules_refuse_a_cpu_target():
    func = kernel(DP4A_KERNELS, "dense_u8s8")
    assert all(rule.apply(func, tvm.target.Target("llvm")) is None for rule in RULES)


@T.prim_func(s_tir=True)
def dp4a_call(A: T.Buffer((4,), "int8"), B: T.Buffer((4,), "int8"), C: T.Buffer((1,), "int32")):
    C[0] = T.call_pure_extern("int32", "__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0))


@T.prim_func(s_tir=True)
def vadd4_call(A: T.Buffer((4,), "int8"), B: T.Buffer((4,), "int8"), C: T.Buffer((1,), "int32")):
    C[0] = T.call_pure_extern("int32", "__vadd4", A.vload([0], "int8x4"), B.vload([0], "int8x4"))


def test_integer_checker_accepts_dp4a_and_still_refuses_other_externs():
    assert scan_kernel(dp4a_call, "k") == []
    found = scan_kernel(vadd4_call, "k")
    assert len(found) == 1 and "__vadd4" in found[0].construct


@T.prim_func(s_tir=True)
def too_many_threads(A: T.Buffer((4096,), "int32")):
    for i in T.thread_binding(4096, thread="threadIdx.x"):
        with T.sblock("a"):
            v = T.axis.spatial(4096, i)
            A[v] = 1


def test_gpu_verifier_refuses_a_block_over_1024_threads():
    mod = tvm.IRModule({"too_many_threads": too_many_threads})
    assert verify_gpu_kernels(mod) == ["too_many_threads"]


def test_unsupported_arch_and_missing_nvcc_are_one_line_target_errors(monkeypatch):
    with pytest.raises(TargetError, match="sm_70"):
        cuda_target("sm_70")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TargetError, match="CUDA toolkit"):
        find_nvcc()


def small_dense_onnx(path) -> str:
    g = OnnxGraph((1, 32))
    h = g.relu(g.gemm("x", 64))
    return str(g.save(g.gemm(h, 16), path / "dense.onnx"))


@pytest.fixture(scope="module")
def integer_modules(tmp_path_factory):
    """Model name -> its integer module, front half built on first use."""
    x_train, *_ = digits_split()
    rng = np.random.default_rng(0)
    host = tvm.target.Target("llvm")
    fronts = {
        "digits_cnn": lambda: (str(digits_cnn_onnx()), {"input": x_train[:64]}),
        "small_dense": lambda: (small_dense_onnx(tmp_path_factory.mktemp("dense")),
                                {"x": rng.standard_normal((64, 1, 32)).astype(np.float32)}),
    }
    built = {}

    def get(model):
        if model not in built:
            path, calib = fronts[model]()
            built[model] = integer_front(path, CompileOptions(), host, calib).imod.mod
        return built[model]
    return get


# the digits CNN's sm_75 build runs in make test through `compile --target nvidia-t4` (test_compile_cuda.py)
@pytest.mark.parametrize("arch", [pytest.param(a, marks=[] if a == "sm_80" else [pytest.mark.extended]) for a in ARCHS])
@pytest.mark.parametrize("model", [pytest.param("digits_cnn", marks=pytest.mark.extended), "small_dense"])
def test_model_builds_for_cuda_with_dp4a_hot_kernels_and_passes_the_checks(integer_modules, model, arch):
    built = build_cuda(integer_modules(model), arch)
    assert built.dp4a_kernels, "no kernel got the dp4a schedule"
    if model == "small_dense":
        assert len([k for k in built.dp4a_kernels if k.startswith("dense_requant")]) == 2
    for name in built.dp4a_kernels:
        assert "dp4a" in built.ptx_of(name), f"{name}: no dp4a in its PTX"
    assert built.integer_only.float_ops == [] and built.integer_only.tir_kernels > 0
    assert f".target {arch}" in built.ptx


needs_gpu = pytest.mark.skipif(not tvm.cuda().exist, reason="no CUDA GPU on this machine: the kernels are built "
                               "and checked above, running them bit-exact needs a GPU")


def extreme_inputs(args, rng):
    """Random values per dtype with each dtype's extremes planted at the start."""
    out = []
    for shape, dtype in args:
        info = np.iinfo(dtype)
        hi = min(info.max, 2**20) if dtype in ("int32", "int64") else info.max
        lo = max(info.min, -(2**20)) if dtype in ("int32", "int64") else info.min
        a = rng.integers(lo, hi, size=shape, endpoint=True, dtype=dtype)
        a.reshape(-1)[:2] = (lo, hi)
        out.append(a)
    return out


def dp4a_gpu_case(name: str, target=None):
    """(scheduled kernel, inputs with the dtype extremes, the NumPy twin's output) for a GPU run:
    the test below, and tests/gpu_bundle.py for a GPU machine without TVM's compiler."""
    op, args, params = DP4A_KERNELS[name]
    func = cuda_scheduled(kernel(DP4A_KERNELS, name), target or cuda_target("sm_80"))
    rng = np.random.default_rng(1)
    inputs = extreme_inputs(args, rng)
    if op != "matmul_requant":  # multiplier in [1, 2**15], shift in [8, 24]: a plausible dyadic scale
        inputs[-2] = rng.integers(1, 2**15, size=inputs[-2].shape).astype(np.int64)
        inputs[-1] = rng.integers(8, 24, size=inputs[-1].shape).astype(np.int64)
    return func, inputs, OPS[op].reference(*inputs, **params)


def assert_bit_exact_on_gpu(func: tvm.tirx.PrimFunc, name: str, inputs: list, expected: np.ndarray) -> None:
    """Build ``func`` for this machine's GPU, run it on ``inputs``, compare with ``expected`` bit
    for bit: the body of every ``*_bit_exact_on_gpu`` test."""
    built = tvm.tirx.build(func.with_attr("global_symbol", name), target=tvm.target.Target.from_device(tvm.cuda()))
    dev = tvm.cuda()
    out = tvm.runtime.tensor(np.zeros(expected.shape, expected.dtype), dev)
    built[name](*[tvm.runtime.tensor(a, dev) for a in inputs], out)
    np.testing.assert_array_equal(out.numpy(), expected)


def gpu_cases(arch: str) -> dict:
    """Every dp4a kernel case, scheduled for ``arch`` (tests/gpu_bundle.py)."""
    return {name: dp4a_gpu_case(name, cuda_target(arch)) for name in sorted(DP4A_KERNELS)}


@needs_gpu
@pytest.mark.parametrize("name", sorted(DP4A_KERNELS))
def test_dp4a_kernel_bit_exact_on_gpu(name, monkeypatch):
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    func, inputs, expected = dp4a_gpu_case(name)
    assert_bit_exact_on_gpu(func, name, inputs, expected)
