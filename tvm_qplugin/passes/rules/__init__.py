"""Integerize rules, one module per float op family (importing registers them)."""
from . import elementwise, layout, linear, nonlinear, pooling, transformer  # noqa: F401
