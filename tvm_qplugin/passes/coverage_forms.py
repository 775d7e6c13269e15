"""Float ops rewritten into forms the integer rules already take (no new integer kernel needed).

* ``Conv1DToConv2D``: ``conv1d(x[N, C, L], w[O, C/g, K])`` -> ``squeeze(conv2d(x[N, C, 1, L],
  w[O, C/g, 1, K]), 2)`` -- audio models (Silero VAD's STFT and encoder) are 1-D convs; the
  conv2d kernels (x86 tensorized, C package) and the BN folding then serve them unchanged.
* ``PowerToMultiply``: ``x ** 2`` and ``x ** 3`` -> products of ``x`` (ONNX ``Pow`` with a constant
  small integer exponent: a magnitude ``sqrt(re**2 + im**2)``), integerized by the activation
  ``Mul`` rule, exactly.
* ``PoolToNCHW`` / ``CancelTransposes``: an NHWC pool (a TFLite model's, left NHWC by TVM's
  ``ConvertLayout``) runs NCHW between two transposes, and a transpose undone by the next one
  goes away: NHWC models keep few layout copies.
* ``TakeToSlice``: ``take(x, k, axis)`` with a constant scalar index ``k`` on an activation (a
  ``state[0]`` of a recurrent cell, ``h[:, -1]``) -> ``squeeze(strided_slice(x, k, k+1), axis)``:
  the same integers at the same scale (embedding lookups, a constant table with integer
  indices, keep their own rule).
"""
from __future__ import annotations

from tvm import relax

from .graph import Binding, const_value, dtype_of, shape_of
from .rewriter import FunctionRewriter, function_pass


def _out_dtype(attrs) -> dict:
    """``out_dtype`` when the conv1d fixes one (unset prints as "" or "void")."""
    od = str(attrs.out_dtype) if attrs.out_dtype is not None else ""
    return {"out_dtype": od} if od not in ("", "void", "None") else {}


def _conv1d_to_conv2d(rw: FunctionRewriter):
    def rewrite(b: Binding):
        if b.op_name != "relax.nn.conv1d":
            return None
        a = b.attrs
        if str(a.data_layout) != "NCW" or str(a.kernel_layout) != "OIW" or str(a.out_layout) not in ("NCW", ""):
            return None
        w = const_value(b.args[1])
        if w is None:
            return None
        x2 = rw.bb.emit(relax.op.expand_dims(rw.arg(b.args[0]), 2))
        y = rw.bb.emit(relax.op.nn.conv2d(
            x2, relax.const(w[:, :, None, :]), strides=[1, int(a.strides[0])],
            padding=[0, int(a.padding[0]), 0, int(a.padding[1])], dilation=[1, int(a.dilation[0])],
            groups=int(a.groups), **_out_dtype(a)))
        return relax.op.squeeze(y, [2])

    return rewrite


def _power_to_multiply(rw: FunctionRewriter):
    def rewrite(b: Binding):
        if b.op_name != "relax.power":
            return None
        e = const_value(b.args[1])
        if e is None or e.size != 1 or float(e.reshape(())) not in (2.0, 3.0):
            return None
        x = rw.arg(b.args[0])
        sq = rw.bb.emit(relax.op.multiply(x, x))
        return sq if float(e.reshape(())) == 2.0 else relax.op.multiply(sq, x)

    return rewrite


def _take_to_slice(rw: FunctionRewriter):
    def rewrite(b: Binding):
        if b.op_name != "relax.take" or const_value(b.args[0]) is not None:
            return None
        k = const_value(b.args[1])
        if k is None or k.ndim != 0 or not dtype_of(b.var).startswith("float"):
            return None
        shape = shape_of(b.args[0])
        axis = int(b.attrs.axis) % len(shape) if b.attrs.axis is not None else None
        if axis is None:
            return None
        k = int(k) % shape[axis]
        piece = rw.bb.emit(relax.op.strided_slice(rw.arg(b.args[0]), [axis], [k], [k + 1]))
        return relax.op.squeeze(piece, [axis])

    return rewrite


_POOLS = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d, "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}


def _pool_to_nchw(rw: FunctionRewriter):
    def rewrite(b: Binding):
        if b.op_name not in _POOLS or str(b.attrs.layout) != "NHWC":
            return None
        a = b.attrs
        x = rw.bb.emit(relax.op.permute_dims(rw.arg(b.args[0]), [0, 3, 1, 2]))
        kwargs = {"count_include_pad": bool(a.count_include_pad)} if b.op_name == "relax.nn.avg_pool2d" else {}
        y = rw.bb.emit(_POOLS[b.op_name](x, [int(v) for v in a.pool_size], [int(v) for v in a.strides],
                                         [int(v) for v in a.padding], [int(v) for v in a.dilation],
                                         ceil_mode=bool(a.ceil_mode), layout="NCHW", **kwargs))
        return relax.op.permute_dims(y, [0, 2, 3, 1])

    return rewrite


def _cancel_transposes(rw: FunctionRewriter):
    def rewrite(b: Binding):
        if b.op_name != "relax.permute_dims":
            return None
        src = rw.graph.producer(b.args[0])
        if src is None or src.op_name != "relax.permute_dims" or b.attrs.axes is None or src.attrs.axes is None:
            return None
        inner, outer = [int(v) for v in src.attrs.axes], [int(v) for v in b.attrs.axes]
        if [inner[i] for i in outer] != list(range(len(outer))):
            return None
        return rw.arg(src.args[0])  # the inner transpose dies if nothing else reads it

    return rewrite


PoolToNCHW = function_pass(_pool_to_nchw, "PoolToNCHW")
CancelTransposes = function_pass(_cancel_transposes, "CancelTransposes")
Conv1DToConv2D = function_pass(_conv1d_to_conv2d, "Conv1DToConv2D")
PowerToMultiply = function_pass(_power_to_multiply, "PowerToMultiply")
TakeToSlice = function_pass(_take_to_slice, "TakeToSlice")

