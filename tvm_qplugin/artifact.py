"""A compiled artifact: the integer module, its TVM build, the I/O contract and the report.

``OUTDIR`` layout (written into a sibling temp dir, then renamed into place; see ``save``)::

    model.so              TVM Relax VM library (functions ``main`` and, unless --int-io, ``core``)
    integer_module.json   the integer Relax module (tvm.ir.save_json): what the reference runs
    io.json               inputs/outputs with dtype, shape and scale; int_io flag
    report.json           DESIGN.md fields
    c/                    MCU / Linux-board targets: the C package
    manifest.json         SHA-256 of each file above, checked by ``load`` before model.so is loaded

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

from .errors import ModelLoadError, OutputDirError, last_line, one_line
from .manifest import MANIFEST, OWN_ENTRIES, check_manifest, write_manifest
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
        """Parse one ``io.json`` entry; a malformed one is a :class:`ModelLoadError`."""
        return _io_spec(d, "I/O spec", lambda why: ModelLoadError(f"malformed I/O spec: {why}"))


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
    cuda_build: object = None       # NVIDIA targets: build_cuda.CudaBuild, saved as OUT/cuda
    scratch_dirs: list = field(default_factory=list)  # TemporaryDirectory objects: deleted with the artifact
    build_target: object = None     # the tvm Target the library was built for (None: loaded -- the host's)
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

        Everything is written into a sibling ``.NAME.tmp-*`` directory, hashed into its
        ``manifest.json``, and then takes OUTDIR's place in one rename; into an existing artifact
        directory only the artifact's own files are replaced (:func:`_install`): files the user put
        there stay. A directory that is not an artifact is never written.
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
                # build leftovers stay behind; the TensorIR kernel objects (tir_kernels_*.o) are part of the package
                shutil.copytree(self.c_package, tmp / "c", ignore=lambda d, names: [
                    n for n in names if n.startswith("build") or n.endswith(".elf")
                    or (n.endswith(".o") and not n.startswith("tir_kernels_"))])
            if self.cuda_build is not None:  # NVIDIA targets: the GPU library, its CUDA C and PTX, check.npz
                from .compile_cuda import save_cuda_build

                save_cuda_build(self.cuda_build, tmp / "cuda", self.integer_function)
            write_manifest(tmp)
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
    """Move the finished artifact in ``tmp`` to ``outdir``.

    A new ``outdir`` is one rename. Into an existing artifact directory, only the artifact's own
    entries (:data:`OWN_ENTRIES`) are replaced, one rename each, and whatever else the user keeps
    there stays: the old manifest goes first and the new one comes last, so a crash in between
    leaves a directory that ``load`` refuses ("no manifest.json") rather than a mix of two builds.
    """
    if not outdir.exists():
        os.replace(tmp, outdir)
        return
    old = tmp / ".replaced"
    old.mkdir()
    if (outdir / MANIFEST).exists():
        os.replace(outdir / MANIFEST, old / MANIFEST)
    for name in OWN_ENTRIES:
        if name == MANIFEST:
            continue
        if (outdir / name).is_dir() and not (outdir / name).is_symlink():
            os.replace(outdir / name, old / name)  # a directory cannot be renamed over a non-empty one
        if (tmp / name).exists():
            os.replace(tmp / name, outdir / name)
        elif (outdir / name).exists() or (outdir / name).is_symlink():
            os.replace(outdir / name, old / name)  # left over from the previous build (e.g. its c/)
    os.replace(tmp / MANIFEST, outdir / MANIFEST)
    shutil.rmtree(tmp, ignore_errors=True)


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
    """Reload an artifact written by :meth:`Artifact.save` (its target must run here).

    Loading dlopens ``model.so``, which runs the library's code like loading any shared library:
    the files are first checked against ``manifest.json`` (SHA-256 of each, see manifest.py), then
    ``io.json`` and ``report.json`` are validated and matched against the integer module's
    signature, and only then is the library loaded. Every failure is a :class:`ModelLoadError`.
    """
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
    check_manifest(outdir)
    recompile = "re-create it with `tvm-qplugin compile MODEL -o DIR`"
    int_io, inputs, outputs = _read_io(outdir / "io.json", recompile)
    report = _read_report(outdir / "report.json", recompile)
    import tvm  # after the cheap checks: a wrong directory is reported without TVM's start-up

    try:
        integer_mod = tvm.ir.load_json((outdir / "integer_module.json").read_text())
    except Exception as e:  # noqa: BLE001 - TVM raises assorted errors for a bad graph
        raise ModelLoadError(f"{str(outdir / 'integer_module.json')!r} is corrupt ({type(e).__name__}: "
                             f"{last_line(e)}); {recompile}") from None
    _check_signature(integer_mod, int_io, inputs, outputs, outdir, recompile)
    art = Artifact(integer_mod, inputs, outputs, int_io, report)
    try:
        with quiet_native_stderr():
            art.library = tvm.runtime.load_module(str(outdir / "model.so"))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load {str(outdir / 'model.so')!r} ({type(e).__name__}: {last_line(e)}); "
                             f"it must be built for this machine: {recompile}") from None
    return art


_RAW_DTYPES = ("int64", "int32")  # what integerize passes through unquantized (token ids, masks)


def _read_io(path: Path, recompile: str) -> tuple[bool, list[IOSpec], list[IOSpec]]:
    """``io.json`` parsed and validated: every field the loader and ``verify`` use, typed."""
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"{str(path)!r} is corrupt ({why}); {recompile}")

    try:
        io = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise bad(f"{type(e).__name__}: {one_line(e)}") from None
    if not isinstance(io, dict) or not isinstance(io.get("int_io"), bool):
        raise bad("expected an object with 'int_io' (true/false), 'inputs' and 'outputs'")
    specs = {}
    for key in ("inputs", "outputs"):
        items = io.get(key)
        if not isinstance(items, list) or not items:
            raise bad(f"{key!r} must be a non-empty list")
        specs[key] = [_io_spec(d, f"{key}[{i}]", bad) for i, d in enumerate(items)]
    return io["int_io"], specs["inputs"], specs["outputs"]


def _io_spec(d, where: str, bad) -> IOSpec:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise bad(f"{where} must be an object with a 'name'")
    shape = d.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                               for v in shape)):
        raise bad(f"{where} shape {shape!r} is not a list of positive integers")
    if d.get("raw", False) is not False:
        if d.get("raw") is not True or d.get("dtype") not in _RAW_DTYPES:
            raise bad(f"{where}: a raw tensor needs 'raw': true and an integer 'dtype' ({', '.join(_RAW_DTYPES)})")
        return IOSpec(d["name"], tuple(shape), None, d["dtype"])
    try:
        levels = d.get("levels")
        if levels is not None and (not isinstance(levels, int) or isinstance(levels, bool) or levels < 1):
            raise ValueError(f"levels {levels!r} is not a positive integer")
        return IOSpec(d["name"], tuple(shape), QType.from_json(d))
    except (KeyError, ValueError, TypeError) as e:
        raise bad(f"{where}: {type(e).__name__}: {one_line(e)}") from None


def _read_report(path: Path, recompile: str) -> dict:
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{str(path)!r} is corrupt ({type(e).__name__}: {one_line(e)}); "
                             f"{recompile}") from None
    if not isinstance(report, dict):
        raise ModelLoadError(f"{str(path)!r} is corrupt (a JSON {type(report).__name__}, not an object); {recompile}")
    return report


def _check_signature(mod, int_io: bool, inputs: list[IOSpec], outputs: list[IOSpec], outdir: Path,
                     recompile: str) -> None:
    """``io.json`` must describe the integer module's core function: same parameters (count, shape,
    integer dtype) and outputs (count, shape) -- the compiled library takes exactly these."""
    from tvm import relax

    from .passes.graph import dtype_of

    fname = "main" if int_io else "core"
    funcs = {g.name_hint: f for g, f in mod.functions.items() if isinstance(f, relax.Function)}
    where = f"{str(outdir / 'io.json')!r} does not match {str(outdir / 'integer_module.json')!r}"
    if fname not in funcs:
        raise ModelLoadError(f"{where}: the module has no Relax function {fname!r} (int_io={int_io}); {recompile}")
    func = funcs[fname]
    want = [(s.name, s.shape, s.qtype.dtype if s.qtype is not None else s.dtype) for s in inputs]
    have = []
    for p in func.params:
        shape = getattr(p.ty, "shape", None)
        have.append((p.name, tuple(int(d) for d in shape) if shape is not None else None, dtype_of(p)))
    if len(want) != len(have) or any(w[1:] != h[1:] for w, h in zip(want, have)):
        raise ModelLoadError(f"{where}: io.json inputs {[(n, list(s), d) for n, s, d in want]}, the module's "
                             f"{fname} takes {[(n, list(s or ()), d) for n, s, d in have]}; {recompile}")
    ret = func.body.body.ty
    fields = list(ret.fields) if hasattr(ret, "fields") else [ret]
    got = [tuple(int(d) for d in f.shape) if getattr(f, "shape", None) is not None else None for f in fields]
    if got != [s.shape for s in outputs]:
        raise ModelLoadError(f"{where}: io.json outputs have shapes {[list(s.shape) for s in outputs]}, the "
                             f"module's {fname} returns {[list(g or ()) for g in got]}; {recompile}")


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
