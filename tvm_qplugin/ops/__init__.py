"""Integer ops: one module per op family, each op's TE kernel beside its NumPy twin."""
from . import conv, pool, requant  # noqa: F401  (registration side effects)
from . import matmul, nonlinear  # noqa: F401  (integer matmul, softmax, GELU, LayerNorm)
from . import activation, resample  # noqa: F401  (LUT / PRelu / gates, nearest resize / strided slice)
from . import pooling_norm  # noqa: F401  (masked mean pooling, L2 normalisation)
from . import pad_mirror  # noqa: F401  (Pad reflect / edge)
from . import log_softmax  # noqa: F401  (LogSoftmax)
from . import int4_linear  # noqa: F401  (conv2d / dense with packed int4 weights)
from . import shiftadd  # noqa: F401  (shift linear, add attention: ShiftAddViT)
from . import conv_narrowed  # noqa: F401  (the x86 build's requantize -> conv fusion, schedules/x86_narrowing.py)
from .registry import OPS, IntegerOp, const, emit, op_of, register_op, type_of

__all__ = ["OPS", "IntegerOp", "const", "emit", "op_of", "register_op", "type_of"]
