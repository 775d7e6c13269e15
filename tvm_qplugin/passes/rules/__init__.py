"""Integerize rules, one module per float op family (importing registers them)."""
from . import elementwise, layout, linear, nonlinear, pooling, transformer  # noqa: F401
from . import activation, reduce, resample  # noqa: F401  (coverage: sigmoid/tanh/prelu/mul, sum/softmax, resize/slice)
from . import pooling_norm  # noqa: F401  (masked mean pooling, L2 normalisation: sentence-embedding heads)
from . import pad_mirror  # noqa: F401  (Pad reflect / edge)
from . import log_softmax  # noqa: F401  (LogSoftmax on any axis)
from . import magnitude  # noqa: F401  (sqrt(a*a + b*b): spectrogram magnitudes)
from . import shiftadd  # noqa: F401  (shift linears, add attention: ahead of the int8 rules when the plan asks)
