"""The functions of an integer module, by name (passes/integerize.py builds them).

``core`` is integer in / integer out: what the checker verifies, the reference runs and the C
package exports; ``main`` wraps it with the entry quantize and exit dequantize. With ``--int-io``
there is no wrapper and ``main`` is the integer function itself. This module imports nothing, so
the artifact loader can use it without TVM's start-up.
"""
from __future__ import annotations

CORE = "core"
ENTRY = "main"


def integer_function(int_io: bool) -> str:
    """Name of the integer in/out function of a module built with or without ``--int-io``."""
    return ENTRY if int_io else CORE


def integer_function_in(names) -> str:
    """The integer function among a module's function ``names`` (``core`` when there is a wrapper)."""
    return CORE if CORE in names else ENTRY
