"""A compiled artifact: the integer module, its TVM build, the I/O contract and the report.

``OUTDIR`` layout (written atomically: into a sibling temp dir, then renamed)::

    model.so              TVM Relax VM library (functions ``main`` and, unless --int-io, ``core``)
    integer_module.json   the integer Relax module (tvm.ir.save_json): what the reference runs
    io.json               inputs/outputs with dtype, shape and scale; int_io flag
    report.json           DESIGN.md fields
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .errors import ModelLoadError, OutputDirError
from .native_log import quiet_native_stderr
from .quant import QType


@dataclass
class IOSpec:
    name: str
    shape: tuple[int, ...]
    qtype: QType

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), **self.qtype.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "IOSpec":
        return cls(d["name"], tuple(d["shape"]), QType.from_json(d))


@dataclass
class Artifact:
    """What ``tq.compile`` returns and ``tq.load`` restores."""

    integer_mod: tvm.IRModule
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    int_io: bool
    report: dict = field(default_factory=dict)
    executable: object = None
    library: object = None
    _vm: object = None

    # --- running ---
    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            mod = self.library if self.library is not None else self.executable
            self._vm = relax.VirtualMachine(mod, tvm.cpu())
        return self._vm

    def quantize_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [s.qtype.quantize(np.asarray(inputs[s.name], np.float32).reshape(s.shape)) for s in self.inputs]

    def run_integer(self, qinputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the integer core (integer in, integer out) of the compiled build."""
        fname = "main" if self.int_io else "core"
        res = self.vm[fname](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in qinputs])
        return _as_list(res)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Float in, float out (dequantized), as NumPy arrays, one per model output."""
        missing = [s.name for s in self.inputs if s.name not in inputs]
        if missing:
            raise KeyError(f"missing input(s) {missing}; the model takes {[s.name for s in self.inputs]}")
        if self.int_io:
            outs = self.run_integer(self.quantize_inputs(inputs))
            return [s.qtype.dequantize(o) for s, o in zip(self.outputs, outs)]
        args = [tvm.runtime.tensor(np.ascontiguousarray(np.asarray(inputs[s.name], np.float32).reshape(s.shape)))
                for s in self.inputs]
        return _as_list(self.vm["main"](*args))

    # --- persistence ---
    def save(self, outdir: str | Path) -> Path:
        """Write OUTDIR atomically; a failure leaves no half-written directory behind."""
        outdir = Path(outdir).resolve()
        parent = outdir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=parent))
        except OSError as e:
            raise OutputDirError(f"cannot write output directory {str(outdir)!r}: {e.strerror or e}; "
                                 "choose a writable location with -o") from None
        try:
            if self.executable is None:
                raise OutputDirError("artifact has no executable to save (it was loaded, not compiled)")
            with quiet_native_stderr():
                self.executable.export_library(str(tmp / "model.so"))
            (tmp / "integer_module.json").write_text(tvm.ir.save_json(self.integer_mod))
            io = {"int_io": self.int_io, "inputs": [s.to_json() for s in self.inputs],
                  "outputs": [s.to_json() for s in self.outputs]}
            (tmp / "io.json").write_text(json.dumps(io, indent=2))
            (tmp / "report.json").write_text(json.dumps(self.report, indent=2, default=_json_default))
            if outdir.exists():
                old = parent / f".{outdir.name}.old-{os.getpid()}"
                os.replace(outdir, old)
                os.replace(tmp, outdir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, outdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return outdir


def load(outdir: str | Path) -> Artifact:
    """Reload an artifact written by :meth:`Artifact.save` (its target must run here)."""
    outdir = Path(outdir)
    needed = ["model.so", "integer_module.json", "io.json"]
    missing = [n for n in needed if not (outdir / n).is_file()]
    if missing:
        raise ModelLoadError(f"{str(outdir)!r} is not a tvm-qplugin output directory (missing {', '.join(missing)}); "
                             "create it with `tvm-qplugin compile MODEL -o DIR`")
    io = json.loads((outdir / "io.json").read_text())
    report = json.loads((outdir / "report.json").read_text()) if (outdir / "report.json").is_file() else {}
    art = Artifact(tvm.ir.load_json((outdir / "integer_module.json").read_text()),
                   [IOSpec.from_json(d) for d in io["inputs"]], [IOSpec.from_json(d) for d in io["outputs"]],
                   bool(io["int_io"]), report)
    with quiet_native_stderr():
        art.library = tvm.runtime.load_module(str(outdir / "model.so"))
    return art


def _as_list(res) -> list[np.ndarray]:
    if hasattr(res, "numpy"):
        return [res.numpy()]
    return [r.numpy() for r in res]


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
