"""Integerize rules, one module per float op family (importing registers them)."""
from . import elementwise, layout, linear, nonlinear, pooling, transformer  # noqa: F401
from . import activation, resample  # noqa: F401  (coverage: sigmoid/tanh/prelu/mul, resize/slice)
