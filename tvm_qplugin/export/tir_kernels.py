"""TensorIR-generated kernels for the C package of aarch64 boards (issue 11, deliverable 1); Cortex-M
boards' kernels are :mod:`.tir_kernels_cortexm`'s, built and called by the same functions here.

A dense_requant layer, or a pointwise conv2d_requant (one image, NCHW: packed transposed per block
of pixels inside the kernel), with 8-bit inputs (int16 ones: the ``smlal`` kernel only) becomes a TIR PrimFunc -- the int8 dot products, the
per-channel requantization of quant/dyadic.py and the clamp, shapes baked in -- compiled by TVM's
LLVM backend for the board's own target (``-mcpu`` / ``-mattr``: ``+dotprod`` gives ``sdot``)
into an ELF object that the package links beside qkernels.c. The kernel reads the package's own
weight / bias / multiplier arrays (the hand-written kernel's layout: rows padded to ``kp``), so
choosing it costs no flash; uint8 inputs run flipped to int8 (``x ^ 0x80``) with ``128 * sum(w)``
added back per channel, as the MVE path does.

ABI: ``tvm.tirx.build`` exports only TVM-FFI packed functions (TVM_NOTES.md, "The c target"),
and a private pointer-ABI PrimFunc cannot hold an allocation (LowerTVMBuiltin needs the device of
a packed function's arguments), so the kernel is the packed function itself and the package's
``tir_kernels.c`` calls ``__tvm_ffi_<name>(self, args, n, result)`` with ``args[i] = {type_index 7
(DLTensor*), &tensor_i}``. With ``tirx.disable_assert`` the function reads only each tensor's
``data`` (and the unused shape / strides / device fields). The object's only external references
are TVM's weak runtime hooks (workspace allocation, parallel launch), which the shim serves from a
static pool and serially: no TVM runtime on the board.

Schedules (the candidates :mod:`.kernel_choice` measures; see :func:`_schedule`): ``default``,
``tiled``, ``tiled2x4``, ``tiled4x4``; and ``sdot4x4`` on boards with the dot-product extension, a
kernel of its own (:mod:`.tir_kernels_sdot`: channels in the ``sdot`` lanes, weights prepacked, the
requantization on 4 outputs at once). A depthwise 3x3 conv has its own kernel, ``dw3x3``
(:mod:`.tir_kernels_dw`: a :class:`~.tir_kernels_dw.DwSpec`, built and called through the same shim), and so
does a small-channel conv such as the 3x3 stem, ``im2col-sdot`` (:mod:`.tir_kernels_sdot_conv`: a
:class:`DenseSpec` with its ``conv`` geometry).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tvm
from tvm.script import tirx as T

from ..errors import UnsupportedOpError
from .c_graph import dt_info
from .tir_kernels_cortexm import CORTEXM_SCHEDULES, cortexm_applies, cortexm_module
from .tir_kernels_cortexm import workspace_bytes as cortexm_workspace_bytes
from .tir_kernels_cortexm_dw import cortexm_dw_spec
from .tir_kernels_dw import DwSpec, dw_module, dw_spec, dw_workspace_bytes
from .tir_kernels_i8mm import (
    I8MM_SCHEDULES,
    i8mm_applies,
    i8mm_module,
    pack_weights_i8mm,
)
from .tir_kernels_i8mm import workspace_bytes as i8mm_workspace_bytes
from .tir_kernels_neon import INT16_SCHEDULES, NEON_SCHEDULES, neon_applies, neon_module, pack_weights_neon
from .tir_kernels_neon import workspace_bytes as neon_workspace_bytes
from .tir_kernels_sdot_conv import (  # a small-channel conv (the 3x3 stem) by im2col and sdot
    IM2COL_SCHEDULES,
    conv_geometry,
    im2col_applies,
    im2col_module,
    im2col_workspace_bytes,
)
from .tir_kernels_sdot import (  # the sdot4x4 kernel
    pack_weights_sdot,
    sdot_applies,
    sdot_module,
    workspace_bytes,
)

SCHEDULES = ("default", "tiled", "tiled2x4", "tiled4x4", *NEON_SCHEDULES, "sdot4x4", *I8MM_SCHEDULES)
DOTPROD_SCHEDULES = ("sdot4x4",)   # need the board's dot-product extension (sdot): no candidate elsewhere
# (I8MM_SCHEDULES, smmla, need the int8 matrix multiply: tir_kernels_i8mm.py; NEON_SCHEDULES, smlal, plain
# NEON: tir_kernels_neon.py)
# (Cortex-M boards: CORTEXM_SCHEDULES, the SMLAD / MVE kernels of tir_kernels_cortexm.py, are their candidates)
_ROWS = {"tiled2x4": 2, "tiled4x4": 4}   # rows of x per tile of the row-blocked schedules
TIR_TILE_N = 4       # output channels per pass of the tiled schedule


@dataclass(frozen=True)
class DenseSpec:
    """One TIR dense kernel: ``y (m, n) = requant(x (m, k) . w (n, kp)[:, :k] + b)``; ``flip``:
    uint8 ``x`` taken as ``x ^ 0x80`` (int8), ``b`` then carries ``+ 128 * sum(w)``. ``nchw``: a 1x1
    convolution over m pixels, x (k, m) and y (n, m) channel-major: the kernel packs x transposed
    (int8, contiguous channels) per block of pixels before the dot products."""

    name: str
    m: int
    k: int
    kp: int
    n: int
    x_dtype: str
    out_dtype: str
    qmin: int
    qmax: int
    schedule: str = "default"
    nchw: bool = False
    shift33: bool = False   # every shift >= 33: the requantization in 32 bits (qk_internal.h's identity)
    shift_range: tuple = (0, 62)   # (min, max) of the per-channel shifts: sdot4x4's requantization variant
    shifts: tuple = ()   # every channel's shift, where a kernel bakes them in (tir_kernels_sdot_px.py); () if unknown
    conv: tuple = ()     # a conv's (c, h, w, kh, kw, sh, sw, pt, pl, pb, pr, oh, ow) (im2col-sdot); () for a GEMM

    @property
    def flip(self) -> bool:
        return self.x_dtype == "uint8"


def requant(sp: DenseSpec, acc, vj, B, MU, SH, biased: bool = False):
    """Output ``vj``'s requantization of ``acc`` (bias ``B[vj]`` added unless ``biased``: the
    accumulator started at it), clamped to [qmin, qmax] and cast: quant/dyadic.py's formula (one
    home for every TIR kernel of the package, :mod:`.tir_kernels_cortexm`'s too)."""
    od, lo, hi = sp.out_dtype, sp.qmin, sp.qmax
    s = acc if biased else acc + B[vj]
    if sp.shift33:  # floor((a b + 2^(c-1)) / 2^c) == (hi + 2^(c-33)) >> (c-32), hi = (a b) >> 32; |a|, |b| < 2^31
        hi32 = T.Cast("int32", (T.Cast("int64", s) * T.Cast("int64", MU[vj])) >> T.int64(32))
        # c - 32 in [1, 30] (shifts 33..62), said explicitly: TVM's bound analysis of ``x >> (SH - 32)``
        # over SH's whole int8 range otherwise drops the clamp (the 8-bit cast then wraps 273 to 17)
        c32 = T.min(T.max(T.Cast("int32", SH[vj]) - 32, 1), 30)
        return T.Cast(od, T.max(T.min((hi32 + (T.int32(1) << (c32 - 1))) >> c32, T.int32(hi)), T.int32(lo)))
    s64 = T.Cast("int64", s) if biased else T.Cast("int64", acc) + T.Cast("int64", B[vj])
    return T.Cast(od, T.max(T.min(
        (s64 * T.Cast("int64", MU[vj]) + ((T.int64(1) << T.Cast("int64", SH[vj])) >> T.int64(1)))
        >> T.Cast("int64", SH[vj]), T.int64(hi)), T.int64(lo)))


def _dense_module(sp: DenseSpec) -> tvm.IRModule:
    """The IRModule of one kernel (``main``: its packed wrapper reads the DLTensors' data pointers)."""
    m, k, kp, n, xd, od, flip = sp.m, sp.k, sp.kp, sp.n, sp.x_dtype, sp.out_dtype, sp.flip

    def x8(v):
        return T.Cast("int8", T.bitwise_xor(v, T.uint8(128))) if flip else T.Cast("int8", v)

    xshape, yshape = ((k, m), (n, m)) if sp.nchw else ((m, k), (m, n))

    @T.prim_func(s_tir=True)
    def main(X: T.Buffer(xshape, xd), W: T.Buffer((n, kp), "int8"), B: T.Buffer((n,), "int32"),
             MU: T.Buffer((n,), "int32"), SH: T.Buffer((n,), "int8"), Y: T.Buffer(yshape, od)):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            XT = T.sblock_alloc_buffer((m, k), "int8")
            ACC = T.sblock_alloc_buffer((m, n), "int32")
            for i, kk in T.grid(m, k):
                with T.sblock("pack"):
                    vi, vk = T.axis.remap("SS", [i, kk])
                    XT[vi, vk] = x8(X[vk, vi] if sp.nchw else X[vi, vk])
            for i, j, kk in T.grid(m, n, k):
                with T.sblock("acc"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    with T.init():
                        ACC[vi, vj] = 0
                    ACC[vi, vj] = ACC[vi, vj] + T.Cast("int32", XT[vi, vk]) * T.Cast("int32", W[vj, vk])
            for i, j in T.grid(m, n):
                with T.sblock("y"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    if sp.nchw:
                        Y[vj, vi] = requant(sp, ACC[vi, vj], vj, B, MU, SH)
                    else:
                        Y[vi, vj] = requant(sp, ACC[vi, vj], vj, B, MU, SH)

    return tvm.IRModule({"main": main})


def _schedule(mod: tvm.IRModule, sp: DenseSpec) -> tvm.IRModule:
    """Apply the spec's schedule to the kernel: the accumulator becomes a register per output
    (``default``), per 4 outputs of a row (``tiled``: one load of x feeds 4 dot products) or per
    2 or 4 rows x 4 outputs (``tiled2x4``: 2 loads of x and 4 of w feed 8 ``sdot``; ``tiled4x4``:
    4 and 4 feed 16). A shape the tile does not divide takes ``default``."""
    sch = tvm.s_tir.Schedule(mod)
    sch.work_on("main")
    pack, acc, y = sch.get_sblock("pack"), sch.get_sblock("acc"), sch.get_sblock("y")
    if not sp.nchw:
        sch.compute_inline(pack)   # dense: x rows are contiguous already
    i, j = sch.get_loops(y)
    outer = i
    if sp.schedule == "tiled" and sp.n % TIR_TILE_N == 0:
        jo, ji = sch.split(j, [None, TIR_TILE_N])
        sch.compute_at(acc, jo)
        a_j, a_k = sch.get_loops(acc)[-2:]
        sch.reorder(a_k, a_j)
        for loop in (a_j, ji):
            sch.unroll(loop)
    elif sp.schedule in _ROWS and sp.n % TIR_TILE_N == 0 and sp.m % _ROWS[sp.schedule] == 0:
        outer, ii = sch.split(i, [None, _ROWS[sp.schedule]])
        io = outer
        jo, ji = sch.split(j, [None, TIR_TILE_N])
        sch.reorder(io, jo, ii, ji)
        sch.compute_at(acc, jo)
        a_i, a_j, a_k = sch.get_loops(acc)[-3:]
        sch.reorder(a_k, a_i, a_j)
        for loop in (a_i, a_j, ii, ji):
            sch.unroll(loop)
    else:
        sch.compute_at(acc, j)
        a_k = sch.get_loops(acc)[-1]
    sch.set_scope(acc, 0, "local")
    # the zero-init out of the k loop: otherwise LLVM peels k = 0 and every vector load is off by one
    sch.decompose_reduction(acc, a_k)
    if sp.nchw:  # one block of pixels transposed (k contiguous) before its dot products
        sch.compute_at(pack, outer)
    return sch.mod


def object_target(board) -> tvm.target.Target:
    """The board's TVM target for kernel objects: its ``-mcpu`` / ``-mattr`` (Cortex-M: its
    ``thumbv7em`` / ``thumbv8.1m.main`` triple, hard float as the package), one core (a parallel
    launch would need the TVM runtime's thread pool)."""
    if not ((board.family == "aarch64" and board.os == "linux") or (board.family == "cortex-m" and board.tvm_target)):
        raise UnsupportedOpError(f"TIR kernels: board {board.name} is neither an aarch64 Linux board nor a "
                                 "Cortex-M board with a TVM target")
    extra = {}
    if board.family == "cortex-m" and "-mfloat-abi=hard" in board.cflags:   # else the link refuses the mix
        extra["mfloat-abi"] = "hard"
    return tvm.target.Target({**dict(board.target().export()), "num-cores": 1, **extra})


def build_object(specs: list[DenseSpec], board, path: Path) -> list[Path]:
    """Compile every kernel for ``board`` (:func:`object_target`) into one object each; return their
    paths (``<path stem>_<name>.o``)."""
    target = object_target(board)
    out = []
    for sp in specs:
        if sp.x_dtype == "int16" and sp.schedule not in INT16_SCHEDULES:   # the others read x as 8-bit
            raise UnsupportedOpError(f"TIR kernel {sp.name}: int16 x has only the {'/'.join(INT16_SCHEDULES)} "
                                     f"kernel, not {sp.schedule}; choose it or handwritten-c")
        if isinstance(sp.schedule, TunedKernel):
            mod = sp.schedule.mod
        elif isinstance(sp, DwSpec) and sp.schedule not in CORTEXM_SCHEDULES:   # a depthwise 3x3 conv (tir_kernels_dw.py)
            mod = dw_module(sp)
        elif sp.schedule in CORTEXM_SCHEDULES:   # GEMM or depthwise (cortexm_module dispatches)
            if not cortexm_applies(sp.schedule, board):
                raise UnsupportedOpError(f"TIR kernel {sp.name}: {sp.schedule} needs a Cortex-M core with "
                                         f"{'MVE' if sp.schedule == 'mve' else 'the DSP extension'} (board "
                                         f"{board.name}: {list(board.features)}); choose another schedule")
            mod = cortexm_module(sp)
        elif sp.conv and sp.schedule not in IM2COL_SCHEDULES:   # the GEMM kernels read x as a pointwise conv's
            raise UnsupportedOpError(f"TIR kernel {sp.name}: a {sp.conv[3]}x{sp.conv[4]} conv has only the "
                                     f"{IM2COL_SCHEDULES[0]} kernel, not {sp.schedule}; choose it or handwritten-c")
        elif sp.schedule in IM2COL_SCHEDULES:
            if "dotprod" not in board.features or not im2col_applies(sp):
                raise UnsupportedOpError(f"TIR kernel {sp.name}: {sp.schedule} needs the dot-product extension "
                                         f"(board {board.name}: {list(board.features)}), a conv of int8 x with 4 | n "
                                         "and every shift >= 31; choose another schedule")
            mod = im2col_module(sp)
        elif sp.schedule in DOTPROD_SCHEDULES:
            if "dotprod" not in board.features or not sdot_applies(sp):
                raise UnsupportedOpError(f"TIR kernel {sp.name}: {sp.schedule} needs the dot-product extension "
                                         f"(board {board.name}: {list(board.features)}) and n, k multiples of 4 "
                                         f"(n={sp.n}, k={sp.k}); choose another schedule")
            mod = sdot_module(sp)
        elif sp.schedule in I8MM_SCHEDULES:
            if "i8mm" not in board.features or not i8mm_applies(sp):
                raise UnsupportedOpError(f"TIR kernel {sp.name}: {sp.schedule} needs the int8 matrix multiply (i8mm; "
                                         f"board {board.name}: {list(board.features)}) and an even n (n={sp.n}); "
                                         "choose another schedule")
            mod = i8mm_module(sp)
        elif sp.schedule in NEON_SCHEDULES:
            if not neon_applies(sp):
                raise UnsupportedOpError(f"TIR kernel {sp.name}: {sp.schedule} needs the pixels or the output channels "
                                         f"in groups of 4 (m={sp.m}, n={sp.n}); choose another schedule")
            mod = neon_module(sp)
        else:
            mod = _schedule(_dense_module(sp), sp)
        mod["main"] = mod["main"].with_attr("global_symbol", sp.name)
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
            lib = tvm.tirx.build(mod, target=target)
        p = path.parent / f"{path.stem}_{sp.name}.o"
        lib.write_to_file(str(p))
        out.append(p)
    return out


_SHIM_HEAD = """/* tir_kernels.c - calls of the TensorIR-generated kernels (tir_kernels_*.o, TVM's LLVM backend for this
 * board) through their TVM-FFI packed wrappers: each argument is a DLTensor* (type index 7) whose data
 * pointer is all the wrapper reads. Generated by tvm-qplugin; see tvm_qplugin/export/tir_kernels.py. */
#include <stdint.h>
#include "tir_kernels.h"

#ifndef QK_TIR_POOL_BYTES
#define QK_TIR_POOL_BYTES @POOL@
#endif

typedef struct { int32_t type_index; uint32_t pad; union { int64_t i; void *p; } v; } qk_tir_any_t;
typedef struct {
  void *data;
  int32_t device_type, device_id, ndim;
  uint8_t code, bits;
  uint16_t lanes;
  int64_t *shape, *strides;
  uint64_t byte_offset;
} qk_tir_tensor_t;

/* TVM lowers a kernel's local accumulators to TVMBackendAllocWorkspace calls through these two pointers
 * (weak, null, in each object): a LIFO bump allocator over a static pool serves them */
static uint8_t qk_tir_pool[QK_TIR_POOL_BYTES] __attribute__((aligned(64)));
static uint32_t qk_tir_top;

static void *qk_tir_alloc(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  const uint32_t size = (uint32_t)((nbytes + 63) & ~(uint64_t)63);
  (void)device_type, (void)device_id, (void)code, (void)bits;
  if (size > QK_TIR_POOL_BYTES - qk_tir_top) return 0;
  qk_tir_top += size;
  return qk_tir_pool + qk_tir_top - size;
}

static int qk_tir_free(int device_type, int device_id, void *ptr) {
  (void)device_type, (void)device_id;
  qk_tir_top = (uint32_t)((uint8_t *)ptr - qk_tir_pool);
  return 0;
}

void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = qk_tir_alloc;
int (*__TVMBackendFreeWorkspace)(int, int, void *) = qk_tir_free;

/* a parallel loop (a tuned candidate's) runs as one task on the calling core */
typedef struct { void *sync_handle; int32_t num_task; } qk_tir_penv_t;
static int qk_tir_parallel(int (*task)(int, qk_tir_penv_t *, void *), void *cdata, int num_task) {
  qk_tir_penv_t env = {0, 1};
  (void)num_task;
  return task(0, &env, cdata);
}
int (*__TVMBackendParallelLaunch)(int (*)(int, qk_tir_penv_t *, void *), void *, int) = qk_tir_parallel;

#if defined(__arm__)
/* Cortex-M: LLVM's unwind tables name the EHABI personality routine; the kernels never unwind, and
 * without this (weak) definition libgcc's unwinder, which needs __exidx_start, would be linked */
__attribute__((weak)) void __aeabi_unwind_cpp_pr0(void) {}
#endif

void qk_tir_call(int32_t (*fn)(void *, void *, int32_t, void *), int32_t n, void *const *ptrs) {
  qk_tir_tensor_t t[8];
  qk_tir_any_t a[8], r;
  int32_t i;
  for (i = 0; i < n; i++) {
    t[i] = (qk_tir_tensor_t){0};
    t[i].data = ptrs[i];
    t[i].device_type = 1; /* kDLCPU */
    a[i].type_index = 7;  /* kTVMFFIDLTensorPtr */
    a[i].pad = 0;
    a[i].v.p = &t[i];
  }
  r.type_index = 0;
  (void)fn(0, a, n, &r);
}
"""

OUT_DTYPES = ("uint8", "int8", "int16", "int32")
TIR_X_DTYPES = ("uint8", "int8", "int16")   # int16 x: only INT16_SCHEDULES (smlal, tir_kernels_neon.py)


def prototype(sp: DenseSpec) -> str:
    """The C prototype of a kernel's call (one home for tir_kernels.h and tir_kernels.c)."""
    return (f"void {sp.name}(const {dt_info(sp.x_dtype)[1]} *x, const int8_t *w, const int32_t *b, const int32_t *m, "
            f"const int8_t *s, {dt_info(sp.out_dtype)[1]} *y)")


def symbol_address(board, exe, name: str) -> int:
    """Address of symbol ``name`` in a cross-built executable (the board's binutils ``nm``)."""
    from .toolchain import GeneratedCodeError, run_tool, which

    nm = run_tool([which(board.cc.replace("-gcc", "-nm")), exe], what="nm").stdout
    for ln in nm.splitlines():
        if ln.endswith(" " + name):
            return int(ln.split()[0], 16)
    raise GeneratedCodeError(f"{exe}: no symbol {name}")


def shim_sources(specs: list[DenseSpec]) -> tuple[str, str]:
    """(tir_kernels.h, tir_kernels.c): one plain-C entry point per kernel."""
    header = ("/* tir_kernels.h - TensorIR-generated kernels of this package (tir_kernels.c). */\n"
              "#ifndef TIR_KERNELS_H\n#define TIR_KERNELS_H\n#include <stdint.h>\n"
              "/* a TIR kernel's packed entry called on plain pointers (each becomes a DLTensor's data) */\n"
              "void qk_tir_call(int32_t (*fn)(void *, void *, int32_t, void *), int32_t n, void *const *ptrs);\n"
              + "".join(prototype(sp) + ";\n" for sp in specs) + "#endif\n")
    # workspace: the local accumulators and a pointwise conv's packed block of pixels (<= 4 rows of k int8)
    # (sdot4x4: all of x packed, workspace_bytes)
    # (a tuned schedule may keep all of x packed and every accumulator: the workload's two buffers)
    # (smlad / mve: one tile's rows of x packed, tir_kernels_cortexm.workspace_bytes)
    # (smmla: all of x packed, dense too, tir_kernels_i8mm.workspace_bytes)
    # (dw3x3: one channel's padded int16 block and a row of sums, tir_kernels_dw.dw_workspace_bytes)
    gemms = [sp for sp in specs if not isinstance(sp, DwSpec)]
    pool = 1024 + max([sp.m * sp.kp + 4 * sp.m * sp.n if isinstance(sp.schedule, TunedKernel)
                       else cortexm_workspace_bytes(sp) if sp.schedule in CORTEXM_SCHEDULES
                       else i8mm_workspace_bytes(sp) if sp.schedule in I8MM_SCHEDULES
                       else neon_workspace_bytes(sp) if sp.schedule in NEON_SCHEDULES
                       else im2col_workspace_bytes(sp) if sp.schedule in IM2COL_SCHEDULES
                       else workspace_bytes(sp) if sp.schedule in DOTPROD_SCHEDULES else 4 * sp.kp
                       for sp in gemms if sp.nchw or isinstance(sp.schedule, TunedKernel)
                       or sp.schedule in CORTEXM_SCHEDULES or sp.schedule in I8MM_SCHEDULES + NEON_SCHEDULES]
                      + [cortexm_workspace_bytes(sp) if sp.schedule in CORTEXM_SCHEDULES else dw_workspace_bytes(sp)
                         for sp in specs if isinstance(sp, DwSpec)], default=0)
    body = [_SHIM_HEAD.replace("@POOL@", str((pool + 63) // 64 * 64))]
    for sp in specs:
        body.append(f"\nint32_t __tvm_ffi_{sp.name}(void *self, void *args, int32_t n, void *result);\n"
                    f"{prototype(sp)} {{\n"
                    f"  void *const p[6] = {{(void *)x, (void *)w, (void *)b, (void *)m, (void *)s, (void *)y}};\n"
                    f"  qk_tir_call(__tvm_ffi_{sp.name}, 6, p);\n}}\n")
    return header, "".join(body)


def shift_range(shifts) -> tuple[int, int]:
    """(min, max) of a layer's per-channel shifts (one home: the spec and kernel_choice's shape key)."""
    a = np.asarray(shifts)
    return int(a.min()), int(a.max())


def step_spec(s, schedule="default") -> DenseSpec:
    """The TIR kernel of package step ``s`` (a :func:`.kernel_choice.tir_candidates` step): shapes,
    dtypes, clamp, requantization variant -- one home for the package, the choice and the tuner.
    ``schedule``: a name of :data:`SCHEDULES`, or a :class:`TunedKernel` (a tuning record's module)."""
    from .kernels_c import conv_dims, dense_dims

    x = s.args[0]
    if x.dtype not in TIR_X_DTYPES or s.out.dtype not in OUT_DTYPES:
        raise UnsupportedOpError(f"TIR kernel: {s.name}: {s.op} {x.dtype} -> {s.out.dtype} has no TIR kernel")
    if x.dtype == "int16" and schedule not in INT16_SCHEDULES:
        raise UnsupportedOpError(f"TIR kernel: {s.name}: {s.op} on int16 x has only the {'/'.join(INT16_SCHEDULES)} "
                                 f"kernel, not {schedule}; choose it or handwritten-c")
    geom = ()
    if s.op == "conv2d_requant":   # a conv of one image: a GEMM over its pixels, channel-major
        c = conv_dims(s)
        d, nchw = {"m": c["oh"] * c["ow"], "k": c["c"] * c["kh"] * c["kw"], "n": c["o"]}, True
        geom = conv_geometry(s) if (c["kh"], c["kw"]) != (1, 1) else ()   # pointwise: no im2col
    else:
        d, nchw = dense_dims(s), False
    shifts = shift_range(s.args[4].val.const)
    kind = "conv" if geom else "conv1x1" if nchw else "dense"
    return DenseSpec(f"qk_tir_{kind}_{s.index}", int(d["m"]), int(d["k"]),
                     (int(d["k"]) + 3) // 4 * 4, int(d["n"]), x.dtype, s.out.dtype, int(s.params["qmin"]),
                     int(s.params["qmax"]), schedule, nchw, shifts[0] >= 33, shifts,
                     tuple(int(v) for v in np.asarray(s.args[4].val.const).reshape(-1)), geom)


def flipped_bias(s) -> np.ndarray:
    """A uint8-input step's bias for the kernel's int8 x (``x ^ 0x80``): ``b + 128 * sum(w)`` per channel."""
    n = int(s.args[1].shape[0])
    b = np.asarray(s.args[2].val.const, np.int64).reshape(-1)
    return (b + 128 * np.asarray(s.args[1].val.const).reshape(n, -1).astype(np.int64).sum(axis=1)).astype(np.int32)


class TunedKernel(str):
    """A kernel choice that is a tuning record's schedule (``tune --target <aarch64 board>``,
    tuning/tune_qemu.py): the string ``"tuned"`` (the package names the kernel ``tensorir-tuned``)
    carrying the scheduled IRModule that :func:`build_object` compiles."""

    def __new__(cls, mod: tvm.IRModule):
        self = super().__new__(cls, "tuned")
        self.mod = mod
        return self


class TirKernelCalls:
    """The call of a dense_requant or pointwise conv2d_requant step chosen for its TIR kernel (``tir_choice``: step index ->
    schedule, set by :func:`.c_package.write_c_package`); a mixin of :class:`.kernels_c.KernelCalls`.
    The TIR call replaces the hand-written one on aarch64 (``QM_TIR``, model.c) and reads the same
    weight arrays; elsewhere (the host's sanitizer build) the hand-written call stays."""

    tir_choice: dict = {}

    def tir_dw_call(self, s, p: dict, wk: dict) -> None:
        """A depthwise 3x3 step's call of its TIR kernel (tir_kernels_dw.py) on the hand-written
        kernel's own arrays (9 taps per row padded to ``kp``)."""
        sched = self.tir_choice[s.index]   # Cortex-M's smlad / mve: tir_kernels_cortexm_dw.py
        sp = (cortexm_dw_spec if sched in CORTEXM_SCHEDULES else dw_spec)(s, sched, kp=wk["kp"])
        self.tir_specs.append(sp)
        hand = self.calls.pop()
        self.calls += ["#if QM_TIR", f"  (void)qm_p{s.index};  /* the hand-written call's parameters */",
                       (f"  {sp.name}({self.ptr(s.args[0], True)}, {wk['wt']}, {wk['bias']}, {wk['mult']}, "
                        f"{wk['shift']}, {self.ptr(s.out)});"), "#else", hand, "#endif"]
        s.c_func = sp.name

    def tir_dense_call(self, s, p: dict, wk: dict) -> None:
        # (Cortex-M's 3x3 stems: tir_kernels_cortexm_conv.py)
        from .tir_kernels_cortexm_conv import im2col_spec, is_im2col_conv

        x, w, bias = s.args[:3]
        sched = self.tir_choice[s.index]
        sp = replace((im2col_spec if is_im2col_conv(s) and sched in CORTEXM_SCHEDULES else step_spec)(s, sched),
                     kp=wk["kp"])   # the package's row padding
        d = {"n": sp.n, "k": sp.k}
        bn = wk["bias"]
        if x.dtype == "uint8":  # flipped to int8: 128 * sum(w) restores the sum
            bn = self.const_array(flipped_bias(s), "int32_t", "b")
        self.tir_specs.append(sp)
        wt = wk["wt"]
        if (sp.schedule in DOTPROD_SCHEDULES and sdot_applies(sp)) or sp.schedule in IM2COL_SCHEDULES:
            # its own copy, prepacked for sdot (a conv's taps padded to kp like a GEMM's k)
            wrows = np.zeros((d["n"], wk["kp"]), np.int8)
            wrows[:, :d["k"]] = w.val.const.reshape(d["n"], d["k"])
            wt = self.const_array(pack_weights_sdot(wrows.reshape(-1), sp), "int8_t", "wsdot")
        elif sp.schedule in I8MM_SCHEDULES and i8mm_applies(sp):   # its own copy, prepacked for smmla (k padded to 8)
            wt = self.const_array(pack_weights_i8mm(w.val.const.reshape(d["n"], d["k"]), sp), "int8_t", "wmmla")
        elif sp.schedule in NEON_SCHEDULES and neon_applies(sp):   # its own int16 copy (tir_kernels_neon.py)
            wt = self.const_array(pack_weights_neon(w.val.const.reshape(d["n"], d["k"]), sp).view(np.int8),
                                  "int8_t", "wsmlal")
        hand = self.calls.pop()
        self.calls += ["#if QM_TIR", f"  (void)qm_p{s.index};  /* the hand-written call's parameters */",
                       *([f"  (void){wk['wt']};"] if wt != wk["wt"] else []),
                       (f"  {sp.name}({self.ptr(x, True)}, {wt}, {bn}, {wk['mult']}, {wk['shift']}, "
                        f"{self.ptr(s.out)});"), "#else", *([f"  (void){bn};"] if bn != wk["bias"] else []),
                       *([f"  (void){wt};"] if wt != wk["wt"] else []), hand,
                       "#endif"]
        s.c_func = sp.name
