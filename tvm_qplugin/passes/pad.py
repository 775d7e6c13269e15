"""NormalizePad: the ONNX importer's constant Pad (a TOPI ``pad`` PrimFunc under ``call_tir``)
becomes ``R.nn.pad`` with explicit widths and value, so an integerize rule can take it by name.

TIR has no Python visitor in 0.27 and the kernel's printed condition is not a stable format, so the
widths and the value are *measured*: the kernel is built once for the host and run on an input of
distinct positive values; where the input lands gives ``pad_before``, what surrounds it is the
constant. A kernel that does not reproduce exactly "input block inside a constant frame" (reflect,
edge: other TOPI kernels) is left alone and refused by integerize like any unknown kernel.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..errors import UnsupportedOpError
from .graph import Binding, Graph, shape_of
from .rewriter import FunctionRewriter, function_pass

_PAD_BLOCK = 'T.sblock("PadInput")'


def measure_constant_pad(func: tvm.tirx.PrimFunc, in_shape, out_shape) -> tuple[list[int], float] | None:
    """``(pad_width as (before, after) per axis flattened, value)`` of a constant-pad kernel, or None."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target="llvm")
    x = (np.arange(int(np.prod(in_shape)), dtype=np.float32) + 1.0).reshape(in_shape)
    y = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), y)
    y = y.numpy()
    for where in np.argwhere(y == 1.0)[:64]:   # the pad value may be 1.0 too: the input block decides
        before = [int(v) for v in where]
        after = [o - i - b for o, i, b in zip(out_shape, in_shape, before)]
        if min(after) < 0:
            continue
        inner = tuple(slice(b, b + n) for b, n in zip(before, in_shape))
        frame = y.copy()
        frame[inner] = np.nan
        values = np.unique(frame[~np.isnan(frame)])
        if np.array_equal(y[inner], x) and len(values) <= 1:
            value = float(values[0]) if len(values) else 0.0
            return [v for pair in zip(before, after) for v in pair], value
    return None


# the importer's other Pad kernels (topi.nn.mirror_pad / replicate_pad), by their function name
_OTHER_PAD_MODES = {"mirror_pad": "reflect", "replicate_pad": "edge"}


def _normalize_pad(rw: FunctionRewriter):
    def rewrite(b: Binding):
        if b.op_name != "relax.call_tir" or len(b.args[1].fields) != 1:
            return None
        func = rw.mod[b.args[0]]
        if _PAD_BLOCK not in func.script():
            return None
        x = b.args[1].fields[0]
        found = measure_constant_pad(func, shape_of(x), shape_of(b.var))
        if found is None:
            return None
        widths, value = found
        return relax.op.nn.pad(rw.arg(x), widths, "constant", value)

    return rewrite


NormalizePad = function_pass(_normalize_pad, "NormalizePad")


def refuse_other_pad_modes(mod: tvm.IRModule) -> None:
    """Raise one UnsupportedOpError for reflect / edge Pad kernels. Checked before any pass (an error
    raised inside a TVM pass comes back as a RuntimeError), and before calibration, which could not
    even rebuild the float graph around them."""
    found = []
    for b in Graph(mod["main"]).bindings:
        if b.op_name == "relax.call_tir":
            kernel = str(b.args[0].name_hint)
            found += [f"{m!r} (kernel {kernel})" for k, m in _OTHER_PAD_MODES.items() if kernel.startswith(k)]
    if found:
        raise UnsupportedOpError(f"Pad mode {', '.join(found)} has no integer-only lowering; only mode='constant' is "
                                 "supported: re-export the model with zero / constant padding")
