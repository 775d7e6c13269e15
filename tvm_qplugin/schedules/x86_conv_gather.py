"""The activation gather of ``x86_int8.Conv2DTensorized`` (its ``x_packed`` stage: ``kp``
reduction elements per output pixel, an im2col for KxK), scheduled so that LLVM turns it into
interleaving stores and unit-stride or strided row copies, with the image borders split off.
"""
from __future__ import annotations

from tvm import te, tirx

from ..ops.conv_narrowed import narrowed_input


def _border_parts(out: int, extent: int, size: int, taps: int, stride: int, dilation: int, pad_lo: int) -> list[int]:
    """Lengths of the consecutive ranges of one output axis (``extent`` >= ``out`` positions, the
    ones past ``out`` clamped to the last) whose input windows may cross the low border, stay
    inside, may cross the high border, and the clamped pad positions: inside the middle range the
    gather's bounds tests and clamps are provably true and fold away."""
    lo = min(out, -(-pad_lo // stride))                                            # first i with i*s - pad >= 0
    hi = max(lo, min(out, -(-(size + pad_lo - (taps - 1) * dilation) // stride)))  # first past the end
    return [lo, hi - lo, out - hi, extent - out]


def _schedule_gather(sch, info) -> None:
    """The gather stage, ``kp`` reduction elements per pixel innermost and unrolled, so that LLVM
    vectorizes the pixel loop into an interleaving store (and contiguous or strided loads).

    * flat (1x1, stride 1, no padding): one loop over the pixels, read with unit stride.
    * rows: the pixels as (output row, output column), each loop split at the borders
      (:func:`_border_parts`) so that the bounds tests and row clamps fold out of the interior:
      each (channel, ky, kx) becomes a plain strided row copy there instead of per-element index
      arithmetic.
    The (image, reduction group) loop runs in parallel."""
    xp = sch.get_sblock("x_packed")
    if info.get("split_cols"):
        cols = sch.get_sblock("x_cols")
        cb, cc, cr, cpar, chalf = sch.get_loops(cols)
        sch.reorder(chalf, cpar)
        sch.parallel(sch.fuse(cb, cc, cr))
        sch.unroll(cpar)
    if info["gather"] == "flat":
        pb, pc, pq, pj = sch.get_loops(xp)
        real = info["out_shape"][2] * info["out_shape"][3]
        parts = [(pq, [real, info["acc_shape"][2] - real])]
    else:
        ow = info["out_shape"][3]
        sch.transform_block_layout(xp, lambda b, kb, q, j: (b, kb, q // ow, q % ow, j))
        pb, pc, py, px, pj = sch.get_loops(xp)
        parts = [(px, info["col_parts"]), (py, info["row_parts"])]
    sch.parallel(sch.fuse(pb, pc))
    sch.unroll(pj)
    for loop, lengths in parts:  # a loop over pad lanes / border pixels apart: no clamp or test inside
        lengths = [n for n in lengths if n]
        if len(lengths) > 1:
            sch.loop_partition(loop, [*lengths[:-1], None])


def activation_input(xs, adt: str, params: dict):
    """``(input placeholder, x, trailing placeholders)`` of a packed conv: ``x`` is the ``adt``
    operand its gather reads. For ``conv2d_requant_narrowed`` (x86_narrowing.py) the input is the
    int16 tensor and ``x`` its narrowing (ops/conv_narrowed.py), a stage that
    :func:`_inline_narrowing` folds into the gather; its multiplier and shift come last, after the
    per-channel constants (the call's argument order)."""
    if "in_dtype" not in params:
        x = te.placeholder(xs, adt, name="x")
        return x, x, []
    wide = te.placeholder(xs, "int16", name="x_wide")
    mult = te.placeholder((1,), "int64", name="in_multiplier")
    shift = te.placeholder((1,), "int64", name="in_shift")
    if not INT32_NARROWING:  # the op's own int64 expression (the measured alternative)
        return wide, narrowed_input(wide, mult, shift, params["in_qmin"], params["in_qmax"], params["in_dtype"]), [mult, shift]
    return wide, _narrowed_int32(wide, mult, shift, params), [mult, shift]


# the shifts for which :func:`_narrowed_int32` is exact (with a multiplier in [0, 2**31))
INT32_NARROWING_SHIFTS = (17, 46)
INT32_NARROWING = True


def narrowing_fits_int32(multiplier: int, shift: int) -> bool:
    """Whether the gather's int32 narrowing computes this requantize's integers (x86_narrowing.py
    fuses only those: every narrowing of the int16 stream to 8 bits, ``shift`` ~ 38)."""
    lo, hi = INT32_NARROWING_SHIFTS
    return 0 <= multiplier < 2**31 and lo <= shift <= hi


def _narrowed_int32(wide, mult, shift, params: dict) -> te.Tensor:
    """The requantize ``clamp((x * m + 2**(s-1)) >> s)`` of an int16 ``x`` in int32 arithmetic only
    (``vpmulld``; the int64 product is several instructions per lane on AVX2, which has no 64-bit
    multiply, and made the fused gather slower than a separate requantize pass there).

    With ``m = mh * 2**16 + ml`` (``mh < 2**15``, ``ml < 2**16``) and ``s >= 17`` (so the rounding
    term ``2**(s-1)`` is ``2**(s-17) * 2**16``): ``x * m + 2**(s-1) = 2**16 * (x * mh + 2**(s-17)) +
    x * ml``, and ``floor((2**16 * Q + t) / 2**s) = floor((Q + floor(t / 2**16)) / 2**(s-16))``
    for any integers, so ``y = (x * mh + 2**(s-17) + (x * ml >> 16)) >> (s - 16)`` -- the same
    integers. No int32 overflows: ``|x * ml| <= 32768 * 65535 < 2**31`` and, for ``s <= 46``,
    ``|x * mh| + 2**(s-17) + 2**15 <= 2**30 + 2**29 + 2**15 < 2**31``
    (:func:`narrowing_fits_int32`; tests/test_wide_inputs_fused.py runs every int16 value)."""
    qmin, qmax, dt = params["in_qmin"], params["in_qmax"], params["in_dtype"]
    i32 = "int32"
    m_high = (mult[0] >> tirx.const(16, "int64")).astype(i32)
    m_low = (mult[0] & tirx.const(0xFFFF, "int64")).astype(i32)
    s_high = (shift[0] - tirx.const(16, "int64")).astype(i32)
    half = tirx.const(1, i32) << (shift[0] - tirx.const(17, "int64")).astype(i32)

    def narrow(*i):
        x = wide(*i).astype(i32)
        y = (x * m_high + half + ((x * m_low) >> tirx.const(16, i32))) >> s_high
        return tirx.max(tirx.min(y, tirx.const(qmax, i32)), tirx.const(qmin, i32)).astype(dt)

    return te.compute(wide.shape, narrow, name="x_narrow")


def _inline_narrowing(sch) -> None:
    """The narrowing, if any, computed in the gather itself: each int16 element requantized in
    registers where it is read, no 8-bit copy of the input in memory."""
    try:
        block = sch.get_sblock("x_narrow")
    except Exception:  # noqa: BLE001 -- s_tir raises a plain error for a missing block
        return
    sch.compute_inline(block)
