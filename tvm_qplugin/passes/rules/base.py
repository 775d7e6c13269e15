"""What an integerize rule is made of: the rule base class and registry, the integer value a rule
returns, and the small numeric helpers rules share.

Kept apart from :mod:`..integerize` (which drives the rules over a graph) so that rule modules
import this, never the driver: the driver imports the rules to register them, and the rules
importing the driver back was an import cycle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from tvm import relax

from ...quant import QType
from ..graph import Binding

if TYPE_CHECKING:  # the driver, for annotations only (see the module docstring)
    from ..integerize import IntegerizeContext


@dataclass
class QValue:
    """A tensor's integer replacement: expression in the new graph and its quantized type.

    ``kind`` is ``"quant"`` for quantized reals, ``"raw"`` for tensors that were integer or bool in
    the float model already (token ids, attention masks: no scale), and ``"mask"`` for the float
    0 / -inf attention bias built from a raw bool tensor (``expr`` is the bool "keep" tensor).
    """

    expr: relax.Expr
    qtype: QType | None
    nonneg: bool = False
    kind: str = "quant"
    # proven bound on sum |x| along the last axis (softmax rows: 1.0 plus rounding), which lets a
    # following matmul prove int32 accumulation safe for wide operands
    row_sum: int | None = None


@dataclass
class LayerInfo:
    name: str
    op: str
    w_bits: int | None
    a_bits: int
    macs: int
    kernel: str = ""
    var: relax.Var | None = None   # the integer var the layer's kernel binds (for per-layer timing)
    primitive: str = "int8"        # "int8" | "shift" | "add-attention" (passes/shiftadd.py)
    weight_sqnr_db: float | None = None  # shift linears: power-of-two weights vs float
    # an int16 (residual stream) input: its type, and whether this layer reads it at 16 or 8 bits
    # (IntegerizeContext.read_width); None / None for an 8-bit input
    wide_input: object = None      # quant.QType of the int16 input
    wide_read_bits: int | None = None


@dataclass
class Epilogue:
    """What follows a linear op and is fused into its requantization."""

    var: relax.Var               # the float variable whose value the fused op produces
    bias: np.ndarray | None      # per-channel float bias
    lo: float = -math.inf        # activation clamp in real units
    hi: float = math.inf

    @property
    def nonneg(self) -> bool:
        return self.lo >= 0


class IntegerRule:
    """Base class of integerize rules (register with :func:`register_rule`).

    ``ops`` names the Relax ops the rule handles; ``check`` returns None when it can take the
    binding or a reason why not; ``rewrite`` emits the integer ops and returns the QValue.
    """

    ops: ClassVar[tuple[str, ...]] = ()

    def check(self, ctx: "IntegerizeContext", b: Binding) -> str | None:
        return None

    def rewrite(self, ctx: "IntegerizeContext", b: Binding) -> QValue:  # pragma: no cover - interface
        raise NotImplementedError


RULES: dict[str, list[IntegerRule]] = {}


def register_rule(cls: type[IntegerRule]) -> type[IntegerRule]:
    for op in cls.ops:
        RULES.setdefault(op, []).append(cls())
    return cls


def activation_bounds(b: Binding) -> tuple[float, float]:
    """Real-valued clamp of a ReLU / ReLU6 / Clip binding."""
    if b.op_name == "relax.nn.relu":
        return 0.0, math.inf
    if b.op_name == "relax.nn.relu6":
        return 0.0, 6.0
    return float(b.args[1].value), float(b.args[2].value)


def is_channel_vector(c: np.ndarray, shape, axis) -> bool:
    full = (1,) * (len(shape) - c.ndim) + tuple(c.shape)
    return len(full) == len(shape) and all(d == 1 for i, d in enumerate(full) if i != axis % len(shape))


def clamp_bounds(qt: QType, lo: float, hi: float) -> tuple[int, int]:
    """Integer clamp for an activation ``[lo, hi]`` in ``qt``'s units, inside the dtype range."""
    qmin = qt.qmin if not math.isfinite(lo) else max(qt.qmin, math.ceil(lo / qt.scale - 1e-9))
    qmax = qt.qmax if not math.isfinite(hi) else min(qt.qmax, math.floor(hi / qt.scale + 1e-9))
    return int(qmin), int(qmax)


