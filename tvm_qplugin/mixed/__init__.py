"""Mixed precision: per-layer sensitivity (HAWQ-V2/V3 Hessian traces, ZeroQ's direct measure), the
ILP that picks ``(w_bits, a_bits)`` per layer under budgets, and data-free calibration (ZeroQ).

The compiler's ``precision="mixed"`` calls :func:`resolve_layer_bits`; everything here runs the
float model in PyTorch (torch_graph.py), never the integer one.

The package-level names load :mod:`.plan` (and with it TVM and PyTorch) on first use, not on
import: the CLI's parser imports :mod:`.cli`, and a user error must be reported before TVM loads.
"""
__all__ = ["build_problem", "plan_model", "resolve_layer_bits"]


def __getattr__(name: str):
    if name in __all__:
        from . import plan
        return getattr(plan, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
