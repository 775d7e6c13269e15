"""Keep TVM from importing PyTorch in a CLI process that never uses it.

Why: ``tvm_ffi/__init__.py`` imports torch eagerly (a workaround for a symbol clash seen only on
Windows with Python 3.12 / torch 2.9) and ``tvm_ffi.core`` imports it again to map torch dtypes.
Neither is needed for anything tvm-qplugin does: torch costs ~2.4 s of CPU per CLI command (the
tests run hundreds), about half the CLI's start-up. Our own code that needs torch (``mixed/``:
sensitivity, ``--calib distill``) imports it itself and still gets it -- only imports whose
importing module is ``tvm`` / ``tvm_ffi`` (or a submodule) are refused, as if torch were not
installed, which both packages handle (``except ImportError``).

Note: a refused import leaves nothing in ``sys.modules``, so a later import of torch by our code
loads it normally; tvm_ffi then lacks its torch dtype table and fast DLPack path, which we never
use (torch tensors never cross into TVM here). The library API (``tvm_qplugin.compile``) does not
install the gate: a user's process may want TVM's torch integration.
"""
from __future__ import annotations

import sys

#: Importers whose ``import torch`` is refused (the module names' first component).
_GATED_IMPORTERS = ("tvm", "tvm_ffi")


def _importer_name() -> str:
    """``__name__`` of the module whose code runs the import: the first frame outside importlib
    and this file."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("importlib") and name != __name__:
            return name
        frame = frame.f_back
    return ""


class _RefuseTorchFromTVM:
    """A ``sys.meta_path`` finder that fails ``import torch`` (and its submodules) when TVM asks."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 - importlib's protocol
        if fullname != "torch" and not fullname.startswith("torch."):
            return None
        if _importer_name().split(".", 1)[0] in _GATED_IMPORTERS:
            raise ModuleNotFoundError("torch is not imported for TVM in tvm-qplugin's CLI", name=fullname)
        return None   # anyone else: the normal finders


def install() -> None:
    """Put the gate first on ``sys.meta_path`` (once), unless TVM is loaded already (a test or a
    user's process calling ``cli.main``): then it would save nothing and only hide torch submodules
    from TVM code that has torch loaded."""
    if "tvm_ffi" in sys.modules:
        return
    if not any(isinstance(f, _RefuseTorchFromTVM) for f in sys.meta_path):
        sys.meta_path.insert(0, _RefuseTorchFromTVM())
