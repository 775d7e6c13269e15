"""Integer-only softmax, GELU and LayerNorm (I-ViT, I-BERT and division-free variants).

Each op is a TE kernel beside its NumPy twin; every constant comes from
:mod:`tvm_qplugin.quant.nonlinear_consts` (derived in Python from the float params), the data
arithmetic is written twice. All data arithmetic is int32/int64: no float dtype reaches the TIR.

``variant``:

* ``"ivit"``  -- I-ViT: Shiftmax, ShiftGELU, I-LayerNorm (Newton sqrt, 10 steps).
* ``"ibert"`` -- I-BERT: i-exp softmax, i-GELU (erf polynomial), I-LayerNorm with an exact isqrt.
* ``"division-free"`` -- the I-ViT ops with every data division replaced: divisions by a
  constant become a magic multiply + shift (exact, :func:`div_const`); the per-row reciprocal
  ``floor((2**31-1)/s)`` and the isqrt are Newton iterations on multiplies and shifts, normalised
  by a count-leading-zeros sum of comparisons, then fixed up by +-2 exact integer steps. Both
  results are exact (reciprocal: Newton error in [-2, 0] over *all* s in [1, 2**31); isqrt:
  error in [-1, 1] for V < 2**56), so the division-free ops equal the I-ViT ones bit for bit
  (LayerNorm: up to I-ViT's sqrt, which may end one above isqrt).

Output conventions: softmax -> uint8 at scale 2**-8 or int16 at 2**-15 (probability 1.0 saturates);
GELU and LayerNorm -> ``out_dtype`` at ``out_scale`` through the dyadic rule of quant/dyadic.py.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant import round_shift_ref
from ..quant import nonlinear_consts as nc
from .registry import IntegerOp, register_op
from .requant import clamp_cast, requant, round_shift

# ----------------------------------------------------------------------------------- TE helpers


def _c(v) -> tirx.PrimExpr:
    return tirx.const(int(v), "int64")


def _ind(cond):
    return tirx.if_then_else(cond, _c(1), _c(0))


def _stage(like: te.Tensor, fn, name: str) -> te.Tensor:
    """One int64 stage shaped like ``like``. Iterations are stages, not nested ``Let`` s:
    TVM's CompactBufferAllocation expands Let chains exponentially."""
    return te.compute(like.shape, lambda *i: fn(*i).astype("int64"), name=name)


def _te_bitlen(v, bits: int):
    """Bit length of ``0 <= v < 2**bits`` as a sum of comparisons (no loop, no division)."""
    out = _ind(v >= _c(1))
    for j in range(1, bits):
        out = out + _ind(v >= _c(1 << j))
    return out


def _te_pre(d, k: int):
    if k < 0:
        return d << _c(-k)
    return round_shift(d, k) if k > 0 else d


def _te_shiftexp(d, se: nc.ShiftExpConsts, division_free: bool):
    """ShiftExp of ``d <= 0`` (already pre-shifted), int64 expression."""
    ip = d + (d >> _c(1)) - (d >> _c(4))
    if se.poly == 2:
        ip = ip + (d >> _c(8)) + (d >> _c(10))
    ip = tirx.max(ip, _c(se.ip_min))
    q = ((_c(0) - ip) * _c(se.div.m)) >> _c(se.div.s) if division_free else tirx.floordiv(ip, _c(se.i0))
    r = ip - q * _c(se.i0)
    base = (r >> _c(1)) - _c(se.i0)
    if se.poly == 2:
        base = base + ((r * (r - _c(se.i0)) * _c(se.quad_m)) >> _c(se.quad_s))
    return (base << _c(se.n)) >> q


def _te_ibert_exp(d, ce: nc.IBertExpConsts):
    """I-BERT i-exp of ``d <= 0`` (pre-shifted), int64 expression."""
    xc = tirx.max(d, _c(ce.q_clamp * ce.x0))
    q = tirx.floordiv(xc, _c(ce.x0))
    r = xc - q * _c(ce.x0)
    return ((r * (r + _c(ce.b)) + _c(ce.c)) << _c(ce.n)) >> (q + _c(ce.z_shift))


def _te_newton_q30(s: te.Tensor, name: str) -> tuple[te.Tensor, te.Tensor]:
    """``(e, y)``: ``e = bitlen(s)`` and the Q30 Newton reciprocal ``y ~ 2**(29+e) / s`` of the
    normalised ``d = s << (31 - e)`` (``y0 = 24/17 - 8/17 u``, RECIP_ITERS steps)."""
    e = _stage(s, lambda *i: _te_bitlen(s(*i), 31), f"{name}_clz")
    d = _stage(s, lambda *i: s(*i) << (_c(31) - e(*i)), f"{name}_norm")
    y = _stage(s, lambda *i: _c(nc.RECIP_C1) - ((_c(nc.RECIP_C2) * d(*i)) >> _c(30)), f"{name}_y0")
    for it in range(nc.RECIP_ITERS):
        y = _stage(s, lambda *i, y=y: (y(*i) * (_c(1 << 31) - ((d(*i) * y(*i)) >> _c(30)))) >> _c(30), f"{name}_y{it + 1}")
    return e, y


def _te_fix_up(s: te.Tensor, num, est, name: str) -> te.Tensor:
    """``floor(num / s)`` from an estimate within +-NEWTON_CORRECTION of it: exact integer steps."""
    def fix(*i):
        rem, out = num(*i) - est(*i) * s(*i), est(*i)
        for j in range(1, nc.NEWTON_CORRECTION + 1):
            out = out + _ind(rem >= _c(j) * s(*i)) - _ind(rem < _c(1 - j) * s(*i))
        return out
    return _stage(s, fix, name)


def _te_recip(s: te.Tensor, name: str) -> te.Tensor:
    """``floor((2**31 - 1) / s)`` for int64 ``1 <= s < 2**31``: Q30 Newton + exact fix-up."""
    e, y = _te_newton_q30(s, name)
    r0 = _stage(s, lambda *i: (_c(nc.INT32_MAX) * y(*i)) >> (_c(29) + e(*i)), f"{name}_r0")
    return _te_fix_up(s, lambda *i: _c(nc.INT32_MAX), r0, name)


def _te_recip_norm(s: te.Tensor, division_free: bool, name: str) -> tuple[te.Tensor, te.Tensor]:
    """``(f, e)`` with ``e = bitlen(s)`` and ``f = floor(2**(30+e) / s)`` in ``(2**30, 2**31]`` for int64
    ``1 <= s < 2**31``: a 31-bit reciprocal whatever the size of ``s`` (softmax's row sum).
    division-free: ``2 y`` from the Q30 Newton of :func:`_te_recip` is within +-2 of it; fixed up exactly."""
    if not division_free:
        e = _stage(s, lambda *i: _te_bitlen(s(*i), 31), f"{name}_bitlen")
        return _stage(s, lambda *i: tirx.floordiv(_c(1) << (_c(30) + e(*i)), s(*i)), name), e
    e, y = _te_newton_q30(s, name)
    return _te_fix_up(s, lambda *i: _c(1) << (_c(30) + e(*i)), lambda *i: y(*i) << _c(1), name), e


def _te_isqrt_newton(v: te.Tensor, name: str) -> te.Tensor:
    """``isqrt(v)`` for int64 ``1 <= v < 2**56``: Q30 reciprocal-sqrt Newton + exact fix-up."""
    t = _stage(v, lambda *i: _c(31) - ((_te_bitlen(v(*i), 62) + _c(1)) >> _c(1)), f"{name}_clz")
    y = _stage(v, lambda *i: (v(*i) << (t(*i) + t(*i))) >> _c(30), f"{name}_norm")
    x = _stage(v, lambda *i: _c(nc.RSQRT_A) - ((_c(nc.RSQRT_B) * y(*i)) >> _c(30)), f"{name}_x0")
    for it in range(nc.RSQRT_ITERS):
        x = _stage(v, lambda *i, x=x: (x(*i) * (_c(3 << 30) - ((y(*i) * ((x(*i) * x(*i)) >> _c(30))) >> _c(30))))
                   >> _c(31), f"{name}_x{it + 1}")
    k0 = _stage(v, lambda *i: ((y(*i) * x(*i)) >> _c(30)) >> t(*i), f"{name}_k0")

    def fix(*i):
        k, out = k0(*i), k0(*i)
        for j in range(1, nc.NEWTON_CORRECTION + 1):
            out = out + _ind((k + _c(j)) * (k + _c(j)) <= v(*i)) - _ind((k - _c(j - 1)) * (k - _c(j - 1)) > v(*i))
        return out
    return _stage(v, fix, name)


def _te_isqrt_div(v: te.Tensor, iters: int, keep_min: bool, name: str) -> te.Tensor:
    """Integer Newton ``k <- (k + v // k) >> 1`` from ``2**ceil(bitlen(v)/2) >= sqrt(v)``."""
    k = _stage(v, lambda *i: _c(1) << ((_te_bitlen(v(*i), 62) + _c(1)) >> _c(1)), f"{name}_k0")
    for it in range(iters):
        def step(*i, k=k):
            nxt = (k(*i) + tirx.floordiv(v(*i), k(*i))) >> _c(1)
            return tirx.min(k(*i), nxt) if keep_min else nxt
        k = _stage(v, step, f"{name}_k{it + 1}")
    return k


def _row(x):
    lead = tuple(int(d) for d in x.shape[:-1])
    return lead, int(x.shape[-1])


# -------------------------------------------------------------------------------- NumPy helpers


def _np_pre(d, k: int):
    return d << -k if k < 0 else (round_shift_ref(d, k) if k > 0 else d)


def _np_bitlen(v):
    n, t = np.zeros_like(v), v.copy()
    while np.any(t > 0):
        n += t > 0
        t >>= 1
    return n


def _np_newton_q30(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of :func:`_te_newton_q30`: ``(e, y)``."""
    e = _np_bitlen(s)
    d = s << (31 - e)
    y = nc.RECIP_C1 - ((nc.RECIP_C2 * d) >> 30)
    for _ in range(nc.RECIP_ITERS):
        y = (y * ((1 << 31) - ((d * y) >> 30))) >> 30
    return e, y


def _np_fix_up(s, num, est):
    """NumPy twin of :func:`_te_fix_up`."""
    rem = num - est * s
    return est + sum((rem >= j * s).astype(np.int64) - (rem < (1 - j) * s) for j in range(1, nc.NEWTON_CORRECTION + 1))


def np_recip(s, correct: bool = True):
    """NumPy twin of :func:`_te_recip`; equals ``(2**31 - 1) // s`` on ``[1, 2**31)``.

    ``correct=False`` returns the Newton estimate before the fix-up: it lies in
    ``[floor - 2, floor]`` for every s (checked exhaustively over all 2**31 - 1 values).
    """
    s = np.asarray(s, dtype=np.int64)
    e, y = _np_newton_q30(s)
    r = (nc.INT32_MAX * y) >> (29 + e)
    return _np_fix_up(s, nc.INT32_MAX, r) if correct else r


def np_recip_norm(s, division_free: bool = True, correct: bool = True):
    """NumPy twin of :func:`_te_recip_norm`: ``(floor(2**(30+e) / s), e)``, ``e = bitlen(s)``.

    ``correct=False`` (division-free): the Newton estimate ``2 y`` before the fix-up, within +-2.
    """
    s = np.asarray(s, dtype=np.int64)
    if not division_free:
        e = _np_bitlen(s)
        return (np.int64(1) << (30 + e)) // s, e
    e, y = _np_newton_q30(s)
    f0 = y << 1
    return (_np_fix_up(s, np.int64(1) << (30 + e), f0) if correct else f0), e


def np_isqrt(v, correct: bool = True):
    """NumPy twin of :func:`_te_isqrt_newton`; equals ``math.isqrt`` on ``[1, 2**56)``.

    ``correct=False``: the Newton estimate, within +-1 of isqrt below 2**56 (LayerNorm keeps
    V < 2**51), up to +5 near 2**62; the +-2 fix-up makes it exact.
    """
    v = np.asarray(v, dtype=np.int64)
    t = 31 - ((_np_bitlen(v) + 1) >> 1)
    y = (v << (2 * t)) >> 30
    x = nc.RSQRT_A - ((nc.RSQRT_B * y) >> 30)
    for _ in range(nc.RSQRT_ITERS):
        x = (x * ((3 << 30) - ((y * ((x * x) >> 30)) >> 30))) >> 31
    k = ((y * x) >> 30) >> t
    if not correct:
        return k
    return k + sum(((k + j) ** 2 <= v).astype(np.int64) - ((k - j + 1) ** 2 > v) for j in range(1, nc.NEWTON_CORRECTION + 1))


def _np_shiftexp(d, se: nc.ShiftExpConsts, division_free: bool):
    ip = d + (d >> 1) - (d >> 4)
    if se.poly == 2:
        ip = ip + (d >> 8) + (d >> 10)
    ip = np.maximum(ip, se.ip_min)
    q = ((-ip) * se.div.m) >> se.div.s if division_free else np.floor_divide(ip, se.i0)
    r = ip - q * se.i0
    base = (r >> 1) - se.i0
    if se.poly == 2:
        base = base + ((r * (r - se.i0) * se.quad_m) >> se.quad_s)
    return (base << se.n) >> q


def _np_ibert_exp(d, ce: nc.IBertExpConsts):
    xc = np.maximum(d, ce.q_clamp * ce.x0)
    q = np.floor_divide(xc, ce.x0)
    r = xc - q * ce.x0
    return ((r * (r + ce.b) + ce.c) << ce.n) >> (q + ce.z_shift)


def _check_int(x, what, allowed=("int8", "int16", "int32")):
    if str(x.dtype) not in allowed:
        raise ValueError(f"{what}: input dtype {x.dtype} not in {allowed}")


# ------------------------------------------------------------------------------------------ ops


SOFTMAX_OUT = {"uint8": (8, 255), "int16": (15, 32767)}  # out_dtype -> (fraction bits, qmax)


@register_op
class SoftmaxInt(IntegerOp):
    """Integer softmax over the last axis.

    x : int8/int16/int32 (..., L) at real scale ``in_scale``. n : shift from
    :func:`~tvm_qplugin.quant.nonlinear_consts.choose_softmax_n` (``L * e_max < 2**31`` checked).
    Output ``out_dtype`` (..., L): uint8 at scale 2**-8 or int16 at 2**-15 (1.0 saturates to
    255 / 32767), round half up.

    Exponentials ``E`` (ShiftExp for ivit / division-free, i-exp for ibert) are summed in int32;
    the row's reciprocal is *normalised*: ``e = bitlen(sum E)``, ``f = 2**(30+e) // sum E`` in
    ``(2**30, 2**31]``, ``out = (f E + 2**(29+e-F)) >> (30+e-F)`` with F the fraction bits. A fixed
    numerator (``(2**31-1) // sum E``) would leave ``f`` only ``31 - bitlen(sum E)`` bits -- 7 bits
    for a 128-token row at e_max = 2**22 -- which is what limits 8-bit attention, not the 256 levels.
    division-free: the same ``f`` from a Newton reciprocal (exact after the fix-up).
    """

    name = "softmax_int"
    division_ops = 2

    def divisions(self, params: dict) -> int:
        return 0 if params["variant"] == "division-free" else 2

    @staticmethod
    def _consts(x_len, in_scale, n, variant, exp_poly, out_dtype):
        ce = nc.exp_consts(variant, in_scale, n, exp_poly)
        if x_len * ce.e_max > nc.INT32_MAX:
            raise ValueError(f"softmax_int: L={x_len} x e_max={ce.e_max} overflows int32; lower n ({n})")
        if out_dtype not in SOFTMAX_OUT:
            raise ValueError(f"softmax_int: out_dtype {out_dtype!r} not in {sorted(SOFTMAX_OUT)}")
        return ce, SOFTMAX_OUT[out_dtype]

    def compute(self, x, *, in_scale, n, variant, exp_poly=1, out_dtype="uint8"):
        _check_int(x, self.name)
        lead, length = _row(x)
        ce, (frac, qmax) = self._consts(length, in_scale, n, variant, exp_poly, out_dtype)
        k = te.reduce_axis((0, length), "k")
        mx = te.compute(lead, lambda *i: te.max(x(*i, k).astype("int32"), axis=k), name="row_max")

        def exp_fn(*i):
            d = _te_pre(x(*i).astype("int64") - mx(*i[:-1]).astype("int64"), ce.pre_shift)
            e = _te_ibert_exp(d, ce) if variant == "ibert" else _te_shiftexp(d, ce, variant == "division-free")
            return e.astype("int32")

        e = te.compute(x.shape, exp_fn, name="exp")
        k2 = te.reduce_axis((0, length), "k2")
        total = te.compute(lead, lambda *i: te.sum(e(*i, k2), axis=k2), name="exp_sum")
        f, bits = _te_recip_norm(_stage(total, total, "exp_sum64"), variant == "division-free", "recip")

        def out(*i):
            sh = _c(30 - frac) + bits(*i[:-1])
            v = (f(*i[:-1]) * e(*i).astype("int64") + (_c(1) << (sh - _c(1)))) >> sh
            return clamp_cast(v, 0, qmax, out_dtype)
        return te.compute(x.shape, out, name="y")

    def reference(self, x, *, in_scale, n, variant, exp_poly=1, out_dtype="uint8"):
        ce, (frac, qmax) = self._consts(x.shape[-1], in_scale, n, variant, exp_poly, out_dtype)
        d = _np_pre(x.astype(np.int64) - x.astype(np.int64).max(axis=-1, keepdims=True), ce.pre_shift)
        e = _np_ibert_exp(d, ce) if variant == "ibert" else _np_shiftexp(d, ce, variant == "division-free")
        e = e.astype(np.int32)
        total = e.sum(axis=-1, dtype=np.int32, keepdims=True).astype(np.int64)
        f, bits = np_recip_norm(total, variant == "division-free")
        sh = (30 - frac) + bits
        return np.clip((f * e + (np.int64(1) << (sh - 1))) >> sh, 0, qmax).astype(out_dtype)


@register_op
class GeluInt(IntegerOp):
    """Integer GELU, elementwise.

    x : int8/int16 at ``in_scale``. Output ``out_dtype`` in [qmin, qmax] at ``out_scale``.
    ivit (ShiftGELU): ``sigma(1.702x) = E1 / (E1 + E2)`` with one ShiftExp of ``-|x|`` (the
    per-element reference point ``max(x, 0)`` instead of I-ViT's row max keeps the op elementwise
    and exact for x << row max), ``sigma = ((2**31-1) // (E1+E2) * E1 + 2**15) >> 16`` at 2**-15,
    ``acc = x * sigma``; ibert (i-GELU): ``acc = x * ((sign(x)[(min(|x|,-b)+b)**2 + c] >> s) + one)``;
    division-free: ivit with Newton reciprocal. Then ``requant(acc)`` with a dyadic from the floats.
    n : ShiftExp shift (None: :func:`choose_gelu_n`).
    approx : ``"paper"`` -- I-ViT's ShiftGELU ``x sigma(1.702 x)`` / I-BERT's i-GELU, 0.02 max error;
    ``"tanh"`` -- ``x sigma(1.596 (x + 0.044715 x**3))``, the tanh-GELU, 0.0005 (one more multiply),
    with the variant's own exponential (ShiftExp; ibert: i-exp).
    """

    name = "gelu_int"
    division_ops = 2

    def divisions(self, params: dict) -> int:
        v = params["variant"]
        return 2 if v == "ivit" or (v == "ibert" and params.get("approx") == "tanh") else 0

    def compute(self, x, *, in_scale, out_scale, qmin, qmax, out_dtype, variant, n=None, exp_poly=1,
                approx="paper"):
        _check_int(x, self.name, ("int8", "int16"))
        g = nc.gelu_consts(in_scale, out_scale, variant, n, exp_poly, approx)

        if g.se is None:  # I-BERT's i-GELU
            def erf_fn(*i):
                xs = _te_pre(x(*i).astype("int64"), g.erf_pre_shift)
                a = tirx.min(tirx.abs(xs), _c(-g.erf_b)) + _c(g.erf_b)
                sgn = _ind(xs > _c(0)) - _ind(xs < _c(0))
                return ((sgn * (a * a + _c(g.erf_c))) >> _c(g.erf_shift)) + _c(g.erf_one)
            factor = _stage(x, erf_fn, "erf_plus_one")
        else:
            se = g.se

            def z(*i):  # the sigmoid's argument; tanh form: x + 0.044715 s**2 x**3
                v = x(*i).astype("int64")
                return v if g.cubic is None else v + round_shift(v * v * v * _c(g.cubic.multiplier), g.cubic.shift)

            def exp_neg_abs(*i):
                d = _te_pre(_c(0) - tirx.abs(z(*i)), se.pre_shift)
                return _te_ibert_exp(d, se) if variant == "ibert" else _te_shiftexp(d, se, variant == "division-free")
            es = _stage(x, exp_neg_abs, "exp_neg_abs")
            den = _stage(x, lambda *i: _c(se.e_max) + es(*i), "exp_sum")
            if variant == "division-free":
                inv = _te_recip(den, "recip")
            else:
                inv = _stage(x, lambda *i: tirx.floordiv(_c(nc.INT32_MAX), den(*i)), "recip")
            factor = _stage(x, lambda *i: round_shift(inv(*i) * tirx.if_then_else(x(*i) >= tirx.const(0, x.dtype),
                                                                                  _c(se.e_max), es(*i)),
                                                      31 - nc.SIGMOID_BITS), "sigmoid")
        return te.compute(x.shape, lambda *i: requant(x(*i).astype("int64") * factor(*i), g.out.multiplier, g.out.shift,
                                                      qmin, qmax, out_dtype), name="y")

    def reference(self, x, *, in_scale, out_scale, qmin, qmax, out_dtype, variant, n=None, exp_poly=1,
                  approx="paper"):
        g = nc.gelu_consts(in_scale, out_scale, variant, n, exp_poly, approx)
        xv = x.astype(np.int64)
        if g.se is None:
            xs = _np_pre(xv, g.erf_pre_shift)
            a = np.minimum(np.abs(xs), -g.erf_b) + g.erf_b
            y = (np.sign(xs) * (a * a + g.erf_c)) >> g.erf_shift
            acc = xv * (y + g.erf_one)
        else:
            se = g.se
            z = xv + round_shift_ref(xv * xv * xv * g.cubic.multiplier, g.cubic.shift) if g.cubic is not None else xv
            d = _np_pre(-np.abs(z), se.pre_shift)
            es = _np_ibert_exp(d, se) if variant == "ibert" else _np_shiftexp(d, se, variant == "division-free")
            den = se.e_max + es
            inv = np_recip(den) if variant == "division-free" else nc.INT32_MAX // den
            sig = round_shift_ref(inv * np.where(xv >= 0, se.e_max, es), 31 - nc.SIGMOID_BITS)
            acc = xv * sig
        return np.clip(round_shift_ref(acc * g.out.multiplier, g.out.shift), qmin, qmax).astype(out_dtype)


@register_op
class LayerNormInt(IntegerOp):
    """Integer LayerNorm over the last axis (I-LayerNorm), affine folded per channel.

    x : int8/int16/int32 (..., C) at ``in_scale``; ``pre_shift`` (see ``layernorm_pre_shift``)
    brings it to ``I`` in +-2**15: int8 ``x << 8`` (the rounded mean then costs 2**-8 of an input
    step, not half of one), int16 as is, int32 rounded right and saturated. mult, bias : int64 (C,) from
    :func:`~tvm_qplugin.quant.nonlinear_consts.layernorm_affine` (gamma, beta, out_scale).
    ``mu = floor((2 sum I + C) / 2C)`` (round half up), ``Y = I - mu``,
    ``V = sum Y**2 + round(eps C / S'**2)`` (int64), ``k = sqrt(V)``, ``f = (2**31-1) // k``
    (ibert: ``2**31 // k``), ``Z = (f Y) >> 1`` at scale sqrt(C)/2**30,
    ``y = clamp((Z mult[c] + bias[c] + 2**(shift-1)) >> shift)``.
    Division-free: mean by magic multiply, isqrt and reciprocal by Newton (all exact).
    """

    name = "layernorm_int"
    division_ops = 12

    def divisions(self, params: dict) -> int:
        v = params["variant"]
        return 0 if v == "division-free" else 2 + nc.LN_SQRT_ITERS[v]

    def compute(self, x, mult, bias, *, in_scale, eps, pre_shift, shift, qmin, qmax, out_dtype, variant):
        _check_int(x, self.name)
        lead, c = _row(x)
        lc = nc.layernorm_consts(c, in_scale, eps, pre_shift, variant)
        if tuple(int(d) for d in mult.shape) != (c,) or tuple(int(d) for d in bias.shape) != (c,):
            raise ValueError(f"layernorm_int: mult/bias must have shape ({c},), got {tuple(mult.shape)}, {tuple(bias.shape)}")

        def xi(*i):
            v = _te_pre(x(*i).astype("int64"), pre_shift)
            if str(x.dtype) == "int32":
                v = tirx.max(tirx.min(v, _c(nc.LN_MAX_ABS)), _c(-nc.LN_MAX_ABS))
            return v

        k = te.reduce_axis((0, c), "k")
        total = te.compute(lead, lambda *i: te.sum(xi(*i, k), axis=k), name="row_sum")

        def mean_fn(*i):
            u = _c(2) * total(*i) + _c(c)
            if variant == "division-free":
                return (((u + _c(2 * nc.LN_MAX_ABS * c)) * _c(lc.mean_div.m)) >> _c(lc.mean_div.s)) - _c(nc.LN_MAX_ABS)
            return tirx.floordiv(u, _c(2 * c))

        mu = te.compute(lead, mean_fn, name="row_mean")
        k2 = te.reduce_axis((0, c), "k2")
        var = te.compute(lead, lambda *i: te.sum((xi(*i, k2) - mu(*i)) * (xi(*i, k2) - mu(*i)), axis=k2), name="row_ssq")

        v = _stage(var, lambda *i: tirx.max(var(*i) + _c(lc.eps), _c(1)), "row_var")
        if variant == "division-free":
            f = _te_recip(_te_isqrt_newton(v, "row_sqrt"), "row_inv_std")
        else:
            kk = _te_isqrt_div(v, lc.iters, variant == "ibert", "row_sqrt")
            num = _c(2**31 if variant == "ibert" else nc.INT32_MAX)
            f = _stage(kk, lambda *i: tirx.floordiv(num, kk(*i)), "row_inv_std")

        def out(*i):
            z = (f(*i[:-1]) * (xi(*i) - mu(*i[:-1]))) >> _c(1)
            return clamp_cast(round_shift(z * mult[i[-1]] + bias[i[-1]], shift), qmin, qmax, out_dtype)

        return te.compute(x.shape, out, name="y")

    def reference(self, x, mult, bias, *, in_scale, eps, pre_shift, shift, qmin, qmax, out_dtype, variant):
        c = x.shape[-1]
        lc = nc.layernorm_consts(c, in_scale, eps, pre_shift, variant)
        i = _np_pre(x.astype(np.int64), pre_shift)
        if x.dtype == np.int32:
            i = np.clip(i, -nc.LN_MAX_ABS, nc.LN_MAX_ABS)
        u = 2 * i.sum(axis=-1, keepdims=True) + c
        if variant == "division-free":
            mu = (((u + 2 * nc.LN_MAX_ABS * c) * lc.mean_div.m) >> lc.mean_div.s) - nc.LN_MAX_ABS
        else:
            mu = u // (2 * c)
        y = i - mu
        v = np.maximum((y * y).sum(axis=-1, keepdims=True) + lc.eps, 1)
        if variant == "division-free":
            f = np_recip(np_isqrt(v))
        else:
            k = np.left_shift(1, (_np_bitlen(v) + 1) >> 1)
            for _ in range(lc.iters):
                k_new = (k + v // k) >> 1
                k = np.minimum(k, k_new) if variant == "ibert" else k_new
            f = (2**31 if variant == "ibert" else nc.INT32_MAX) // k
        z = (f * y) >> 1
        acc = z * mult.astype(np.int64) + bias.astype(np.int64)
        return np.clip(round_shift_ref(acc, shift), qmin, qmax).astype(out_dtype)


def layernorm_int_args(gamma, beta, *, in_scale: float, out_scale: float, eps: float, in_dtype: str, c: int,
                       qmin: int, qmax: int, out_dtype: str, variant: str, max_abs: int | None = None):
    """``(mult, bias, params)`` for ``emit(bb, "layernorm_int", [x, const(mult), const(bias)], **params)``."""
    mult, bias, shift = nc.layernorm_affine(gamma, beta, c, out_scale)
    pre = nc.layernorm_pre_shift(in_dtype, max_abs)
    nc.layernorm_consts(c, in_scale, eps, pre, variant)  # validates C, variant
    return mult, bias, dict(in_scale=float(in_scale), eps=float(eps), pre_shift=pre, shift=shift, qmin=int(qmin),
                            qmax=int(qmax), out_dtype=out_dtype, variant=variant)
