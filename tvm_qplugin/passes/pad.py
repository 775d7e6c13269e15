"""NormalizePad: the ONNX importer's constant Pad (a TOPI ``pad`` PrimFunc under ``call_tir``)
becomes ``R.nn.pad`` with explicit widths and value, so an integerize rule can take it by name.

TIR has no Python visitor in 0.27 and the kernel's printed condition is not a stable format, so the
widths and the value are *measured*: the kernel is built once for the host and run on an input of
distinct positive values; where the input lands gives ``pad_before``, what surrounds it is the
constant. A kernel that does not reproduce exactly "input block inside a constant frame" (reflect,
edge: other TOPI kernels) is left alone and refused by integerize like any unknown kernel.
Reflect / edge kernels (TOPI's ``mirror_pad`` / ``replicate_pad``, by name) are measured the same way,
checked to compute exactly ``np.pad(x, widths, mode)``, and become ``R.nn.pad`` in mode ``reflect`` /
``replicate``; the ones that do not are refused up front (:func:`refuse_other_pad_modes`).
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
# ONNX / NumPy mode -> R.nn.pad's pad_mode (whose legalization is TOPI's reflect_pad / replicate_pad)
_RELAX_PAD_MODE = {"reflect": "reflect", "edge": "replicate"}


def _run_kernel(func: tvm.tirx.PrimFunc, x: np.ndarray, out_shape) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")
    y = tvm.runtime.tensor(np.zeros(out_shape, x.dtype))
    lib["main"](tvm.runtime.tensor(x), y)
    return y.numpy()


def measure_mirror_pad(func: tvm.tirx.PrimFunc, in_shape, out_shape, mode: str) -> list[int] | None:
    """Pad widths (before, after per axis, flattened) of a reflect / edge pad kernel, or None unless it
    computes exactly ``np.pad(x, widths, mode)``. The input's first element lands at ``before`` (reflect:
    only there; edge: on the whole corner block, whose far corner is ``before``)."""
    if mode == "reflect" and any(o - n > 2 * (n - 1) for o, n in zip(out_shape, in_shape)):
        return None   # some side is wider than n - 1: not run (TOPI's kernel would read outside x)
    x = (np.arange(int(np.prod(in_shape)), dtype=np.float32) + 1.0).reshape(in_shape)
    y = _run_kernel(func, x, out_shape)
    hits = np.argwhere(y == 1.0)
    if not len(hits):
        return None
    before = [int(v) for v in hits.max(axis=0)]
    after = [o - i - b for o, i, b in zip(out_shape, in_shape, before)]
    if min(after) < 0 or (mode == "reflect" and any(max(b, a) > n - 1 for b, a, n in zip(before, after, in_shape))):
        return None
    widths = list(zip(before, after))
    return [v for pair in widths for v in pair] if np.array_equal(np.pad(x, widths, mode=mode), y) else None


def _other_pad_mode(kernel: str) -> str | None:
    return next((m for k, m in _OTHER_PAD_MODES.items() if kernel.startswith(k)), None)


def _normalize_pad(rw: FunctionRewriter):
    def rewrite(b: Binding):
        if b.op_name != "relax.call_tir" or len(b.args[1].fields) != 1:
            return None
        func = rw.mod[b.args[0]]
        mode = _other_pad_mode(str(b.args[0].name_hint))
        if mode is not None:
            x = b.args[1].fields[0]
            widths = measure_mirror_pad(func, shape_of(x), shape_of(b.var), mode)
            return None if widths is None else relax.op.nn.pad(rw.arg(x), widths, _RELAX_PAD_MODE[mode])
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
    """Raise one UnsupportedOpError for the reflect / edge Pad kernels that NormalizePad cannot turn
    into ``R.nn.pad`` (not exactly ``np.pad`` of measured widths, or reflect widths beyond size - 1).
    Checked before any pass (an error raised inside a TVM pass comes back as a RuntimeError), and
    before calibration, which could not even rebuild the float graph around them."""
    found = []
    for b in Graph(mod["main"]).bindings:
        if b.op_name == "relax.call_tir" and len(b.args[1].fields) == 1:
            kernel = str(b.args[0].name_hint)
            mode = _other_pad_mode(kernel)
            if mode is not None and measure_mirror_pad(mod[b.args[0]], shape_of(b.args[1].fields[0]), shape_of(b.var),
                                                       mode) is None:
                found.append(f"{mode!r} (kernel {kernel}, {shape_of(b.args[1].fields[0])} -> {shape_of(b.var)})")
    if found:
        raise UnsupportedOpError(f"Pad mode {', '.join(found)} has no integer-only lowering (reflect widths must be "
                                 "at most the axis size - 1); re-export the model with narrower or constant padding")
