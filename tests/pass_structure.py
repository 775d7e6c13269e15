"""What the Before/Expected pass tests share (test_pass_structure.py, test_pattern_structure.py)."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


def apply(transform, mod: tvm.IRModule) -> tvm.IRModule:
    """``transform`` then ``CanonicalizeBindings``: every pass here re-emits ``main`` and leaves its
    output as an alias (``gv1 = gv``), which the canonicalize pipeline removes the same way."""
    return relax.transform.CanonicalizeBindings()(transform(mod))


def f32(*v) -> np.ndarray:
    return np.array(v, np.float32)
