"""int8 tensor-core GEMM kernels for CUDA (sm_80+): ``mma.sync.aligned.m16n8k32`` s8/u8 x s8.

Which kernels: ``dense_requant`` (x[..., k] . w[n, k]), ``matmul_requant`` (a[..., m, k] @
b[..., k, n]) and ``conv2d_requant`` 1x1, stride 1, no padding, groups 1 (MobileNetV2's pointwise
convs: per image, y[o, p] = sum_c w[o, c] x[c, p] over the pixels p), with int8 / uint8 x int8
operands and int32 accumulation, on sm_80 / sm_86 / sm_87 / sm_89 / sm_90. Everything else
returns None and stays with cuda_int8.py's ``__dp4a`` rules (then dlight's fallback): int16
activations (no s16 MMA), depthwise / grouped / strided / padded / k > 1 convs, GEMMs with fewer
than 16 rows (one m16 tile would waste more than half of every instruction; a batch-1 dense has
one row), and sm_75 (its s8 MMA is m8n8k16; dp4a serves the T4).

The kernel is written out loop by loop (:func:`_gemm_kernel`), not scheduled from the op's
PrimFunc: the accumulators of an ``mma`` are spread over the 32 lanes of a warp in the ISA's
fragment layout (intrin_cuda_mma.py), which TIR schedules only express through ``warp``-scope
buffers and ``LowerWarpMemory`` -- a heavier, s8-only route (``tvm.s_tir.tensor_intrin.cuda``).
Strategy, per thread block of ``WARPS_M x WARPS_N`` warps and a ``BM x BN`` output tile:

1. K in steps of 32: all threads copy the block's A (BM x 32) and B (BN x 32, k contiguous --
   a matmul's / conv's k-major B is transposed in the copy) tiles into shared memory, one int32
   word (4 elements) per copy where the rows start on words, else bytes (H200: the dense
   1024 x 768 x 768 went 33.9 -> 24.1 us); elements past M, N or K read as 0 (the padding is in
   the kernel: any M >= 16, N, K builds).
2. Each warp owns ``FM x FN`` mma tiles (16 x 8): it packs its lanes' A / B registers from
   shared memory and issues one ``mma.sync`` per tile; the int32 accumulators stay in registers
   for the whole K loop.
3. Epilogue per accumulator element in the lane that holds it: the op's own requant expression
   (its ``y`` block's value: bias, dyadic multiply, rounding shift, clamp -- reused node for node,
   :func:`epilogue_of`, not re-derived) on the register, then the store, predicated on M / N.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import tirx
from tvm.script import tirx as T

from ..ops import op_of
from ..passes.verify_tir import _dtype_of
from .cuda_int8 import SCHEDULED_ATTR
from .intrin_cuda_mma import (
    A_REGS,
    B_REGS,
    C_REGS,
    MMA_PTX_TYPE,
    a_element,
    b_element,
    c_element,
    mma_m16n8k32,
)

MMA_ARCHS = ("sm_80", "sm_86", "sm_87", "sm_89", "sm_90")  # m16n8k32 s8/u8 (sm_75 has m8n8k16 only)
MIN_ROWS = 16   # below one m16 tile of rows the dp4a kernel wastes less
BK = 32         # k per shared-memory stage: one mma's k
MMA_ATTR = "qplugin.cuda_mma"  # on every kernel this module wrote: build_cuda lists them (CudaBuild.mma_kernels)
ROW_BYTES = 48  # shared tile row pitch: lanes (group g, quad q) read word 12 g + q, 32 distinct banks (32: 2-way conflicts)


@dataclass(frozen=True)
class GemmView:
    """An op's PrimFunc read as ``batch`` independent ``C[m, n] = sum_k A[m, k] B[k, n]``.

    ``a_index(z, m, k)`` / ``b_index(z, k, n)``: indices of the op's A / B buffers, its params
    ``a_param`` / ``b_param`` (a conv's A is its weights, param 1: rows are output channels);
    ``y_index(z, m, n)``: indices of its output, i.e. values of its ``y`` block's iter vars;
    ``b_k_major``: B's k axis is its outer one (a matmul's b, a conv's x): the copy to shared
    memory walks n fastest, so global reads stay coalesced; ``a_flat(z, m, k)`` /
    ``b_flat(z, k, n)``: the same elements' row-major offsets in A / B (the word copies)."""

    batch: int
    m: int
    n: int
    k: int
    a_index: object
    b_index: object
    y_index: object
    b_k_major: bool
    a_flat: object
    b_flat: object
    a_param: int = 0
    b_param: int = 1

    def a_in_words(self) -> bool:
        """A (k contiguous) copies 4 k per int32 word: every row starts on a word."""
        return self.k % 4 == 0

    def b_in_words(self) -> bool:
        """B copies 4 elements per word along its contiguous axis (n if k-major, else k)."""
        return (self.n if self.b_k_major else self.k) % 4 == 0


@dataclass(frozen=True)
class Tiling:
    """Warps per block and mma tiles per warp along M (16 rows each) and N (8 columns each)."""

    warps_m: int
    warps_n: int
    frags_m: int
    frags_n: int

    @property
    def bm(self) -> int:
        return 16 * self.frags_m * self.warps_m

    @property
    def bn(self) -> int:
        return 8 * self.frags_n * self.warps_n

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n


def tiling_for(batch: int, m: int, n: int) -> Tiling:
    """A 64 x 64 block tile of 2 x 2 warps (each 32 x 32: 8 mma tiles, 32 int32 accumulators per
    lane) where the GEMM is that large, shrunk per axis for thin ones so padding stays under one
    tile (a pointwise conv on a 7 x 7 map has N = 49); then smaller tiles (:data:`SMALLER`) until
    the grid has :data:`MIN_BLOCKS` blocks -- measured on the H200, 128 x 256 x 192 in 6 blocks of
    64 x 64 ran at 0.7x of the dp4a kernel."""
    frags_m = 2 if m >= 64 else 1
    warps_m = 2 if m > 16 * frags_m else 1
    frags_n = 4 if n >= 64 else 2 if n >= 16 else 1
    warps_n = 2 if n > 8 * frags_n else 1
    thin = Tiling(warps_m, warps_n, frags_m, frags_n)
    options = [thin, *(t for t in SMALLER if t.bm <= thin.bm and t.bn <= thin.bn and t != thin)]
    blocks = lambda t: batch * -(-m // t.bm) * -(-n // t.bn)
    return next((t for t in options if blocks(t) >= MIN_BLOCKS), options[-1])


SMALLER = (Tiling(2, 2, 2, 2), Tiling(2, 2, 1, 2), Tiling(2, 2, 1, 1), Tiling(1, 2, 1, 1))  # 64x32 .. 16x16
MIN_BLOCKS = 128  # about one per SM of an A100 (108) / H100-H200 (132): fewer leaves SMs idle


def _unflatten(flat, dims) -> list:
    """Row-major indices of ``flat`` in ``dims``."""
    if len(dims) == 1:
        return [flat]
    out = []
    for d in reversed(dims):
        out.append(flat % d)
        flat = flat // d
    return out[::-1]


def gemm_view(op: str, params: dict, func: tvm.tirx.PrimFunc) -> GemmView | None:
    """The GEMM of ``func`` (op ``op``), or None where cuda_mma does not take it."""
    shapes = [tuple(int(d) for d in p.ty.shape) for p in func.params]
    if op == "dense_requant" and len(shapes[1]) == 2:
        lead, k = shapes[0][:-1], shapes[0][-1]
        n = shapes[1][0]
        return GemmView(1, math.prod(lead), n, k,
                        lambda z, m, kk: (*_unflatten(m, lead), kk), lambda z, kk, nn: (nn, kk),
                        lambda z, m, nn: (*_unflatten(m, lead), nn), False,
                        lambda z, m, kk: m * k + kk, lambda z, kk, nn: nn * k + kk)
    if op == "matmul_requant" and len(shapes[0]) >= 2 and len(shapes[1]) >= 2:
        (*a_lead, m, k), (*b_lead, _, n) = shapes[0], shapes[1]
        if len(a_lead) != len(b_lead) or a_lead != b_lead:
            return None  # broadcast batch dims: left to dp4a
        return GemmView(math.prod(a_lead), m, n, k,
                        lambda z, mm, kk: (*_unflatten(z, a_lead), mm, kk),
                        lambda z, kk, nn: (*_unflatten(z, a_lead), kk, nn),
                        lambda z, mm, nn: (*_unflatten(z, a_lead), mm, nn), True,
                        lambda z, mm, kk: (z * m + mm) * k + kk, lambda z, kk, nn: (z * k + kk) * n + nn)
    if op == "conv2d_requant":
        pointwise = (params["groups"] == 1 and shapes[1][2:] == (1, 1) and list(params["strides"]) == [1, 1]
                     and not any(params["padding"]))
        if not pointwise:
            return None
        batch, c, h, w = shapes[0]
        o = shapes[1][0]
        return GemmView(batch, o, h * w, c,
                        lambda z, oo, cc: (oo, cc, 0, 0), lambda z, cc, p: (z, cc, p // w, p % w),
                        lambda z, oo, p: (z, oo, p // w, p % w), True,
                        lambda z, oo, cc: oo * c + cc, lambda z, cc, p: (z * c + cc) * (h * w) + p, a_param=1, b_param=0)
    return None


def _gemm_kernel(view: GemmView, tiling: Tiling, A, B, Y, epilogue) -> tvm.tirx.Stmt:
    """The body of steps 1-3 on the op's own buffers ``A``, ``B``, ``Y`` (the view's operands
    and the op's output), storing ``epilogue(acc register, y indices)`` (:func:`epilogue_of`)."""
    a_dtype, b_dtype = _dtype_of(A.ty), _dtype_of(B.ty)
    bm, bn, threads, fm, fn, wn = tiling.bm, tiling.bn, tiling.threads, tiling.frags_m, tiling.frags_n, tiling.warps_n
    m_total, n_total, k_total = view.m, view.n, view.k
    a_at, b_at, y_at = view.a_index, view.b_index, view.y_index
    a_copies, b_copies = bm * BK // threads, bn * BK // threads
    pitch = ROW_BYTES // 4  # words per shared tile row
    a_size, b_size = (math.prod(int(d) for d in X.ty.shape) for X in (A, B))

    def b_copy(bz, bx, ko, flat):  # (n in tile, k in tile, n, k)
        if view.b_k_major:
            r, c = flat % bn, flat // bn
        else:
            r, c = flat // BK, flat % BK
        return r, c, bx * bn + r, ko * BK + c

    @T.macro
    def copy_a_words(bz, by, ko, tid, a_tile):
        """A's BM x 32 tile, one int32 word (4 k) per copy: every row of A starts on a word."""
        a_tile_w = T.decl_buffer((bm * pitch,), "int32", data=a_tile.data, scope="shared")
        a_glob_w = T.decl_buffer((a_size // 4,), "int32", data=A.data)  # here only: an unused alias adds a kernel param
        for it in T.unroll(a_copies // 4):
            r, c4 = T.meta_var(((it * threads + tid) // (BK // 4), (it * threads + tid) % (BK // 4)))
            if by * bm + r < m_total and ko * BK + 4 * c4 < k_total:
                a_tile_w[r * pitch + c4] = a_glob_w[view.a_flat(bz, by * bm + r, ko * BK + 4 * c4) // 4]
            else:
                a_tile_w[r * pitch + c4] = 0

    @T.macro
    def copy_a_bytes(bz, by, ko, tid, a_tile):
        for it in T.unroll(a_copies):
            r, c = T.meta_var(((it * threads + tid) // BK, (it * threads + tid) % BK))
            a_tile[r, c] = T.if_then_else(by * bm + r < m_total and ko * BK + c < k_total,
                                          A[a_at(bz, by * bm + r, ko * BK + c)], T.Cast(a_dtype, 0))

    @T.macro
    def copy_b_words(bz, bx, ko, tid, b_tile):
        """B's BN x 32 tile (k contiguous in B too: a dense's weights), one word per copy."""
        b_tile_w = T.decl_buffer((bn * pitch,), "int32", data=b_tile.data, scope="shared")
        b_glob_w = T.decl_buffer((b_size // 4,), "int32", data=B.data)
        for it in T.unroll(b_copies // 4):
            r, c4 = T.meta_var(((it * threads + tid) // (BK // 4), (it * threads + tid) % (BK // 4)))
            if bx * bn + r < n_total and ko * BK + 4 * c4 < k_total:
                b_tile_w[r * pitch + c4] = b_glob_w[view.b_flat(bz, ko * BK + 4 * c4, bx * bn + r) // 4]
            else:
                b_tile_w[r * pitch + c4] = 0

    @T.macro
    def copy_b_words_transposed(bz, bx, ko, tid, b_tile):
        """A k-major B (a matmul's b, a conv's x) read one word (4 n) per copy; its 4 bytes go to
        4 rows of the n-major tile (byte q of the little-endian word is element n + q)."""
        b_glob_w = T.decl_buffer((b_size // 4,), "int32", data=B.data)
        for it in T.unroll(b_copies // 4):
            kr, n4 = T.meta_var(((it * threads + tid) // (bn // 4), (it * threads + tid) % (bn // 4)))
            if bx * bn + 4 * n4 < n_total and ko * BK + kr < k_total:
                for q in T.unroll(4):
                    b_tile[4 * n4 + q, kr] = T.Cast(
                        b_dtype, T.shift_right(b_glob_w[view.b_flat(bz, ko * BK + kr, bx * bn + 4 * n4) // 4], 8 * q))
            else:
                for q in T.unroll(4):
                    b_tile[4 * n4 + q, kr] = T.Cast(b_dtype, 0)

    @T.macro
    def copy_b_bytes(bz, bx, ko, tid, b_tile):
        for it in T.unroll(b_copies):
            r, c, nn, kk = T.meta_var(b_copy(bz, bx, ko, it * threads + tid))
            b_tile[r, c] = T.if_then_else(nn < n_total and kk < k_total, B[b_at(bz, kk, nn)], T.Cast(b_dtype, 0))

    copy_a = copy_a_words if view.a_in_words() else copy_a_bytes
    copy_b = (copy_b_bytes if not view.b_in_words() else
              copy_b_words_transposed if view.b_k_major else copy_b_words)

    @T.prim_func(check_well_formed=False)  # reads the op's param buffers: bound once they are the params
    def kernel():
        for bz in T.thread_binding(view.batch, thread="blockIdx.z"):
            for by in T.thread_binding((m_total + bm - 1) // bm, thread="blockIdx.y"):
                for bx in T.thread_binding((n_total + bn - 1) // bn, thread="blockIdx.x"):
                    for warp in T.thread_binding(threads // 32, thread="threadIdx.y"):
                        for lane in T.thread_binding(32, thread="threadIdx.x"):
                            a_tile = T.alloc_buffer((bm, ROW_BYTES), a_dtype, scope="shared")
                            b_tile = T.alloc_buffer((bn, ROW_BYTES), b_dtype, scope="shared")
                            acc = T.alloc_buffer((fm * fn * C_REGS,), "int32", scope="local")
                            a_regs = T.alloc_buffer((A_REGS,), "int32", scope="local")
                            b_regs = T.alloc_buffer((B_REGS,), "int32", scope="local")
                            for e in T.unroll(fm * fn * C_REGS):
                                acc[e] = 0
                            for ko in T.serial((k_total + BK - 1) // BK):
                                copy_a(bz, by, ko, warp * 32 + lane, a_tile)
                                copy_b(bz, bx, ko, warp * 32 + lane, b_tile)
                                T.tvm_storage_sync("shared")
                                for i in T.unroll(fm):
                                    for reg in T.unroll(A_REGS):
                                        ar, ac = T.meta_var(a_element(lane, reg, 0))
                                        a_regs[reg] = T.reinterpret(
                                            "int32", a_tile[(warp // wn) * 16 * fm + i * 16 + ar, T.Ramp(ac, 1, 4)])
                                    for j in T.unroll(fn):
                                        for reg in T.unroll(B_REGS):
                                            bc, br = T.meta_var(b_element(lane, reg, 0))
                                            b_regs[reg] = T.reinterpret(
                                                "int32", b_tile[(warp % wn) * 8 * fn + j * 8 + bc, T.Ramp(br, 1, 4)])
                                        T.evaluate(mma_m16n8k32(a_dtype, b_dtype, a_regs, b_regs, acc,
                                                                (i * fn + j) * C_REGS))
                                T.tvm_storage_sync("shared")
                            for i in T.unroll(fm):  # unrolled: the registers are indexed by constants
                                for j in T.unroll(fn):
                                    for e in T.unroll(C_REGS):
                                        cr, cc = T.meta_var(c_element(lane, e))
                                        mm = T.meta_var(by * bm + (warp // wn) * 16 * fm + i * 16 + cr)
                                        nn = T.meta_var(bx * bn + (warp % wn) * 8 * fn + j * 8 + cc)
                                        if mm < m_total and nn < n_total:
                                            Y[y_at(bz, mm, nn)] = epilogue(acc[(i * fn + j) * C_REGS + e], y_at(bz, mm, nn))

    return kernel.body


# the op params each GEMM view was written for (ops/conv.py, ops/matmul.py): a new one may change
# what the accumulator sums (an input offset, say), so an op carrying any other is declined
REQUANT_PARAMS = {"qmin", "qmax", "out_dtype"}
KNOWN_PARAMS = {"dense_requant": REQUANT_PARAMS | {"acc_bits"}, "matmul_requant": REQUANT_PARAMS | {"multiplier", "shift"},
                "conv2d_requant": REQUANT_PARAMS | {"strides", "padding", "dilation", "groups"}}
BINARY = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Min, tirx.Max, tirx.FloorDiv, tirx.FloorMod, tirx.LShift, tirx.RShift)


class NotMine(Exception):
    """The op's epilogue holds a node :func:`_rebuild` does not know: the rule declines."""


def _rebuild(e, var_map: dict, acc_buffer, acc_value):
    """``e`` with its variables replaced per ``var_map`` (the ``y`` block's iter vars, in order)
    and the load of ``acc_buffer`` at those iter vars by ``acc_value`` -- the node kinds of
    ops/requant.py's epilogues; any other kind, or ``acc`` read elsewhere, raises NotMine."""
    again = lambda x: _rebuild(x, var_map, acc_buffer, acc_value)
    if isinstance(e, tvm.ir.TensorLoad):
        if e.source.same_as(acc_buffer):
            if len(e.indices) != len(var_map) or not all(i.same_as(v) for i, v in zip(e.indices, var_map)):
                raise NotMine("the epilogue reads acc at another element than its own")
            return acc_value
        return tirx.BufferLoad(e.source, [again(i) for i in e.indices])
    if isinstance(e, tirx.Var):
        return var_map.get(e, e)
    if isinstance(e, tirx.IntImm):
        return e
    if isinstance(e, tirx.Cast):
        return tirx.Cast(_dtype_of(e.ty), again(e.value))
    if isinstance(e, BINARY):
        return type(e)(again(e.a), again(e.b))
    raise NotMine(type(e).__name__)


def _y_block(func: tvm.tirx.PrimFunc):
    """The op's ``y`` block (its epilogue), or None."""
    found = []

    def visit(node):
        if node.name_hint == "y":
            found.append(node)

    tvm_ffi.structural_walk(func.body, [(tvm.s_tir.SBlock, visit)], order="pre")
    return found[0] if len(found) == 1 else None


def epilogue_of(func: tvm.tirx.PrimFunc):
    """The op's requant epilogue as ``value(acc_register, y_indices)``: its ``y`` block's stored
    expression with the block's iter vars bound to ``y_indices`` and ``acc[...]`` to the register."""
    y_block = _y_block(func)
    if y_block is None or not isinstance(y_block.body, tirx.BufferStore):
        raise NotMine("no single y block storing one value")
    y_store = y_block.body
    iter_vars = [iv.var for iv in y_block.iter_vars]
    if not y_store.buffer.same_as(func.params[-1]) or len(y_store.indices) != len(iter_vars) \
            or not all(i.same_as(v) for i, v in zip(y_store.indices, iter_vars)):
        raise NotMine("y is not the output stored at the block's iter vars")
    acc = [r.source for r in y_block.reads if not any(r.source.same_as(p) for p in func.params)]
    if len(acc) != 1 or _dtype_of(acc[0].ty) != "int32":
        raise NotMine("the epilogue reads no single int32 accumulator")
    return lambda register, indices: _rebuild(y_store.value, dict(zip(iter_vars, indices)), acc[0], register)


class GemmMma:
    """The CUDA rule: the kernels of the module doc on sm_80+ (dlight's contract: a PrimFunc, or None)."""

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target):
        if target.kind.name != "cuda" or str(target.attrs.get("arch", "")) not in MMA_ARCHS:
            return None
        described = op_of(func)
        if described is None or described[0] not in KNOWN_PARAMS or described[1].get("acc_bits", 32) != 32:
            return None
        if set(described[1]) - KNOWN_PARAMS[described[0]]:  # a variant this GEMM reading does not know
            return None
        if any(_dtype_of(p.ty) not in MMA_PTX_TYPE for p in func.params[:2]):
            return None
        view = gemm_view(*described, func)
        if view is None or view.m < MIN_ROWS:
            return None
        try:
            epilogue = epilogue_of(func)
        except NotMine:
            return None
        body = _gemm_kernel(view, tiling_for(view.batch, view.m, view.n), func.params[view.a_param],
                            func.params[view.b_param], func.params[-1], epilogue)
        return tvm.tirx.PrimFunc(func.params, body, attrs=func.attrs).with_attrs({SCHEDULED_ATTR: True, MMA_ATTR: True})


MMA_RULES = [GemmMma()]


def is_mma_kernel(func) -> bool:
    """Whether ``func`` is a kernel :class:`GemmMma` wrote."""
    return isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and MMA_ATTR in func.attrs
