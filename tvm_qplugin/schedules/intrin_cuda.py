"""CUDA ``__dp4a`` tensor intrinsics, registered by us (light: no ``tvm.s_tir.tensor_intrin``).

Why our own: importing ``tvm.s_tir.tensor_intrin`` builds every target's TVMScript intrinsics
(CUDA MMA / WMMA, ROCm, ARM, Hexagon): 25-35 s of CPU on this machine, paid by every process that
schedules a CUDA kernel and by every pytest worker that collects a CUDA test. ``__dp4a`` needs four
lines of TIR.

One intrinsic per operand pair: ``C[0] += sum_{k<4} A[k] * B[k]`` with 8-bit ``A`` / ``B`` (signed
or unsigned, as ``__dp4a``'s overloads take them) and an int32 accumulator -- exact: four 16-bit
products cannot overflow 32 bits. The operands are read from shared memory, the accumulator
lives in registers (``local``), as :mod:`cuda_int8`'s GEMM stages them.
"""
from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

DP4A_DTYPES = {"int8": ("s8", "int8x4"), "uint8": ("u8", "uint8x4")}


def dp4a_intrin_name(a_dtype: str, b_dtype: str) -> str:
    """The registered name for these operand dtypes (int32 result), registering it on first use."""
    name = f"qplugin_dp4a_{DP4A_DTYPES[a_dtype][0]}{DP4A_DTYPES[b_dtype][0]}s32"
    if name not in _REGISTERED:
        TensorIntrin.register(name, *_dp4a_pair(a_dtype, b_dtype), override=True)
        _REGISTERED.add(name)
    return name


_REGISTERED: set[str] = set()


def _dp4a_pair(a_dtype: str, b_dtype: str):
    """(description, implementation): the four products as TIR, and the one ``__dp4a`` call."""
    a_vec, b_vec = DP4A_DTYPES[a_dtype][1], DP4A_DTYPES[b_dtype][1]

    @T.prim_func(s_tir=True)
    def description(a: T.Buffer((4,), a_dtype, offset_factor=1, align=4, scope="shared"),
                    b: T.Buffer((4,), b_dtype, offset_factor=1, align=4, scope="shared"),
                    c: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0], a[0:4], b[0:4])
            T.writes(c[0])
            for k in range(4):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    c[0] = c[0] + T.cast(a[vk], "int32") * T.cast(b[vk], "int32")

    @T.prim_func(s_tir=True)
    def implementation(a: T.Buffer((4,), a_dtype, offset_factor=1, align=4, scope="shared"),
                       b: T.Buffer((4,), b_dtype, offset_factor=1, align=4, scope="shared"),
                       c: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0], a[0:4], b[0:4])
            T.writes(c[0])
            c[0] = c[0] + T.call_pure_extern("__dp4a", a.vload([0], a_vec), b.vload([0], b_vec), T.int32(0),
                                             dtype="int32")

    return description, implementation
