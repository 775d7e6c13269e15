"""tvm-qplugin: float ONNX in, verified integer-only (dyadic) TVM build out.

>>> import tvm_qplugin as tq
>>> art = tq.compile("model.onnx", target="x86-host", calib="calib.npz")
>>> art.save("out/"); art = tq.load("out/"); y = art.run({"input": x})
"""
from ._version import __version__
from .errors import (CalibrationError, FloatOpError, MemoryBudgetError, ModelLoadError,
                     OutputDirError, QPluginError, ShapeError, TargetError, UnsupportedOpError)


def compile(*args, **kwargs):  # noqa: A001 - mirrors tvm.compile
    """See :func:`tvm_qplugin.compiler.compile`."""
    from .compiler import compile as _compile

    return _compile(*args, **kwargs)


def load(outdir):
    """See :func:`tvm_qplugin.artifact.load`."""
    from .artifact import load as _load

    return _load(outdir)


__all__ = ["__version__", "compile", "load", "QPluginError", "UnsupportedOpError", "CalibrationError",
           "ModelLoadError", "ShapeError", "FloatOpError", "MemoryBudgetError", "TargetError", "OutputDirError"]
