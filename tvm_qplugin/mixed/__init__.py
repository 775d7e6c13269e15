"""Mixed precision: per-layer sensitivity (HAWQ-V2/V3 Hessian traces, ZeroQ's direct measure), the
ILP that picks ``(w_bits, a_bits)`` per layer under budgets, and data-free calibration (ZeroQ).

The compiler's ``precision="mixed"`` calls :func:`resolve_layer_bits`; everything here runs the
float model in PyTorch (torch_graph.py), never the integer one.
"""
from .plan import build_problem, plan_model, resolve_layer_bits

__all__ = ["build_problem", "plan_model", "resolve_layer_bits"]
