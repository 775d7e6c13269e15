"""x86 integer dot-product tensor intrinsics, registered by us (light: no ``tvm.s_tir.tensor_intrin``).

Why our own: importing ``tvm.s_tir.tensor_intrin`` takes over a minute (it builds the CUDA
intrinsics), and its ``dot_16x4_vnni`` does not build on this LLVM (``vpdpbusd`` now takes
``<64 x i8>`` operands; ../shared/TVM_NOTES.md). AVX2 has no stock intrinsic at all.

Every intrinsic here is one instruction family on one accumulator vector of ``lanes`` int32:

    C[i] += sum_{k < kp} (A[.] + offset) * B[.]

with one operand *broadcast* (the same ``kp`` values for every lane) and the other *packed*
(``lanes x kp`` values, lane-major). Which operand is broadcast is the kernel's choice:

* ``bcast="a"`` (dense): a row of activations is broadcast against a packed weight tile
  ``[lanes, kp]`` -- the lanes are output channels.
* ``bcast="b"`` (conv, NCHW): a packed activation tile ``[lanes, kp]`` (lanes are output
  pixels) against one output channel's ``kp`` weights broadcast.

Instructions (all exact: no intermediate saturation):

* ``vnni``    AVX-512 VNNI ``vpdpbusd``: u8 x s8, kp=4, 16 lanes. A signed int8 operand goes in
  with ``offset=128`` (its bits XOR 0x80 are the u8 value x+128); the kernel subtracts
  ``128 * sum(w)`` through its bias, a compile-time constant.
* ``vnni16``  AVX-512 VNNI ``vpdpwssd``: s16 x s16, kp=2, 16 lanes (int16 activations).
* ``avxvnni`` AVX-VNNI (256-bit) ``vpdpbusd``: as ``vnni`` on 8 lanes.
* ``avx2``    AVX2 ``vpmaddwd``: s16 x s16, kp=2, 8 lanes. 8-bit operands are widened to int16
  first. Exact for every operand.
* ``avx2w8``  ``avx2`` with the packed operand (dense weights) stored int8 and sign-extended to
  int16 as it is loaded (``vpmovsxbw ymm, m128``): the same products, half the weight bytes --
  for a batch-1 GEMV, which reads every weight once per call and waits on memory
  (``x86_int8.DenseTensorized``).
* ``avx2ub``  AVX2 ``vpmaddubsw`` + ``vpmaddwd`` against ones: u8 x s8, kp=4, 8 lanes (offset as
  ``vnni``). ``vpmaddubsw`` adds adjacent u8 x s8 products into int16 *with saturation*
  (255*127*2 > 32767), so it is exact only for weights whose every packed pair is proven safe at
  compile time (x86_byte_pairs.py); a kernel whose weights are not keeps ``avx2``
  (:func:`byte_pair_isa`). Twice ``avx2``'s products per multiply, half its activation bytes.

The accumulator buffer is ``local`` (the kernels keep the accumulator tile in registers).
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target.codegen import llvm_cpu_has_features

ACC_SCOPE = "local"


@dataclass(frozen=True)
class DotIsa:
    """One int8/int16 dot instruction: lanes of int32, ``kp`` products per lane, operand dtype."""

    name: str
    lanes: int
    kp: int
    packed_dtype: str   # the weights' dtype as the instruction reads them (int8, or int16 widened)
    llvm_intrin: str
    accumulates: bool   # True: the instruction adds into C itself (vpdp*); False: C + result (vpmaddwd)
    vector_bits: int

    @property
    def mnemonic(self) -> str:
        """The x86 instruction (``vpdpbusd``, ``vpdpwssd``, ``vpmaddwd``, ``vpmaddubsw``), for reports."""
        op = ".".join(self.llvm_intrin.split(".")[3:])
        return {"pmadd.wd": "vpmaddwd", "pmadd.ub.sw": "vpmaddubsw"}.get(op, op)


VNNI = DotIsa("vnni", 16, 4, "int8", "llvm.x86.avx512.vpdpbusd.512", True, 512)
VNNI16 = DotIsa("vnni16", 16, 2, "int16", "llvm.x86.avx512.vpdpwssd.512", True, 512)
AVXVNNI = DotIsa("avxvnni", 8, 4, "int8", "llvm.x86.avx512.vpdpbusd.256", True, 256)
AVX2 = DotIsa("avx2", 8, 2, "int16", "llvm.x86.avx2.pmadd.wd", False, 256)
AVX2UB = DotIsa("avx2ub", 8, 4, "int8", "llvm.x86.avx2.pmadd.ub.sw", False, 256)
# ``vpmaddwd`` with the packed operand kept int8 in memory and widened as it is loaded (``vpmovsxbw``):
# half avx2's weight bytes, for kernels that read each weight once per call (batch-1 GEMV)
AVX2W8 = DotIsa("avx2w8", 8, 2, "int8", "llvm.x86.avx2.pmadd.wd", False, 256)
ISA_BY_NAME = {isa.name: isa for isa in (VNNI, VNNI16, AVXVNNI, AVX2, AVX2UB, AVX2W8)}


def _has(target: tvm.target.Target, *features: str) -> bool:
    return bool(llvm_cpu_has_features(list(features), target))


def select_isa(target: tvm.target.Target, act_dtype: str) -> DotIsa | None:
    """The widest exact dot instruction ``target`` (its mcpu / mattr) has for activations of
    ``act_dtype`` against int8 weights; None when it has none (not x86, or no AVX2)."""
    if target.kind.name != "llvm" or act_dtype not in ("uint8", "int8", "int16"):
        return None
    if _has(target, "avx512vnni", "avx512bw"):
        return VNNI16 if act_dtype == "int16" else VNNI
    if act_dtype != "int16" and _has(target, "avxvnni"):
        return AVXVNNI
    if _has(target, "avx2"):
        return AVX2
    return None


def byte_pair_isa(isa: DotIsa | None, act_dtype: str) -> DotIsa | None:
    """The faster u8 x s8 instruction a kernel chosen ``isa`` for ``act_dtype`` may run instead
    when its weights prove it exact (x86_byte_pairs.py): ``vpmaddubsw`` for 8-bit activations on
    AVX2; None where there is none (the VNNI instructions never saturate; int16 activations)."""
    return AVX2UB if isa is AVX2 and act_dtype in ("uint8", "int8") else None


def dot_term(a, b, offset: int):
    """One product of a dot intrinsic's description, ``(a + offset) * b`` in int32; the kernels'
    TE definitions use the same expression so that ``tensorize`` matches them."""
    return (T.Cast("int32", a) + offset) * T.Cast("int32", b)


def intrin_name(isa: DotIsa, a_dtype: str, bcast: str, offset: int) -> str:
    """Registered name, e.g. ``qplugin_vnni_uint8_bcast_a``; ``_off128`` for the signed trick."""
    return f"qplugin_{isa.name}_{a_dtype}_bcast_{bcast}" + (f"_off{offset}" if offset else "")


def _desc_bcast_a(lanes: int, kp: int, a_dtype: str, w_dtype: str, off: int, acc_scope: str):
    """``C[i] += sum_k (A[k] + off) * B[i, k]``: A broadcast, B packed."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (kp,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, kp), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=acc_scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:kp], B[0:lanes, 0:kp])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, kp):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + dot_term(A[vk], B[vi, vk], off)

    return desc


def _desc_bcast_b(lanes: int, kp: int, a_dtype: str, w_dtype: str, off: int, acc_scope: str):
    """``C[i] += sum_k (A[i, k] + off) * B[k]``: A packed, B broadcast."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (lanes, kp), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (kp,), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=acc_scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:kp], B[0:kp])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, kp):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + dot_term(A[vi, vk], B[vk], off)

    return desc


def _register(isa: DotIsa, a_dtype: str, bcast: str, offset: int, acc_scope: str) -> str:
    name = intrin_name(isa, a_dtype, bcast, offset) + ("" if acc_scope == ACC_SCOPE else f"_{acc_scope}")
    lanes, kp, w_dtype = isa.lanes, isa.kp, isa.packed_dtype
    a_shape, b_shape = ((kp,), (lanes, kp)) if bcast == "a" else ((lanes, kp), (kp,))
    a_count, b_count = (kp, lanes * kp) if bcast == "a" else (lanes * kp, kp)
    a_region, b_region = (tuple(slice(0, d) for d in shape) for shape in (a_shape, b_shape))

    desc = _desc_bcast_a(lanes, kp, a_dtype, w_dtype, offset, acc_scope) if bcast == "a" else \
        _desc_bcast_b(lanes, kp, a_dtype, w_dtype, offset, acc_scope)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, a_dtype, offset_factor=1)
        B = T.match_buffer(b, b_shape, w_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=acc_scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[a_region], B[b_region])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = _dot(isa, C.vload([0], f"int32x{lanes}"),
                                                   _operand(A, a_dtype, a_count, isa, offset, bcast == "a"),
                                                   _operand(B, w_dtype, b_count, isa, 0, bcast == "b"))

    TensorIntrin.register(name, desc, impl, override=True)
    return name


def _operand(buf, dtype: str, count: int, isa: DotIsa, offset: int, broadcast: bool):
    """``count`` elements of ``buf`` as the instruction's operand vector (``lanes * kp`` elements):
    widened to int16 for the int16 instructions, XOR 0x80 per byte for the +128 offset (the bits
    of s8 ``x`` XOR 0x80 are the u8 ``x + 128``), the ``kp`` elements of a broadcast operand
    repeated in every lane."""
    op_elem = "uint8" if isa.kp == 4 else "int16"
    total = isa.lanes * isa.kp
    vec = buf.vload([0] * len(buf.shape), f"{dtype}x{count}")
    if op_elem == "int16" and dtype != "int16":
        vec = T.Cast(f"int16x{count}", vec)
    words = T.reinterpret(vec, dtype="int32" if count == isa.kp else f"int32x{count // isa.kp}")
    if offset:
        assert isa.kp == 4 and offset == 128, "only the s8 -> u8 offset is implemented"
        flip = T.int32(-2139062144)  # 0x80808080
        words = T.bitwise_xor(words, flip if broadcast else T.broadcast(flip, isa.lanes))
    if broadcast:
        words = T.broadcast(words, isa.lanes)
    return T.reinterpret(words, dtype=f"{op_elem}x{total}")


def _dot(isa: DotIsa, acc, a_vec, b_vec):
    lanes = isa.lanes
    fn = T.llvm_lookup_intrinsic_id(isa.llvm_intrin)
    if isa.accumulates:
        return T.call_llvm_pure_intrin(fn, acc, a_vec, b_vec, dtype=f"int32x{lanes}")
    if isa is AVX2UB:  # u8 x s8 pairs into int16 (vpmaddubsw), then pairs of those into int32
        pairs = T.call_llvm_pure_intrin(fn, a_vec, b_vec, dtype=f"int16x{2 * lanes}")
        quads = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(AVX2.llvm_intrin), pairs,
                                        T.broadcast(T.int16(1), 2 * lanes), dtype=f"int32x{lanes}")
        return acc + quads
    return acc + T.call_llvm_pure_intrin(fn, a_vec, b_vec, dtype=f"int32x{lanes}")


_REGISTERED: dict[tuple, str] = {}


def dot_intrin(isa: DotIsa, a_dtype: str, bcast: str, offset: int = 0, acc_scope: str = ACC_SCOPE) -> str:
    """Name of the intrinsic for ``isa`` with activation dtype ``a_dtype`` broadcast (``"a"``) or
    packed (``"b"`` broadcasts the weights), accumulating into a buffer of ``acc_scope`` (a
    "global" tile under 1 KB is a stack slot, a "local" one a workspace allocation:
    x86_conv_tiles._conv_tile_rows), registering it on first use."""
    key = (isa, a_dtype, bcast, offset, acc_scope)
    if key not in _REGISTERED:
        _REGISTERED[key] = _register(isa, a_dtype, bcast, offset, acc_scope)
    return _REGISTERED[key]
