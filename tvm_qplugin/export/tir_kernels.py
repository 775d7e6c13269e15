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

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tvm
from tvm.script import tirx as T

from ..errors import UnsupportedOpError
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
from .tir_kernels_neon import (
    INT16_SCHEDULES,
    NEON_SCHEDULES,
    neon_applies,
    neon_module,
    pack_weights_neon,
)
from .tir_kernels_neon import workspace_bytes as neon_workspace_bytes
from .tir_kernels_sdot import (  # the sdot4x4 kernel
    pack_weights_sdot,
    sdot_applies,
    sdot_module,
    workspace_bytes,
)
from .tir_kernels_sdot_conv import (  # a small-channel conv (the 3x3 stem) by im2col and sdot
    IM2COL_SCHEDULES,
    conv_geometry,
    im2col_applies,
    im2col_module,
    im2col_workspace_bytes,
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


@dataclass(frozen=True)
class KernelKind:
    """A family of TIR kernels: the schedule names it builds, why it cannot build a spec for a board
    (``refusal``: the text after "TIR kernel <name>: ", None when it can), its unbuilt module and
    the workspace bytes its accumulators and packed blocks take from the shim's pool. A new kernel
    family is one entry of :data:`KINDS` (and its candidates in kernel_choice.py)."""

    schedules: tuple
    refusal: Callable
    module: Callable
    workspace: Callable


def _features(board) -> str:
    return f"board {board.name}: {list(board.features)}"


def _gemm_refusal(needs: Callable | None = None) -> Callable:
    """A GEMM kernel's refusal: a conv with taps (the GEMMs read x as a pointwise conv's), then ``needs``."""
    def refusal(sp, board):
        if sp.conv:
            return (f"a {sp.conv[3]}x{sp.conv[4]} conv has only the {IM2COL_SCHEDULES[0]} kernel, not {sp.schedule}; "
                    "choose it or handwritten-c")
        return needs(sp, board) if needs else None
    return refusal


def _nchw_only(workspace: Callable) -> Callable:
    """Kernels that pack a pointwise conv's block of pixels; a dense layer's x is read in place."""
    return lambda sp: workspace(sp) if sp.nchw else 0


TUNED = KernelKind((), lambda sp, board: None, lambda sp: sp.schedule.mod,
                   lambda sp: sp.m * sp.kp + 4 * sp.m * sp.n)   # may keep all of x packed and every accumulator
DEPTHWISE = KernelKind(("dw3x3",), lambda sp, board: None, dw_module, dw_workspace_bytes)  # tir_kernels_dw.py
CORTEXM = KernelKind(CORTEXM_SCHEDULES, lambda sp, board: None if cortexm_applies(sp.schedule, board) else (
    f"{sp.schedule} needs a Cortex-M core with {'MVE' if sp.schedule == 'mve' else 'the DSP extension'} "
    f"({_features(board)}); choose another schedule"), cortexm_module, cortexm_workspace_bytes)  # GEMM and depthwise
DEFAULT = KernelKind(("default", "tiled", "tiled2x4", "tiled4x4"), _gemm_refusal(),
                     lambda sp: _schedule(_dense_module(sp), sp), _nchw_only(lambda sp: 4 * sp.kp))
KINDS = (
    CORTEXM,
    KernelKind(IM2COL_SCHEDULES, lambda sp, board: None if "dotprod" in board.features and im2col_applies(sp) else (
        f"{sp.schedule} needs the dot-product extension ({_features(board)}), a conv of int8 x with 4 | n and "
        "every shift >= 31; choose another schedule"), im2col_module, _nchw_only(im2col_workspace_bytes)),
    KernelKind(DOTPROD_SCHEDULES, _gemm_refusal(lambda sp, board: None if "dotprod" in board.features and sdot_applies(
        sp) else (f"{sp.schedule} needs the dot-product extension ({_features(board)}) and n, k multiples of 4 "
                  f"(n={sp.n}, k={sp.k}); choose another schedule")), sdot_module, _nchw_only(workspace_bytes)),
    KernelKind(I8MM_SCHEDULES, _gemm_refusal(lambda sp, board: None if "i8mm" in board.features and i8mm_applies(
        sp) else (f"{sp.schedule} needs the int8 matrix multiply (i8mm; {_features(board)}) and an even n "
                  f"(n={sp.n}); choose another schedule")), i8mm_module, i8mm_workspace_bytes),
    KernelKind(NEON_SCHEDULES, _gemm_refusal(lambda sp, board: None if neon_applies(sp) else (
        f"{sp.schedule} needs the pixels or the output channels in groups of 4 (m={sp.m}, n={sp.n}); "
        "choose another schedule")), neon_module, neon_workspace_bytes),
)


def kernel_kind(sp) -> KernelKind:
    """The family that builds ``sp``: a tuning record's module, a depthwise spec's own kernel (on
    Cortex-M, its SMLAD / MVE one), else the family of its schedule name (``default`` and the tiled
    ones: :func:`_schedule`)."""
    if isinstance(sp.schedule, TunedKernel):
        return TUNED
    if isinstance(sp, DwSpec) and sp.schedule not in CORTEXM_SCHEDULES:
        return DEPTHWISE
    return next((kind for kind in KINDS if sp.schedule in kind.schedules), DEFAULT)


def build_object(specs: list[DenseSpec], board, path: Path) -> list[Path]:
    """Compile every kernel for ``board`` (:func:`object_target`) into one object each; return their
    paths (``<path stem>_<name>.o``)."""
    target = object_target(board)
    out = []
    for sp in specs:
        if sp.x_dtype == "int16" and sp.schedule not in INT16_SCHEDULES:   # the others read x as 8-bit
            raise UnsupportedOpError(f"TIR kernel {sp.name}: int16 x has only the {'/'.join(INT16_SCHEDULES)} "
                                     f"kernel, not {sp.schedule}; choose it or handwritten-c")
        kind = kernel_kind(sp)
        why = kind.refusal(sp, board)
        if why is not None:
            raise UnsupportedOpError(f"TIR kernel {sp.name}: {why}")
        mod = kind.module(sp)
        mod["main"] = mod["main"].with_attr("global_symbol", sp.name)
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
            lib = tvm.tirx.build(mod, target=target)
        p = path.parent / f"{path.stem}_{sp.name}.o"
        lib.write_to_file(str(p))
        out.append(p)
    return out


OUT_DTYPES = ("uint8", "int8", "int16", "int32")
TIR_X_DTYPES = ("uint8", "int8", "int16")   # int16 x: only INT16_SCHEDULES (smlal, tir_kernels_neon.py)


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

        x, w = s.args[:2]
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
