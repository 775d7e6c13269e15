"""Canonicalize the imported float graph into the forms the integerize rules expect.

1. ``DecomposeOpsForInference`` + ``FoldConstant``: BatchNorm becomes per-channel affine ops on
   constants.
2. ``FuseGELU`` / ``FuseLayerNorm`` (passes/patterns.py): decomposed GELU (Erf or tanh form)
   and LayerNorm back into one op each, before step 4 can fold their scalar constants away.
3. :data:`NormalizeClip`: the ONNX importer lowers Clip to TOPI ``maximum``/``minimum``
   PrimFuncs; turn those back into one ``R.clip`` so activations can be fused by op name.
4. :data:`FoldBatchNorm`: per-output-channel multiply/divide/add/subtract by constants that follow
   a conv2d or a matmul with constant weights fold into the weights and one bias add;
   scalar multiplies/divides feeding one (Gemm ``alpha``, an in-model ``x / 255``) fold into the
   weights too.
   Quantizing the folded weights (not the unfolded conv) is what HAWQ-V3 prescribes: the scale
   of BN changes each channel's weight range.
   Between 3 and 4, the coverage passes: ``SplitToSlices`` (passes/split.py), ``NormalizePad``
   (passes/pad.py), ``ConvTransposeToConv`` (passes/conv_transpose.py), ``Conv1DToConv2D``,
   ``PowerToMultiply``, ``TakeToSlice``, ``PoolToNCHW``, ``CancelTransposes``
   (passes/coverage_forms.py); last,
   ``FlattenOutputTuple`` (passes/outputs.py) for multi-output graphs.
"""
from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

from ..ops import const
from .graph import Binding, const_value, dtype_of, shape_of
from .rewriter import FunctionRewriter, function_pass

_TOPI_CLIP_BLOCKS = {"T_maximum": "lo", "T_minimum": "hi"}


def _topi_clip_side(rw: FunctionRewriter, b: Binding) -> tuple[str, float] | None:
    """('lo'|'hi', bound) when ``b`` is call_tir of TOPI maximum/minimum with a scalar constant."""
    if b.op_name != "relax.call_tir":
        return None
    gvar, args = b.args[0], b.args[1].fields
    if len(args) != 2 or const_value(args[1]) is None or const_value(args[1]).size != 1:
        return None
    # TIR has no Python visitor in 0.27: read the block names from the printed kernel.
    text = rw.mod[gvar].script()
    sides = {side for block, side in _TOPI_CLIP_BLOCKS.items() if f'T.sblock("{block}")' in text}
    if len(sides) != 1:
        return None
    return sides.pop(), float(const_value(args[1]).reshape(()))


def _normalize_clip(rw: FunctionRewriter):
    bounds: dict[relax.Var, tuple[relax.Expr, float, float]] = {}

    def rewrite(b: Binding):
        side = _topi_clip_side(rw, b)
        if side is None:
            return None
        x = b.args[1].fields[0]
        src, lo, hi = bounds.get(x, (x, -math.inf, math.inf))
        # max(clip(x, lo, hi), v) == clip(x, max(lo, v), max(hi, v)) and min(clip(x, lo, hi), v) ==
        # clip(x, min(lo, v), min(hi, v)): both keep lo <= hi, so Clip(min > max) and disjoint
        # successive Clips give the constant ONNX gives (R.clip with lo > hi would return lo).
        v = side[1]
        lo, hi = (max(lo, v), max(hi, v)) if side[0] == "lo" else (min(lo, v), min(hi, v))
        bounds[b.var] = (src, lo, hi)
        return relax.op.clip(rw.arg(src), _finite(lo), _finite(hi))

    return rewrite


NormalizeClip = function_pass(_normalize_clip, "NormalizeClip")


def _channel_vector(c: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``c`` as a per-channel vector along ``axis`` of ``out_shape``, or None if it is not one."""
    if c.ndim > len(out_shape):
        return None
    full = (1,) * (len(out_shape) - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(full) if i != axis % len(out_shape)):
        return None
    vec = c.reshape(-1).astype(np.float64)
    n = out_shape[axis]
    return np.broadcast_to(vec, (n,)).copy() if vec.size in (1, n) else None


class _Linear:
    """A conv2d or matmul with constant weight, plus the per-channel affine folded so far."""

    def __init__(self, kind: str, call: Binding, weight: np.ndarray, axis: int):
        self.kind, self.call, self.weight, self.axis = kind, call, weight.astype(np.float64), axis
        self.bias = np.zeros(weight.shape[0] if kind == "conv2d" else weight.shape[-1])
        self.input: relax.Expr = call.args[0]  # an original-graph expression (renamed on emission)

    def scale(self, s: np.ndarray):
        if self.kind == "conv2d":
            self.weight = self.weight * s[:, None, None, None]
        else:
            self.weight = self.weight * s[None, :]
        self.bias = self.bias * s

    def linear_call(self, rw: FunctionRewriter, dtype: str) -> relax.Call:
        v = self.call.value
        return relax.Call(v.op, [rw.arg(self.input), const(self.weight.astype(dtype))], v.attrs, v.ty_args)

    def emit(self, rw: FunctionRewriter, dtype: str, out_shape) -> relax.Expr:
        lin = rw.bb.emit(self.linear_call(rw, dtype), name_hint=self.call.name)
        bshape = [1] * len(out_shape)
        bshape[self.axis] = self.bias.size
        return relax.op.add(lin, const(self.bias.reshape(bshape).astype(dtype)))


_AFFINE_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def _fold_batch_norm(rw: FunctionRewriter):
    g = rw.graph
    linear: dict[relax.Var, _Linear] = {}
    prescaled: dict[relax.Var, tuple[relax.Expr, float]] = {}

    def start(b: Binding) -> _Linear | None:
        if b.op_name == "relax.nn.conv2d" and const_value(b.args[1]) is not None:
            if str(b.attrs.data_layout) != "NCHW" or str(b.attrs.kernel_layout) != "OIHW":
                return None
            return _Linear("conv2d", b, const_value(b.args[1]), 1)
        if b.op_name == "relax.matmul" and const_value(b.args[1]) is not None and const_value(b.args[1]).ndim == 2:
            return _Linear("matmul", b, const_value(b.args[1]), -1)
        return None

    def scalar_step(b: Binding) -> tuple[relax.Expr, float] | None:
        """``(x, s)`` when ``b`` is ``x * s``, ``s * x`` or ``x / s`` with a finite non-zero scalar constant."""
        if b.op_name not in ("relax.multiply", "relax.divide") or len(b.args) != 2:
            return None
        x, c = b.args
        if b.op_name == "relax.multiply" and const_value(x) is not None:
            x, c = c, x
        cv = const_value(c)
        if cv is None or cv.size != 1 or const_value(x) is not None or shape_of(x) != shape_of(b.var):
            return None
        scale = float(cv.reshape(()))
        if scale == 0 or not math.isfinite(scale):
            return None
        return x, (1.0 / scale if b.op_name == "relax.divide" else scale)

    def feeds_linear(var: relax.Var) -> bool:
        """``var`` reaches the data operand of a linear op through sole-user scalar steps only."""
        user = g.sole_user(var)
        while user is not None and start(user) is None and scalar_step(user) is not None:
            var, user = user.var, g.sole_user(user.var)
        return (user is not None and start(user) is not None and user.args[0].same_as(var)
                and not user.args[1].same_as(var))

    def scalar_prescale(b: Binding) -> tuple[relax.Expr, float] | None:
        """Scalar multiplies/divides read only as the data operand of a conv2d/matmul with constant
        weight (Gemm's ``alpha``, an in-model ``x / 255``): ``lin(s * x, W) == lin(x, s * W)``, zero
        padding included. Returns the unscaled source and the accumulated scale."""
        step = scalar_step(b)
        if step is None or not feeds_linear(b.var):
            return None
        x, scale = step
        if isinstance(x, relax.Var) and x in prescaled:
            x, before = prescaled[x]
            scale *= before
        return x, scale

    def channel_step(b: Binding, lin: _Linear) -> np.ndarray | None:
        """The per-channel constant of an add/subtract/multiply/divide that folds into ``lin``, else
        None. Asked of the *next* binding too: a chain is only left unemitted ("keep folding") when
        its next op really folds -- a residual add of two activations must end it with the fold."""
        if b.op_name not in _AFFINE_OPS or len(b.args) != 2:
            return None
        c = const_value(b.args[1])
        return None if c is None else _channel_vector(c, shape_of(b.var), lin.axis)

    def rewrite(b: Binding):
        pre = scalar_prescale(b)
        if pre is not None:
            prescaled[b.var] = pre  # folded into its linear user's weight; this binding becomes dead
            return None
        src = b.args[0] if b.args else None
        lin = linear.get(src) if isinstance(src, relax.Var) else None
        if lin is None:
            new = start(b)
            if new is not None and g.sole_user(b.var) is not None:
                linear[b.var] = new
            if new is not None and isinstance(src, relax.Var) and src in prescaled:
                new.input, scale = prescaled[src]
                new.weight = new.weight * scale
                return new.linear_call(rw, dtype_of(b.var))
            return None
        vec = channel_step(b, lin)
        if vec is None:
            return None
        if b.op_name == "relax.add":
            lin.bias = lin.bias + vec
        elif b.op_name == "relax.subtract":
            lin.bias = lin.bias - vec
        elif b.op_name == "relax.multiply":
            lin.scale(vec)
        else:
            lin.scale(1.0 / vec)
        nxt = g.sole_user(b.var)
        if nxt is not None and nxt.args and nxt.args[0].same_as(b.var) and channel_step(nxt, lin) is not None:
            linear[b.var] = lin  # the next op folds too; this binding becomes dead
            return rw.arg(b.value)
        return lin.emit(rw, dtype_of(b.var), shape_of(b.var))

    return rewrite



FoldBatchNorm = function_pass(_fold_batch_norm, "FoldBatchNorm")


def canonicalize(mod: tvm.IRModule) -> tvm.IRModule:
    """The canonicalization pipeline (module doc)."""
    from .conv_transpose import ConvTransposeToConv
    from .fold_exact import FoldExactConstants
    from .coverage_forms import CancelTransposes, Conv1DToConv2D, PoolToNCHW, PowerToMultiply, TakeToSlice
    from .outputs import FlattenOutputTuple
    from .pad import NormalizePad, refuse_other_pad_modes
    from .patterns import FuseGELU, FuseLayerNorm
    from .split import SplitToSlices

    refuse_other_pad_modes(mod)
    seq = tvm.ir.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        FoldExactConstants,    # data movement and isnan/where on constants, in NumPy: no LLVM build each
        relax.transform.FoldConstant(),
        # before FoldBatchNorm: GELU's trailing "* 0.5" would otherwise fold into the next weights
        FuseGELU,
        FuseLayerNorm,
        NormalizeClip,
        SplitToSlices,
        NormalizePad,
        ConvTransposeToConv,   # before FoldBatchNorm: the conv2d it writes folds BN like any other
        Conv1DToConv2D,        # likewise
        PowerToMultiply,       # after FuseLayerNorm, whose pattern holds a Pow(x - mean, 2)
        TakeToSlice,
        PoolToNCHW,
        CancelTransposes,
        FoldBatchNorm,
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(["main"]),
        relax.transform.CanonicalizeBindings(),
        # CanonicalizeBindings forwards `t = (y, mean, var); out = t[0]` to `y`, leaving the
        # batch_norm tuple dead: without a last DCE the integerizer meets a `Tuple` binding.
        relax.transform.DeadCodeElimination(["main"]),
        FlattenOutputTuple,   # a multi-output graph's `gv = (a, b)` binding becomes the function's return
    ])
    return seq(mod)


_F32_MAX = float(np.finfo(np.float32).max)


def _finite(v: float) -> float:
    """Clip bounds as finite float32 values (an open side becomes +-FLT_MAX)."""
    return float(np.clip(v, -_F32_MAX, _F32_MAX))
