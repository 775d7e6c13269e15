"""MetaSchedule's tensor intrinsics for the tuned target's family only, not for every target.

Why: ``TuneContext.__init__`` (and so ``ms.tune_tir``) runs ``import tvm.s_tir.tensor_intrin``,
whose package ``__init__`` parses the TVMScript intrinsics of every target TVM knows (CUDA, ROCm,
Metal, Hexagon, ARM, x86, RISC-V): 40-47 s of CPU here, most of a small tune, paid once by every
process that tunes. A target's default design space (``"post-order-apply"``) names only its own
family's intrinsics -- the x86 rules ``dot_16x4_vnni`` / ``dot_16x4_avx512`` (``x86.py``), the
ARM rules ``dot_4x4_*`` (``arm_cpu.py``) -- and our rules' spaces use our own (schedules/intrin_x86.py).

:func:`family_tensor_intrin` imports that one submodule (0.3 s for x86, 0.8 s for ARM) and, for
the duration of the block, stands a package object in for ``tvm.s_tir.tensor_intrin`` in
``sys.modules``: the same ``__path__`` (any other submodule still imports on demand), without the
eager ``__init__``, so the import inside ``TuneContext`` finds it and does nothing. After the
block the stand-in is removed, so a later ``import tvm.s_tir.tensor_intrin`` anywhere in the
process is the real one; the submodule already loaded stays in ``sys.modules``, so the real
``__init__`` does not run it twice (a second registration of the same name would raise).

A target of another family (CUDA, RISC-V, ...), or a process that has already imported the real
package, gets today's behaviour: nothing is stood in.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from contextlib import contextmanager

import tvm

PACKAGE = "tvm.s_tir.tensor_intrin"

# first field of the LLVM target triple -> the submodule holding that family's intrinsics
_FAMILY_MODULE = {"x86_64": "x86", "i386": "x86", "i686": "x86", "aarch64": "arm_cpu", "arm64": "arm_cpu"}


def family_module(target: tvm.target.Target) -> str | None:
    """The ``tvm.s_tir.tensor_intrin`` submodule ``target``'s default design space needs, or None
    where it is not known to be one (then the whole package is imported, as MetaSchedule does)."""
    if target.kind.name != "llvm":
        return None
    from tvm.target.codegen import llvm_get_system_triple

    triple = str(target.attrs.get("mtriple", "") or llvm_get_system_triple())
    arch = triple.split("-")[0]
    if arch.startswith(("thumb", "arm")):   # Cortex-M / 32-bit ARM (thumbv7em, thumbv8.1m.main, armv7...)
        return "arm_cpu"
    return _FAMILY_MODULE.get(arch)


@contextmanager
def family_tensor_intrin(target: tvm.target.Target):
    """Within the block, ``import tvm.s_tir.tensor_intrin`` registers only ``target``'s family's
    intrinsics (module doc); wrap the construction of a ``TuneContext`` or an ``ms.tune_tir`` call."""
    module = family_module(target)
    present = sys.modules.get(PACKAGE)
    if module is None or (present is not None and not getattr(present, "stand_in", False)):
        yield   # another family, or the real package already loaded: every intrinsic is there
        return
    stand_in = present
    if stand_in is None:
        spec = importlib.util.find_spec(PACKAGE)
        stand_in = types.ModuleType(PACKAGE, "tvm.s_tir.tensor_intrin without its eager __init__ (tuning/intrin_import.py)")
        stand_in.__spec__ = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        stand_in.__spec__.submodule_search_locations = stand_in.__path__ = list(spec.submodule_search_locations)
        stand_in.__package__, stand_in.stand_in = PACKAGE, True
        sys.modules[PACKAGE] = stand_in
    try:
        importlib.import_module(f"{PACKAGE}.{module}")
        yield
    finally:
        if present is None and sys.modules.get(PACKAGE) is stand_in:   # the outermost block takes it away
            del sys.modules[PACKAGE]
