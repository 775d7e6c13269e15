"""``--budget``: what a compiled model may cost, parsed once and enforced on every target.

A budget the compiler cannot enforce on the chosen target is refused up front (before any work),
never silently ignored:

=========  ==========================================  =====================================
key        measured as                                 enforced on
=========  ==========================================  =====================================
size       bytes of integer weights (report size_bytes)  every target, right after integerize
bops       Σ MACs · w_bits · a_bits (HAWQ-V3's BOPs)     every target, right after integerize
ram        static arena + stack of the C package         C-package targets (Cortex-M, Linux boards)
latency    median latency of the compiled model (ms)     targets that run on this machine
=========  ==========================================  =====================================

Why ``ram`` is C-package only: the TVM VM of a host build allocates through its runtime pool, so
there is no static figure to hold it to; the C package's arena is planned statically and the
link against the board's memory map enforces it (export/budget.py). Why ``latency`` needs a
native target: emulated boards are measured in instructions (qemu plugin), not time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import BudgetError, QPluginError

_UNITS = {"": 1, "b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2, "gb": 1024**3, "g": 1024**3}
_TIME_UNITS = {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3}
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
KEYS = ("size", "ram", "latency", "bops")


@dataclass(frozen=True)
class Budget:
    """Upper bounds, each ``None`` when not given. Sizes in bytes, latency in ms, bops a count."""

    size: float | None = None
    ram: float | None = None
    latency: float | None = None
    bops: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Budget":
        """``"size=2MB,ram=512KB,latency=5ms,bops=3G"`` -> Budget; a bad item is a one-line error."""
        if not text:
            return cls()
        values: dict[str, float] = {}
        for item in text.split(","):
            key, sep, raw = item.strip().partition("=")
            key, raw = key.strip(), raw.strip().lower()
            value = _number(raw, {"latency": _TIME_UNITS, "bops": _COUNT_UNITS}.get(key, _UNITS)) if sep else None
            if key not in KEYS or value is None or not math.isfinite(value) or value <= 0 or key in values:
                raise QPluginError(f"--budget {item.strip()!r}: expected each of size=|ram=|latency=|bops= at most "
                                   "once, with a positive number and an optional unit (KB, MB for size/ram; us, ms, "
                                   "s for latency; K, M, G for bops), e.g. --budget size=512KB,ram=256KB,latency=5ms")
            values[key] = value
        return cls(**values)

    def items(self) -> tuple[tuple[str, float], ...]:
        return tuple((k, getattr(self, k)) for k in KEYS if getattr(self, k) is not None)

    def check_enforceable(self, board, c_package: bool) -> None:
        """Refuse, before any work, a budget this target cannot be held to."""
        if self.ram is not None and not c_package:
            raise QPluginError(f"--budget ram=... cannot be enforced on {board.name!r}: RAM budgets apply to targets "
                               "compiled to a C package with a static arena (Cortex-M boards, Linux boards such as "
                               "rpi4); the TVM runtime of a host build allocates dynamically. Drop ram= or choose "
                               "such a target (`tvm-qplugin targets`)")
        if self.latency is not None and (c_package or not board.runs_here):
            raise QPluginError(f"--budget latency=... cannot be enforced on {board.name!r}: it is not run natively "
                               "here, so its latency is not measured (emulated boards report instructions). Drop "
                               "latency= or compile for a target that runs on this machine (x86-host)")

    def check_model(self, weights_bytes: int, layers: list[dict]) -> None:
        """size and bops, from the integer graph (before the TVM build, so an over-budget model fails fast)."""
        problems = []
        if self.size is not None and weights_bytes > self.size:
            big = sorted(layers, key=lambda layer: -layer.get("weight_bytes", 0))[:3]
            names = ", ".join(f"{layer['name']} ({layer['weight_bytes']} B)" for layer in big
                              if layer.get("weight_bytes"))
            problems.append(f"weights are {weights_bytes} bytes, the size budget is {int(self.size)}: over by "
                            f"{weights_bytes - int(self.size)} bytes" + (f" (largest: {names})" if names else ""))
        if self.bops is not None:
            total = bops(layers)
            if total > self.bops:
                problems.append(f"the model needs {total:.4g} BOPs (MACs x w_bits x a_bits), the budget is "
                                f"{self.bops:.4g}: over by {total - self.bops:.4g}")
        if problems:
            raise BudgetError("model exceeds --budget: " + "; ".join(problems) + "; raise the budget or use a "
                              "smaller model")

    def check_latency(self, median_ms: float, target: str) -> None:
        if self.latency is not None and median_ms > self.latency:
            raise BudgetError(f"model exceeds --budget latency={self.latency:g}ms on {target}: the median of the "
                              f"measured runs is {median_ms:.3f} ms; raise the budget or use a smaller model")


def bops(layers: list[dict]) -> float:
    """HAWQ-V3's bit operations: Σ over layers of MACs · weight bits · activation bits."""
    return float(sum((layer.get("macs") or 0) * (layer.get("w_bits") or 0) * (layer.get("a_bits") or 0)
                     for layer in layers))


def _number(raw: str, units: dict) -> float | None:
    for unit in sorted(units, key=len, reverse=True):
        if unit and raw.endswith(unit) or not unit:
            num = raw[: len(raw) - len(unit)] if unit else raw
            try:
                return float(num) * units[unit]
            except ValueError:
                continue
    return None
