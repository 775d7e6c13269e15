"""TensorIR kernels for Cortex-M boards: ``smlad`` (Armv7E-M DSP: M4/M7/M33/M55) and ``mve``
(Armv8.1-M Helium: M55), candidates of :mod:`.kernel_choice` beside the hand-written kernels
(issue 11, deliverable 1).

Why kernels of their own: LLVM compiles the plain dot-product loop of :mod:`.tir_kernels` for
``thumbv7em`` to one ``smlabb`` per MAC (it never forms the SIMD ``smlad``), and for
``thumbv8.1m.main`` + MVE to ``vmlava.u32`` on int32x4 lanes (4 MACs per instruction, after
widening every byte). Both kernels here name the instruction through its LLVM intrinsic:

1. ``smlad``: the x row (or pixel) is packed once per tile into int16 pairs matching ``SXTB16``
   of a weight word -- word 2q = (x[4q], x[4q+2]), word 2q+1 = (x[4q+1], x[4q+3]), zero past k,
   uint8 flipped to int8 -- so each weight word (4 k, read from the package's own rows of ``kp``
   bytes) costs one load, ``SXTB16`` of it and of its 8-bit rotation, and two ``SMLAD``. Tiles of
   2 rows x 2 channels (4 accumulators, 4 x words live) or, for a single row, 1 x 4 channels.
2. ``mve``: the x row packed once per pixel into int8, zero-padded to 16 | k (LLVM keeps it in q
   registers across the channels), so every step is one 16-byte load of w feeding ``VMLADAVA.S8``
   (16 MACs); tiles of 1 pixel x 4 channels -- with 8 accumulators LLVM runs out of the even
   registers ``VMLADAVA`` needs and spills -- and the 4 channels requantized on one int32x4
   (:func:`_requant4_mve`, shifts >= 31).

Otherwise the requantization and clamp are :mod:`.tir_kernels`'s (one home: :func:`.tir_kernels.requant`).
The package calls these objects exactly as it calls the aarch64 ones (the packed entry, DLTensors
whose data pointers are its own arrays: :func:`.tir_shim.shim_sources`); the packed x lives in
the kernel's workspace (:func:`workspace_bytes`), served from the shim's static pool.

Note: the weights are not prepacked (no second copy in flash, unlike ``sdot4x4``): a weight word
is read where the hand-written kernel reads it.
"""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

CORTEXM_SCHEDULES = ("smlad", "mve")
SMLAD = T.llvm_lookup_intrinsic_id("llvm.arm.smlad")
SXTB16 = T.llvm_lookup_intrinsic_id("llvm.arm.sxtb16")
VMLADAVA = T.llvm_lookup_intrinsic_id("llvm.arm.mve.vmldava.v16i8")
VQDMULH = T.llvm_lookup_intrinsic_id("llvm.arm.mve.vqdmulh.v4i32")
VQRDMULH = T.llvm_lookup_intrinsic_id("llvm.arm.mve.vqrdmulh.v4i32")
VRSHL = T.llvm_lookup_intrinsic_id("llvm.arm.mve.vshl.vector.v4i32.v4i32")   # (v, shifts, saturate, round, unsigned)
MVE_K = 16   # bytes per MVE vector


def cortexm_applies(schedule: str, board) -> bool:
    """Whether ``board``'s core runs ``schedule``: ``smlad`` needs the DSP extension, ``mve`` Helium."""
    feats = set(board.features)
    return board.family == "cortex-m" and {"smlad": "dsp", "mve": "mve"}[schedule] in feats


def _tile(sp) -> tuple[int, int]:
    """(rows, channels) per register tile: 2 x 2 (smlad; measured: 1 x 4 and 2 x 4 spill), 1 x 4
    (mve, and a single row); the channels shrink to what divides n (1 at worst)."""
    rows = 1 if sp.m == 1 or sp.schedule == "mve" else 2
    want = 4 if rows == 1 else 2
    return rows, next(c for c in (want, 2, 1) if sp.n % c == 0)


def _kpad(sp) -> int:
    """Bytes of one packed x row: int16 pairs of kp (smlad: 2 kp bytes), or k rounded up to 16 (mve)."""
    return 2 * sp.kp if sp.schedule == "smlad" else (sp.k + MVE_K - 1) // MVE_K * MVE_K


def workspace_bytes(sp) -> int:
    """Workspace of one kernel (TVMBackendAllocWorkspace): its packed rows of x, one tile's worth (a
    depthwise 3x3 conv: its padded plane, :func:`.tir_kernels_cortexm_dw.dw_workspace_bytes`)."""
    from .tir_kernels_dw import DwSpec

    if isinstance(sp, DwSpec):
        from .tir_kernels_cortexm_dw import dw_workspace_bytes

        return dw_workspace_bytes(sp)
    return _tile(sp)[0] * _kpad(sp)


def _vector_requant(sp) -> bool:
    """MVE: the requantization of a tile row's 4 channels on one int32x4 (every shift >= 31)."""
    return sp.schedule == "mve" and _tile(sp)[1] == 4 and sp.shift_range[0] >= 31


def _requant4_mve(sp, s, mu, sh):
    """quant/dyadic.py's requantization of 4 outputs (``s``: int32x4, bias included), shifts >= 31,
    clamped: ``vrshl(vqdmulh(s, mu), 31 - shift)``, or ``vqrdmulh(s, mu)`` at shift 31 -- exact, as
    tir_kernels_sdot.py's ``_requant4`` derives for NEON's ``srshl`` / ``sqdmulh`` (the same arithmetic)."""
    smin, smax = sp.shift_range
    c = T.Cast("int32x4", sh)
    exact = T.call_llvm_pure_intrin("int32x4", VRSHL, T.call_llvm_pure_intrin("int32x4", VQDMULH, s, mu),
                                    T.Broadcast(T.int32(31), 4) - c, T.int32(0), T.int32(1), T.int32(0))
    at31 = T.call_llvm_pure_intrin("int32x4", VQRDMULH, s, mu)
    v = at31 if smax == 31 else exact if smin >= 32 else T.Select(c == T.Broadcast(T.int32(31), 4), at31, exact)
    return T.Cast(f"{sp.out_dtype}x4", T.max(T.min(v, T.Broadcast(T.int32(sp.qmax), 4)),
                                             T.Broadcast(T.int32(sp.qmin), 4)))


def cortexm_module(sp) -> tvm.IRModule:
    """The IRModule of one Cortex-M kernel (``main``: the packed wrapper reads the DLTensors' data); a
    depthwise 3x3 conv's (a :class:`~.tir_kernels_dw.DwSpec`) is :mod:`.tir_kernels_cortexm_dw`'s."""
    from .tir_kernels import requant
    from .tir_kernels_cortexm_dw import cortexm_dw_module
    from .tir_kernels_dw import DwSpec

    if isinstance(sp, DwSpec):
        return cortexm_dw_module(sp)
    from .tir_kernels_cortexm_conv import Im2colSpec, im2col_tap

    im2col = isinstance(sp, Im2colSpec)   # a small-window conv: x (c, h, w), each row a pixel's window
    pack = T.unroll if im2col else T.serial   # (unrolled: every tap's offsets constant)

    m, k, kp, n, xd, od, flip = sp.m, sp.k, sp.kp, sp.n, sp.x_dtype, sp.out_dtype, sp.flip
    rows, cols = _tile(sp)
    mtile, kw = (m + rows - 1) // rows, kp // 4
    kpad = _kpad(sp)
    kv = kpad // MVE_K
    xshape = (sp.c * sp.h * sp.w,) if im2col else (k, m) if sp.nchw else (m, k)

    def xval(X, i, kk):   # x[i, kk] as int8 (uint8 flipped), channel-major for a pointwise conv
        v = im2col_tap(sp, X, i, kk) if im2col else X[kk, i] if sp.nchw else X[i, kk]
        return T.Cast("int8", T.bitwise_xor(v, T.uint8(128))) if flip else T.Cast("int8", v)

    def row(ib, r):   # rows past m repeat the last one
        return T.min(ib * rows + r, m - 1)

    def xk16(X, i, kk):   # x[i, kk] as int16 low half (0 past k)
        return T.if_then_else(kk < k, T.Cast("int32", xval(X, i, T.min(kk, k - 1))) & 0xFFFF, 0)

    def yidx(i, j):
        return (j, i) if sp.nchw else (i, j)

    def ystart(i, j):   # flat index of y[i, j]
        return j * m + i if sp.nchw else i * n + j

    vec = _vector_requant(sp)

    def xword(XP, XP64, r, q, h):   # packed word h of x's 4 k at q; 2-row tiles: both words from one LDRD
        if rows == 1:   # (measured: a single row's loop runs faster on plain word loads)
            return XP[(r * kw + q) * 2 + h]
        return T.Cast("int32", XP64[r * kw + q] >> T.int64(32)) if h else T.Cast("int32", XP64[r * kw + q])

    if sp.schedule == "smlad":
        @T.prim_func
        def main(X: T.Buffer(xshape, xd), W: T.Buffer((n * kp,), "int8"), B: T.Buffer((n,), "int32"),
                 MU: T.Buffer((n,), "int32"), SH: T.Buffer((n,), "int8"), Y: T.Buffer((m * n,), od)):
            T.func_attr({"tirx.noalias": True})
            XP = T.alloc_buffer((rows * kw * 2,), "int32")
            XP64 = T.decl_buffer((rows * kw,), "int64", data=XP.data)   # both words of 4 k in one LDRD
            acc = T.alloc_buffer((rows * cols,), "int32", scope="local")
            Ww = T.decl_buffer((n * kw,), "int32", data=W.data)
            Y2 = T.decl_buffer((n, m) if sp.nchw else (m, n), od, data=Y.data)
            for ib in T.serial(mtile):
                for r in T.serial(rows):   # words (x[4q+h], x[4q+h+2]) of the tile's rows
                    for q in pack(kw):
                        for h in pack(2):
                            XP[(r * kw + q) * 2 + h] = (xk16(X, row(ib, r), 4 * q + h)
                                                        | (xk16(X, row(ib, r), 4 * q + h + 2) << 16))
                for jo in T.serial(n // cols):
                    for r, c in T.grid(rows, cols):
                        acc[r * cols + c] = B[jo * cols + c]
                    for q in T.serial(kw):
                        for c in T.unroll(cols):
                            for r in T.unroll(rows):
                                acc[r * cols + c] = T.call_llvm_pure_intrin(
                                    "int32", SMLAD, xword(XP, XP64, r, q, 0),
                                    T.call_llvm_pure_intrin("int32", SXTB16, Ww[(jo * cols + c) * kw + q]),
                                    acc[r * cols + c])
                                acc[r * cols + c] = T.call_llvm_pure_intrin(
                                    "int32", SMLAD, xword(XP, XP64, r, q, 1),
                                    T.call_llvm_pure_intrin("int32", SXTB16, T.bitwise_or(
                                        T.shift_right(T.Cast("uint32", Ww[(jo * cols + c) * kw + q]), T.uint32(8)),
                                        T.shift_left(T.Cast("uint32", Ww[(jo * cols + c) * kw + q]), T.uint32(24)))
                                        .astype("int32")),
                                    acc[r * cols + c])
                    for r, c in T.grid(rows, cols):
                        if ib * rows + r < m:
                            Y2[yidx(ib * rows + r, jo * cols + c)] = requant(sp, acc[r * cols + c], jo * cols + c,
                                                                            B, MU, SH, biased=True)
        return tvm.IRModule({"main": main})

    @T.prim_func
    def main(X: T.Buffer(xshape, xd), W: T.Buffer((n * kp,), "int8"), B: T.Buffer((n,), "int32"),
             MU: T.Buffer((n,), "int32"), SH: T.Buffer((n,), "int8"), Y: T.Buffer((m * n,), od)):
        T.func_attr({"tirx.noalias": True})
        XP = T.alloc_buffer((rows * kpad,), "int8")
        acc = T.alloc_buffer((rows * cols,), "int32", scope="local")
        Y2 = T.decl_buffer((n, m) if sp.nchw else (m, n), od, data=Y.data)
        for ib in T.serial(mtile):
            for r in T.serial(rows):   # 4 bytes per pass (a channel-major x is gathered m apart), then 0 past k
                for q in pack(k // 4):
                    for u in T.unroll(4):
                        XP[r * kpad + q * 4 + u] = xval(X, row(ib, r), q * 4 + u)
                for kk in pack(kpad - k // 4 * 4):
                    XP[r * kpad + k // 4 * 4 + kk] = T.if_then_else(
                        k // 4 * 4 + kk < k, xval(X, row(ib, r), T.min(k // 4 * 4 + kk, k - 1)), T.int8(0))
            for jo in T.serial(n // cols):
                for r, c in T.grid(rows, cols):
                    acc[r * cols + c] = B[jo * cols + c]
                for v in T.serial(kv):
                    for c in T.unroll(cols):
                        for r in T.unroll(rows):
                            # the weight row's last vector may run past kp into the next row (or the
                            # array's end, within its 16-byte alignment): x is 0 there
                            acc[r * cols + c] = T.call_llvm_pure_intrin(
                                "int32", VMLADAVA, T.int32(0), T.int32(0), T.int32(0), acc[r * cols + c],
                                XP[T.Ramp(r * kpad + v * MVE_K, 1, MVE_K)],
                                W[T.Ramp((jo * cols + c) * kp + v * MVE_K, 1, MVE_K)])
                for r in T.serial(rows):
                    if ib * rows + r < m:
                        if vec:   # 4 channels of one row at once; a pointwise conv's 4 channels are m apart
                            Y[T.Ramp(ystart(ib * rows + r, jo * 4), m if sp.nchw else 1, 4)] = _requant4_mve(
                                sp, acc[T.Ramp(r * 4, 1, 4)], MU[T.Ramp(jo * 4, 1, 4)], SH[T.Ramp(jo * 4, 1, 4)])
                        else:
                            for c in T.serial(cols):
                                Y2[yidx(ib * rows + r, jo * cols + c)] = requant(
                                    sp, acc[r * cols + c], jo * cols + c, B, MU, SH, biased=True)
    return tvm.IRModule({"main": main})
