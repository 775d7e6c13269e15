"""User-facing error types.

Every error a user can cause derives from :class:`QPluginError`; the CLI prints its message on one
line and exits with status 2. Messages say what went wrong, where (file, node, op, shape) and what
would fix it. ``assert`` is kept for internal invariants only.
"""
from __future__ import annotations


def one_line(text) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space: how any
    message, ours or a library's, becomes part of the single stderr line of a failed command."""
    return " ".join(str(text).split())


def last_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's message: TVM's and the C compilers' errors end
    with the one that says what happened, after pages of context."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class QPluginError(Exception):
    """Base class of every error caused by user input."""


class ModelLoadError(QPluginError, ValueError):
    """The model file is missing, not ONNX, truncated, or invalid."""


class ShapeError(QPluginError, ValueError):
    """A model input has a dynamic dimension and no --input-shape, or a bad --input-shape."""


class UnsupportedOpError(QPluginError, NotImplementedError):
    """Ops no integerize rule accepts. Lists every one over the whole graph, raised once.

    ``problems`` holds ``(relax_var, relax_op, reason)`` per refused binding when integerize
    raised it, so the compiler can add the ONNX node names the user knows (frontend.py).
    """

    def __init__(self, message: str, problems: tuple[tuple[str, str, str], ...] = ()):
        super().__init__(message)
        self.problems = problems


class CalibrationError(QPluginError, ValueError):
    """Calibration / evaluation data that is empty or of the wrong shape or dtype."""


class FloatOpError(QPluginError, RuntimeError):
    """verify_integer_only found float arithmetic between entry quantize and exit dequantize."""


class BudgetError(QPluginError, RuntimeError):
    """The compiled model exceeds a ``--budget`` (size, BOPs, latency) or the board's memory."""


class MemoryBudgetError(BudgetError):
    """The model does not fit the board's memory or the --budget; names the tensors and bytes over."""


class TargetError(QPluginError, ValueError):
    """Unknown board or malformed board file."""


class OutputDirError(QPluginError, OSError):
    """The output directory cannot be written."""
