"""Which primitive each layer gets: int8 multiply, shift linear or add attention (ShiftAddViT).

The choice is a value, :class:`ShiftAddPlan`, carried by ``IntegerizeConfig.shiftadd`` and read
by the rules of passes/rules/shiftadd.py. It is made post-training, by a documented rule:

1. ``attention``: every softmax attention core ``softmax(Q Kᵀ [* c] [+ mask]) V`` becomes add
   attention (ops/shiftadd.py: Hamming codes, masked sums, linear in the sequence length).
2. ``linears``:
   * ``"off"``  -- every linear stays an int8 multiply;
   * ``"all"``  -- every dense layer (matmul with a constant 2-D weight) becomes a shift linear,
     except the model's last one (the classifier / output projection: its error lands on the
     logits unfiltered);
   * ``"rule"`` -- as ``"all"``, but only where the power-of-two weights keep at least
     ``min_weight_sqnr_db`` of weight SQNR against the float weights (a data-free proxy of the
     layer's accuracy cost: layers with a few dominant weights lose most of their small weights
     to the zero code and keep int8).
3. ``overrides``: ``{layer name: "int8" | "shift"}`` wins over 1-2 for that layer (names as
   report.json ``layers[].name``). This is the hook for the mixed-precision ILP: it scores each
   layer's options (SQNR cost vs measured latency) and hands its choice back as overrides.

The per-layer outcome -- primitive, weight SQNR, and the output SQNR measured on real data --
lands in report.json ``layers[]`` (:func:`annotate_report`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import QPluginError

LINEAR_MODES = ("off", "rule", "all")
LAYER_PRIMITIVES = ("int8", "shift")  # what an override may ask of a linear layer
SHIFT_MIN_SQNR_DB = 12.0  # rule mode: below this weight SQNR a linear keeps int8 (4-bit codes give ~14.5 dB on Gaussian-like rows)


@dataclass(frozen=True)
class ShiftAddPlan:
    """The shift/add choices of one compile (module doc). ``overrides``: ``((layer, primitive), ...)``."""

    attention: bool = False
    linears: str = "off"
    overrides: tuple[tuple[str, str], ...] = ()
    min_weight_sqnr_db: float = SHIFT_MIN_SQNR_DB

    def __post_init__(self):
        if self.linears not in LINEAR_MODES:
            raise QPluginError(f"--shift-linears {self.linears!r}: choose one of {', '.join(LINEAR_MODES)}")
        for name, prim in self.overrides:
            if prim not in LAYER_PRIMITIVES:
                raise QPluginError(f"--primitive {name}={prim}: choose one of {', '.join(LAYER_PRIMITIVES)} "
                                   "(attention cores follow --attention)")

    @property
    def active(self) -> bool:
        return self.attention or self.linears != "off" or any(p == "shift" for _, p in self.overrides)

    def linear_choice(self, layer: str, weight_sqnr_db: float, is_last: bool) -> str:
        """``"shift"`` or ``"int8"`` for one dense layer (module doc, rule 2-3)."""
        forced = dict(self.overrides).get(layer)
        if forced is not None:
            return forced
        if self.linears == "off" or is_last:
            return "int8"
        if self.linears == "rule" and weight_sqnr_db < self.min_weight_sqnr_db:
            return "int8"
        return "shift"


def plan_for(attention: str, shift_linears: str | None, primitives=()) -> ShiftAddPlan | None:
    """The plan of the CLI flags: ``--attention shiftadd`` turns both attention and (by default,
    ``--shift-linears rule``) the linears over; ``--shift-linears`` alone gives shift linears with
    int8 attention. ``primitives``: ``["layer=kind", ...]`` or ``{layer: kind}``."""
    if isinstance(primitives, dict):
        overrides = tuple(sorted(primitives.items()))
    else:
        overrides = tuple(_parse_primitive(p) for p in primitives)
    linears = shift_linears if shift_linears is not None else ("rule" if attention == "shiftadd" else "off")
    plan = ShiftAddPlan(attention=attention == "shiftadd", linears=linears, overrides=overrides)
    return plan if plan.active else None


def _parse_primitive(text) -> tuple[str, str]:
    if isinstance(text, tuple) and len(text) == 2:
        return text
    name, sep, prim = str(text).partition("=")
    if not sep or not name:
        raise QPluginError(f"--primitive {text!r}: expected LAYER=int8|shift (LAYER as in report.json layers[].name)")
    return name, prim


def annotate_report(report: dict, imod, iv=None) -> None:
    """``layers[].primitive``, ``weight_sqnr_db`` (shift linears) and ``sqnr_db`` (each layer's
    output against fp32 on the first evaluation batch, from report ``tensors``); and
    ``multiply_free_kernels``: the shift/add kernels the TIR check proved multiply-free (``iv``:
    the integer-only report the build filled, passes/verify.py)."""
    if iv is not None:
        report["multiply_free_kernels"] = iv.multiply_free_kernels
    by_int_var = {}
    for twin in imod.tensors:
        by_int_var.setdefault(twin.int_var, twin.float_var.name)
    sqnr = {t["name"]: t.get("sqnr_db") for t in report.get("tensors", [])}
    for entry, info in zip(report["layers"], imod.layers):
        entry["primitive"] = info.primitive
        entry["sqnr_db"] = sqnr.get(by_int_var.get(info.var))
        if info.weight_sqnr_db is not None:
            entry["weight_sqnr_db"] = round(info.weight_sqnr_db, 2)
