"""A compiled artifact: the integer module, its TVM build, the I/O contract and the report.

``OUTDIR`` layout (written atomically: into a sibling temp dir, then renamed)::

    model.so              TVM Relax VM library (functions ``main`` and, unless --int-io, ``core``)
    integer_module.json   the integer Relax module (tvm.ir.save_json): what the reference runs
    io.json               inputs/outputs with dtype, shape and scale; int_io flag
    report.json           DESIGN.md fields

TVM is imported where it is used, so checking an output directory (the CLI does that before a
compile) costs no TVM start-up.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelLoadError, OutputDirError
from .native_log import quiet_native_stderr
from .passes.functions import integer_function
from .quant import QType
from .report import record_code_size

if TYPE_CHECKING:  # annotations only: TVM loads where it is used
    import tvm


@dataclass
class IOSpec:
    """One model input/output. ``qtype`` is None for raw integer tensors (token ids, masks), which
    pass through unquantized with their own ``dtype``."""

    name: str
    shape: tuple[int, ...]
    qtype: QType | None
    dtype: str | None = None

    @property
    def host_dtype(self) -> str:
        """dtype of this tensor on the float API (``run``): float32 unless raw."""
        return "float32" if self.qtype is not None else (self.dtype or "int64")

    def to_host(self, x) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x, self.host_dtype).reshape(self.shape))

    def quantize(self, x) -> np.ndarray:
        return self.to_host(x) if self.qtype is None else self.qtype.quantize(self.to_host(x))

    def to_json(self) -> dict:
        if self.qtype is None:
            return {"name": self.name, "shape": list(self.shape), "dtype": self.host_dtype, "raw": True}
        return {"name": self.name, "shape": list(self.shape), **self.qtype.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "IOSpec":
        if d.get("raw"):
            return cls(d["name"], tuple(d["shape"]), None, d["dtype"])
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
    c_package: Path | None = None   # MCU targets: the C package, saved as OUT/c
    scratch_dirs: list = field(default_factory=list)  # TemporaryDirectory objects: deleted with the artifact
    _vm: object = None

    @property
    def integer_function(self) -> str:
        """The integer in/out function of the module and the build (passes/functions.py)."""
        return integer_function(self.int_io)

    # --- running ---
    @property
    def vm(self) -> "relax.VirtualMachine":  # noqa: F821
        import tvm
        from tvm import relax

        if self._vm is None:
            mod = self.library if self.library is not None else self.executable
            self._vm = relax.VirtualMachine(mod, tvm.cpu())
        return self._vm

    def quantize_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [s.quantize(inputs[s.name]) for s in self.inputs]

    def run_integer(self, qinputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the integer core (integer in, integer out) of the compiled build."""
        import tvm

        res = self.vm[self.integer_function](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in qinputs])
        return _as_list(res)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Float in, float out (dequantized), as NumPy arrays, one per model output."""
        missing = [s.name for s in self.inputs if s.name not in inputs]
        if missing:
            raise KeyError(f"missing input(s) {missing}; the model takes {[s.name for s in self.inputs]}")
        if self.int_io:
            outs = self.run_integer(self.quantize_inputs(inputs))
            return [s.qtype.dequantize(o) for s, o in zip(self.outputs, outs)]
        import tvm

        args = [tvm.runtime.tensor(s.to_host(inputs[s.name])) for s in self.inputs]
        return _as_list(self.vm["main"](*args))

    # --- persistence ---
    def save(self, outdir: str | Path) -> Path:
        """Write OUTDIR atomically; a failure leaves no half-written directory behind.

        Everything is written into a sibling ``.NAME.tmp-*`` directory which then takes OUTDIR's
        place in one rename (an existing artifact in OUTDIR is swapped out atomically where the OS
        allows, and removed). A directory that is not an artifact is never replaced.
        """
        import tvm

        outdir = Path(outdir).resolve()
        parent = outdir.parent
        check_output_dir(outdir)
        if self.executable is None:
            raise OutputDirError(f"cannot save to {str(outdir)!r}: the artifact has no executable (it was loaded, "
                                 "not compiled); copy its directory instead")
        created = _missing_parents(parent)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=parent))
        except OSError as e:
            _remove_empty(created)
            raise OutputDirError(f"cannot write output directory {str(outdir)!r}: {e.strerror or e}; "
                                 "choose a writable location with -o") from None
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; OUTDIR gets the usual mode
            with quiet_native_stderr():
                self.executable.export_library(str(tmp / "model.so"))
            record_code_size(self.report, (tmp / "model.so").stat().st_size)
            (tmp / "integer_module.json").write_text(tvm.ir.save_json(self.integer_mod))
            io = {"int_io": self.int_io, "inputs": [s.to_json() for s in self.inputs],
                  "outputs": [s.to_json() for s in self.outputs]}
            (tmp / "io.json").write_text(json.dumps(io, indent=2))
            (tmp / "report.json").write_text(json.dumps(self.report, indent=2, default=_json_default))
            if self.c_package is not None:  # MCU targets: the standalone C package
                shutil.copytree(self.c_package, tmp / "c", ignore=shutil.ignore_patterns("build*", "*.o", "*.elf"))
            _install(tmp, outdir)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(created)
            if isinstance(e, OSError) and not isinstance(e, OutputDirError):
                raise OutputDirError(f"cannot write output directory {str(outdir)!r}: {e.strerror or e}; "
                                     "choose a location with free space and write permission with -o") from None
            raise
        return outdir


ARTIFACT_FILES = ("model.so", "integer_module.json", "io.json")


def check_output_dir(outdir: str | Path) -> None:
    """Fail early (before any work) when ``outdir`` cannot become an artifact directory.

    Refuses a path whose parent chain runs into a regular file, a location where a temporary
    directory cannot be created (read-only, /proc, ...), an existing file, and an existing non-empty
    directory that is not a tvm-qplugin artifact (which :meth:`Artifact.save` would replace).
    """
    out = Path(outdir)
    fix = "choose another path with -o"
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output directory {str(out)!r} exists and is not a directory; {fix}")
    if out.is_dir():
        try:
            entries = [p.name for p in out.iterdir()]
        except OSError as e:
            raise OutputDirError(f"output directory {str(out)!r} cannot be read: {e.strerror or e}; {fix}") from None
        if entries and not all((out / n).is_file() for n in ARTIFACT_FILES):
            raise OutputDirError(f"output directory {str(out)!r} exists and is not a tvm-qplugin output directory "
                                 f"(it holds {len(entries)} other entr{'y' if len(entries) == 1 else 'ies'}); "
                                 f"refusing to replace it: {fix}")
    probe = out.resolve().parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputDirError(f"cannot create output directory {str(out)!r}: {str(probe)!r} is a file, not a "
                             f"directory; {fix}")
    try:
        tempfile.TemporaryDirectory(prefix=f".{out.resolve().name}.tmp-probe-", dir=probe).cleanup()
    except OSError as e:
        raise OutputDirError(f"output directory {str(out)!r} is not writable ({str(probe)!r}: "
                             f"{e.strerror or e}); {fix}") from None


def _install(tmp: Path, outdir: Path) -> None:
    """Move the finished ``tmp`` directory to ``outdir``, replacing an existing artifact there."""
    if not outdir.exists():
        os.replace(tmp, outdir)
        return
    if _exchange(tmp, outdir):  # atomic swap: OUTDIR is never missing; tmp now holds the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = outdir.parent / f".{outdir.name}.old-{os.getpid()}"
    os.replace(outdir, old)
    try:
        os.replace(tmp, outdir)
    except BaseException:
        os.replace(old, outdir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _umask() -> int:
    try:  # read it without the (process-wide, racy) set-and-restore dance where Linux allows
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` (itself included) that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break


def load(outdir: str | Path) -> Artifact:
    """Reload an artifact written by :meth:`Artifact.save` (its target must run here)."""
    outdir = Path(outdir)
    how = "create it with `tvm-qplugin compile MODEL -o DIR`"
    if not outdir.exists():
        raise ModelLoadError(f"output directory {str(outdir)!r} does not exist; {how}")
    if not outdir.is_dir():
        raise ModelLoadError(f"{str(outdir)!r} is not a directory but a tvm-qplugin output directory is expected; "
                             f"{how}")
    missing = [n for n in ARTIFACT_FILES if not (outdir / n).is_file()]
    if missing:
        raise ModelLoadError(f"{str(outdir)!r} is not a tvm-qplugin output directory (missing {', '.join(missing)}); "
                             f"{how}")
    recompile = "re-create it with `tvm-qplugin compile MODEL -o DIR`"
    try:
        io = json.loads((outdir / "io.json").read_text())
        report = json.loads((outdir / "report.json").read_text()) if (outdir / "report.json").is_file() else {}
        inputs = [IOSpec.from_json(d) for d in io["inputs"]]
        outputs = [IOSpec.from_json(d) for d in io["outputs"]]
        int_io = bool(io["int_io"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{str(outdir / 'io.json')!r} (or report.json) is corrupt "
                             f"({type(e).__name__}: {' '.join(str(e).split())}); {recompile}") from None
    import tvm  # after the cheap checks: a wrong directory is reported without TVM's start-up

    try:
        integer_mod = tvm.ir.load_json((outdir / "integer_module.json").read_text())
    except Exception as e:  # noqa: BLE001 - TVM raises assorted errors for a bad graph
        raise ModelLoadError(f"{str(outdir / 'integer_module.json')!r} is corrupt ({type(e).__name__}: "
                             f"{_last_line(e)}); {recompile}") from None
    art = Artifact(integer_mod, inputs, outputs, int_io, report)
    try:
        with quiet_native_stderr():
            art.library = tvm.runtime.load_module(str(outdir / "model.so"))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load {str(outdir / 'model.so')!r} ({type(e).__name__}: {_last_line(e)}); "
                             f"it must be built for this machine: {recompile}") from None
    return art


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


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
