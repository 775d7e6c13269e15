"""Silence TVM's C++ log lines (e.g. the VM executable's per-function "Scope Saving" warnings)
around calls known to emit them, so the CLI's output stays readable."""
from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_native_stderr():
    if os.environ.get("TVM_QPLUGIN_NATIVE_LOG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
