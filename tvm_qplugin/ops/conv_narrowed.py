"""``conv2d_requant_narrowed``: a conv that reads the int16 residual stream at 8 bits, the
narrowing requantize and the conv as *one kernel*.

Never emitted by integerization: the integer module (what the NumPy reference runs, what is saved
and exported) keeps the two ops, ``requantize`` (int16 -> int8, per tensor) and ``conv2d_requant``.
The x86 build fuses them (schedules/x86_narrowing.py) so that the conv's activation gather reads
the int16 tensor and narrows it in registers on the way in: no separate kernel, no 8-bit copy of
the tensor in memory. The twin below is the two ops' twins composed, so the fused kernel is
checked against the very semantics the reference runs.

x : int16 (N, C, H, W). w, bias, multiplier, shift : as ``conv2d_requant``.
in_multiplier, in_shift : int64 (1,) -- the narrowing requantize's ``multiplier`` / ``shift``
(runtime constants, so that kernels of equal shapes are shared across layers).
in_qmin, in_qmax, in_dtype : the narrowing's clamp and dtype (int8 or uint8).
"""
from __future__ import annotations

import numpy as np
from tvm import te

from .conv import Conv2DRequant
from .registry import IntegerOp, register_op
from .requant import Requantize, requant

NARROWING_PARAMS = ("in_qmin", "in_qmax", "in_dtype")


def narrowed_input(x: te.Tensor, in_multiplier: te.Tensor, in_shift: te.Tensor, in_qmin: int, in_qmax: int,
                   in_dtype: str) -> te.Tensor:
    """The 8-bit operand the conv multiplies, as a TE stage over the int16 input (``x_narrow``):
    the x86 schedules inline it into their gather."""
    return te.compute(x.shape, lambda *i: requant(x(*i), in_multiplier[0], in_shift[0], in_qmin, in_qmax, in_dtype),
                      name="x_narrow")


@register_op
class Conv2DRequantNarrowed(IntegerOp):
    """``conv2d_requant(requantize(x))`` in one kernel (module docstring)."""

    name = "conv2d_requant_narrowed"

    def compute(self, x, w, bias, multiplier, shift, in_multiplier, in_shift, *, in_qmin, in_qmax, in_dtype,
                **conv):
        xn = narrowed_input(x, in_multiplier, in_shift, in_qmin, in_qmax, in_dtype)
        return Conv2DRequant().compute(xn, w, bias, multiplier, shift, **conv)

    def reference(self, x, w, bias, multiplier, shift, in_multiplier, in_shift, *, in_qmin, in_qmax, in_dtype,
                  **conv):
        xn = Requantize().reference(x, multiplier=int(np.asarray(in_multiplier).reshape(-1)[0]),
                                    shift=int(np.asarray(in_shift).reshape(-1)[0]), qmin=in_qmin, qmax=in_qmax,
                                    out_dtype=in_dtype)
        return Conv2DRequant().reference(xn, w, bias, multiplier, shift, **conv)


def narrowing_site(site):
    """A ``conv2d_requant_narrowed`` kernel site (tie_inputs.KernelSite) as its narrowing
    ``requantize`` sees it, so that the requantize's exact-tie inputs (int16 values whose
    rescaling lands on a rounding tie) drive the fused kernel's narrowing."""
    import dataclasses

    p = site.params
    params = {"multiplier": int(np.asarray(site.args[5]).reshape(-1)[0]), "shift": int(np.asarray(site.args[6]).reshape(-1)[0]),
              "qmin": p["in_qmin"], "qmax": p["in_qmax"], "out_dtype": p["in_dtype"]}
    return dataclasses.replace(site, op="requantize", params=params, args=[site.args[0]],
                               out=(site.args[0][0], p["in_dtype"]))
