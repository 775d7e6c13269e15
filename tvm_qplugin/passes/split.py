"""SplitToSlices: ``t = split(x); a = t[i]`` -> ``a = strided_slice(x, axis, begin_i, end_i)``.

ONNX Split imports as a Relax ``split`` returning a tuple, read back with ``TupleGetItem``. The
integerizer handles tensors, not tuples, and a slice of a quantized tensor is the same integers at
the same scale, so each piece becomes its own ``strided_slice`` (QStridedSlice then takes it) and
the split dies (dead-code elimination in :func:`..rewriter.function_pass`).
"""
from __future__ import annotations

import itertools

from tvm import relax

from .graph import Binding, shape_of
from .rewriter import FunctionRewriter, function_pass


def split_bounds(size: int, indices_or_sections) -> list[tuple[int, int]]:
    """``(begin, end)`` of each piece of a ``split`` over an axis of ``size``."""
    if isinstance(indices_or_sections, int):
        step = size // indices_or_sections
        cuts = [step * k for k in range(1, indices_or_sections)]
    else:
        cuts = [int(i) for i in indices_or_sections]
    edges = [0, *cuts, size]
    return list(itertools.pairwise(edges))


def _split_to_slices(rw: FunctionRewriter):
    def rewrite(b: Binding):
        v = b.value
        if not isinstance(v, relax.TupleGetItem):
            return None
        src = rw.graph.producer(v.tuple_value)
        if src is None or src.op_name != "relax.split":
            return None
        x = src.args[0]
        axis = int(src.attrs.axis) % len(shape_of(x))
        ios = src.attrs.indices_or_sections
        ios = [int(i) for i in ios] if hasattr(ios, "__len__") else int(ios)  # cut indices, or a section count
        begin, end = split_bounds(shape_of(x)[axis], ios)[int(v.index)]
        return relax.op.strided_slice(rw.arg(x), [axis], [begin], [end])

    return rewrite


SplitToSlices = function_pass(_split_to_slices, "SplitToSlices")
