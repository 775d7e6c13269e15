"""The package version, in one place: ``tvm_qplugin.__version__``, report.json's toolchain entry,
the generated C headers and the wheel's metadata (pyproject.toml reads it from here) all take it."""
__version__ = "0.1.0"
