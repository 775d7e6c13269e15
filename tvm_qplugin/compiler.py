"""The compile pipeline: import -> canonicalize -> calibrate -> integerize -> verify -> build ->
check bit-exactness and accuracy -> report. ``tq.compile`` and the CLI both call :func:`compile`."""
from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm

from . import __version__
from .artifact import Artifact, IOSpec
from .calibrate import FloatRunner, calibrate
from .data import Dataset, Preprocess, from_arrays, load_dataset
from .errors import CalibrationError, QPluginError, UnsupportedOpError
from .frontend import import_onnx, name_onnx_nodes, parse_input_shapes
from .metrics import classification_agreement, cosine_agreement, is_classifier
from .passes.canonicalize import canonicalize
from .passes.integerize import IntegerizeConfig, integerize
from .passes.verify import verify_integer_only, verify_lowered_tir
from .progress import progress
from .quant.nonlinear_consts import GELU_APPROX
from .quant.observers import OBSERVERS
from .build import build
from .diagnose import tensor_errors
from .reference import ReferenceInterpreter
from .targets import get_board
from .tuning.apply import resolve_tuning

log = logging.getLogger(__name__)

PRECISIONS = ("int8",)
NONLINEARS = ("ivit", "ibert", "division-free")
GELU_FORMS = tuple(GELU_APPROX)  # "paper", "tanh": quant/nonlinear_consts.py
ATTENTIONS = ("int8",)  # shiftadd (ShiftAddViT) is not implemented yet: refused, not ignored
BIT_EXACT_MIN_INPUTS = 16


@dataclass(frozen=True)
class CompileOptions:
    """Validated compile options (the CLI flags of DESIGN.md)."""

    target: str = "x86-host"
    precision: str = "int8"
    observer: str = "percentile"
    nonlinear: str = "ivit"
    gelu: str = "tanh"             # IntegerizeConfig.gelu_approx: tanh | paper
    softmax_bits: int = 16         # IntegerizeConfig.softmax_bits: 16 | 8
    attention: str = "int8"
    int_io: bool = False
    allow_float: tuple[str, ...] = ()
    calib_limit: int | None = None
    bit_exact_inputs: int = BIT_EXACT_MIN_INPUTS
    timing_runs: int = 20
    show_progress: bool = False
    budget: tuple[tuple[str, float], ...] = ()   # ("size"|"ram", bytes) -- see parse_budget
    mcu_verify_inputs: int = 4                    # samples run under qemu for MCU targets
    tuning_db: str | None = None                  # --tuning-db DIR, else the shipped one (tuning/apply.py)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise QPluginError(f"--precision {self.precision!r} is not available in this version; choose one of "
                               f"{', '.join(PRECISIONS)}")
        if self.observer not in OBSERVERS:
            raise QPluginError(f"--observer {self.observer!r}: choose one of {', '.join(sorted(OBSERVERS))}")
        if self.nonlinear not in NONLINEARS:
            raise QPluginError(f"--nonlinear {self.nonlinear!r}: choose one of {', '.join(NONLINEARS)}")
        if self.gelu not in GELU_FORMS:
            raise QPluginError(f"--gelu {self.gelu!r}: choose one of {', '.join(GELU_FORMS)}")
        if self.softmax_bits not in (8, 16):
            raise QPluginError(f"--softmax-bits {str(self.softmax_bits)!r}: choose 16 (int16 probabilities) or 8 (uint8)")
        if self.attention not in ATTENTIONS:
            raise QPluginError(f"--attention {self.attention!r} is not available in this version; choose one of "
                               f"{', '.join(ATTENTIONS)}")


def _dataset(data, specs, preprocess, what) -> Dataset | None:
    if data is None:
        return None
    if isinstance(data, dict):
        return from_arrays(data, specs, what)
    return load_dataset(data, specs, preprocess, what)


def compile(model: str | Path, target: str = "x86-host", calib=None, eval=None, input_shapes=None,  # noqa: A001
            preprocess: Preprocess | None = None, **options) -> Artifact:
    """Compile a float ONNX model into a verified integer-only artifact.

    Parameters
    ----------
    model : path to the ONNX file.
    target : board name (``tvm-qplugin targets``).
    calib : ``.npz`` path, image directory or ``{input_name: array}`` -- calibration samples.
    eval : same forms -- inputs for the accuracy and bit-exactness figures (default: ``calib``).
    input_shapes : ``{name: shape}`` or ``["name=1,3,224,224"]`` for dynamic inputs.
    **options : fields of :class:`CompileOptions`.
    """
    opts = CompileOptions(target=target, **options)
    board = get_board(opts.target)
    c_route = board.is_mcu or (board.family == "aarch64" and board.os == "linux")
    if not board.runs_here and not c_route:
        raise QPluginError(f"target {board.name!r} ({board.runner}) is not supported by `compile` yet: this version "
                           "builds x86-host, aarch64 Linux and Cortex-M targets")
    if c_route:  # the integer graph is built and checked on the host, then exported as C and run emulated
        opts = CompileOptions(**{**opts.__dict__, "int_io": True})
    host = get_board("x86-host") if c_route else board
    tuning = resolve_tuning(opts.tuning_db, board, host.target(), builds_tvm=not c_route)  # before the long steps
    if isinstance(input_shapes, (list, tuple)):
        input_shapes = parse_input_shapes(list(input_shapes))
    t0 = time.perf_counter()
    imported = import_onnx(model, input_shapes)
    if calib is None:
        raise CalibrationError("no calibration data: pass --calib FILE.npz or --calib DIR (images) "
                               "with the model's input name(s)")
    calib_ds = _dataset(calib, imported.inputs, preprocess, "calibration")
    eval_ds = _dataset(eval, imported.inputs, preprocess, "evaluation") or calib_ds
    if eval_ds.labels is None and eval is None:
        eval_ds = calib_ds

    tvm_target = host.target()
    float_mod = canonicalize(imported.mod)
    runner = FloatRunner(float_mod, tvm_target)
    ranges = calibrate(runner, calib_ds, opts.observer, opts.calib_limit, opts.show_progress)
    try:
        imod = integerize(float_mod, ranges, IntegerizeConfig(int_io=opts.int_io, nonlinear=opts.nonlinear,
                                                              gelu_approx=opts.gelu, softmax_bits=opts.softmax_bits))
    except UnsupportedOpError as e:
        raise name_onnx_nodes(e, imported.onnx_model) from None
    core = "main" if opts.int_io else "core"
    iv = verify_integer_only(imod.mod, opts.allow_float, func_name=core)
    lowered_float = verify_lowered_tir(imod.mod, core)
    if lowered_float and not opts.allow_float:
        from .errors import FloatOpError

        raise FloatOpError(f"float dtypes in lowered TIR kernels: {'; '.join(lowered_float)}")

    t1 = time.perf_counter()
    executable, n_scheduled = build(imod.mod, tvm_target, tuning)
    build_s = time.perf_counter() - t1
    if len(imported.output_names) == len(imod.outputs):  # name outputs as the ONNX model does
        imod.outputs = [(n, shape, qt) for n, (_, shape, qt) in zip(imported.output_names, imod.outputs)]
    dtypes = {spec.name: spec.dtype for spec in imported.inputs}
    art = Artifact(imod.mod, [IOSpec(n, shape, qt, dtypes.get(n)) for n, shape, qt in imod.inputs],
                   [IOSpec(*o) for o in imod.outputs], opts.int_io, executable=executable)

    first_env: dict = {}  # the reference's intermediates on the first batch, for the per-tensor errors
    bit_exact, n_exact = check_bit_exact(art, eval_ds, opts.bit_exact_inputs, opts.show_progress, first_env)
    errors = tensor_errors(runner, imod, next(iter(eval_ds.batches())), first_env)
    accuracy = evaluate(art, FloatRunner(float_mod, tvm_target, observe=False), eval_ds, opts.show_progress)
    latency = measure_latency(art, opts.timing_runs)
    art.report = build_report(imported, board, opts, imod, iv, bit_exact, n_exact, accuracy, latency, executable,
                              compile_s=time.perf_counter() - t0, build_s=build_s)
    art.report["tensors"] = [e.to_json() for e in errors]
    tuning.fill_report(art.report, imod.mod, imod.layers)
    if not c_route:
        add_kernel_times(art, imod, runs=3)
    if c_route:
        export_for_mcu(art, board, eval_ds, opts)
    if not bit_exact:
        log.error("compiled build differs from the NumPy reference: this is a bug, please report it")
    return art


def parse_budget(text: str | None) -> tuple[tuple[str, float], ...]:
    """``"size=2MB,ram=512KB,latency=5ms"`` -> (("size", bytes), ("ram", bytes), ("latency", ms))."""
    if not text:
        return ()
    units = {"": 1, "b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2, "gb": 1024**3, "ms": 1, "s": 1000,
             "us": 1e-3}
    out = []
    for item in text.split(","):
        key, sep, val = item.strip().partition("=")
        num = val.strip().lower().rstrip("bsmkgu")
        unit = val.strip().lower()[len(num):]
        try:
            value = float(num) * units[unit]
        except (ValueError, KeyError):
            value = None
        if not sep or key not in ("size", "ram", "latency", "bops") or value is None or value <= 0:
            raise QPluginError(f"--budget {item!r}: expected size=|ram=|latency=|bops= with a positive number and "
                               "an optional unit (KB, MB, ms), e.g. --budget size=512KB,ram=256KB")
        out.append((key, value))
    return tuple(out)


def export_for_mcu(art: Artifact, board, ds: Dataset, opts: CompileOptions) -> None:
    """Write the C package, check budgets, run it under qemu bit-exactly; fill report memory/cost."""
    import shutil
    import tempfile

    from .export import export_mcu

    budget = dict(opts.budget)
    pkg = Path(tempfile.mkdtemp(prefix="tvm_qplugin_c_"))
    samples = [art.quantize_inputs(b) for b in ds.batches(opts.mcu_verify_inputs)]
    res = export_mcu(art.integer_mod, pkg, board, samples=samples,
                     ram_budget=int(budget["ram"]) if "ram" in budget else None,
                     size_budget=int(budget["size"]) if "size" in budget else None)
    if not board.is_mcu:  # Linux board: the deploy bundle also carries a minimal runner, source + static binary
        from .export.harness import package_info, build_linux, runner_source

        (pkg / "runner").mkdir(exist_ok=True)
        (pkg / "runner" / "runner.c").write_text(runner_source(package_info(pkg)))
        exe = build_linux(pkg, board, build_dir=Path(tempfile.mkdtemp(prefix="tvm_qplugin_runner_")))
        shutil.copy2(exe, pkg / "runner" / "qmodel_runner")
    art.c_package = pkg
    r = art.report
    r["memory"] = res["memory"]
    r["mcu"] = {"board": board.name, "verified_on": res.get("board", board.verified_by), "bit_exact": res["bit_exact"],
                "bit_exact_inputs": res["bit_exact_inputs"],
                "instructions_per_inference": res.get("instructions_per_inference"),
                "instructions_per_mac": res.get("instructions_per_mac")}
    r["bit_exact"] = bool(r["bit_exact"] and res["bit_exact"])
    per_layer = res.get("layers") or []
    convs = [layer for layer in r["layers"] if layer["op"] in ("conv2d", "dense")]
    for layer, cost in zip(convs, per_layer):
        layer["instructions"] = cost.get("instructions")
        layer["instructions_per_mac"] = cost.get("instructions_per_mac")
    r["latency_ms"] = None  # the board is emulated here: qemu counts instructions, not time


def add_kernel_times(art: Artifact, imod, runs: int) -> None:
    """``layers[].latency_us`` (each conv/dense call) and ``kernels`` (time per integer op kind)."""
    from .profile import binding_times, by_op, instrumented_runs, kernel_times

    calls = instrumented_runs(art, runs)
    per_call = binding_times(art, calls)
    for layer, info in zip(art.report["layers"], imod.layers):
        t = per_call.get(info.var)
        layer["latency_us"] = None if t is None else round(t, 1)
    art.report["kernels"] = by_op(art, kernel_times(calls))


def check_bit_exact(art: Artifact, ds: Dataset, n: int, show_progress: bool = False,
                    first_env: dict | None = None) -> tuple[bool, int]:
    """Compiled integer core == NumPy reference on the first ``n`` samples (at least).
    ``first_env``, when given, receives the reference's intermediates on the first batch."""
    ref = ReferenceInterpreter(art.integer_mod)
    fname = "main" if art.int_io else "core"
    checked = 0
    ok = True
    for batch in progress(ds.batches(), total=ds.num_batches(), desc="bit-exact", enabled=show_progress):
        q = art.quantize_inputs(batch)
        got = art.run_integer(q)
        want = ref.run(fname, *q, env=first_env if checked == 0 else None)
        ok &= all(g.dtype == w.dtype and np.array_equal(g, w) for g, w in zip(got, want))
        checked += len(next(iter(batch.values())))
        if checked >= n:
            break
    return ok, checked


def evaluate(art: Artifact, runner: FloatRunner, ds: Dataset, show_progress: bool = False) -> dict:
    f_out, q_out = [], []
    for batch in progress(ds.batches(), total=ds.num_batches(), desc="evaluate", enabled=show_progress):
        _, fo = runner.run(batch)
        f_out.append(fo[0])
        q_out.append(art.run(batch)[0])
    fp32, quant = np.concatenate(f_out), np.concatenate(q_out)
    if is_classifier(fp32.shape):
        labels = ds.labels[: len(fp32)] if ds.labels is not None else None
        return classification_agreement(fp32, quant, labels)
    return cosine_agreement(fp32, quant)


def measure_latency(art: Artifact, runs: int) -> dict:
    args = [tvm.runtime.tensor(np.zeros(s.shape, s.host_dtype)) for s in art.inputs]
    fname = "main"
    if art.int_io:
        args = [tvm.runtime.tensor(s.quantize(np.zeros(s.shape, s.host_dtype))) for s in art.inputs]
    vm = art.vm
    vm[fname](*args)  # warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        vm[fname](*args)
        times.append((time.perf_counter() - t) * 1e3)
    return {"median": float(np.median(times)), "runs": runs}


def _cc_version() -> str:
    try:
        return subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def build_report(imported, board, opts, imod, iv, bit_exact, n_exact, accuracy, latency, executable, compile_s,
                 build_s) -> dict:
    import tvm_ffi

    weights = sum(int(np.prod(c.value.numpy().shape)) * c.value.numpy().itemsize
                  for c in _constants(imod.mod["core" if not opts.int_io else "main"]))
    return {
        "model": str(imported.path),
        "target": board.name,
        "isa_features": board.isa_features(),
        "precision": opts.precision,
        "nonlinear": opts.nonlinear,
        "gelu": opts.gelu,
        "softmax_bits": opts.softmax_bits,
        "attention": opts.attention,
        "observer": opts.observer,
        "integer_only": iv.integer_only,
        "float_ops": len(iv.float_ops) + len(iv.allowed),
        "allowed_float_ops": iv.allowed,
        "division_ops": iv.division_ops,
        "bit_exact": bool(bit_exact),
        "bit_exact_inputs": int(n_exact),
        "accuracy": accuracy,
        "size_bytes": {"weights": weights, "code": None},
        "layers": [{"name": layer.name, "op": layer.op, "w_bits": layer.w_bits, "a_bits": layer.a_bits,
                    "sensitivity": None, "latency_us": None, "macs": layer.macs} for layer in imod.layers],
        "latency_ms": latency,
        "tuning": {"trials": 0, "tasks_tuned": 0, "tasks_untuned": iv.kernels, "db": None},
        "inputs": [{"name": n, "shape": list(s), **(q.to_json() if q is not None else {"raw": True})}
                   for n, s, q in imod.inputs],
        "outputs": [{"name": n, "shape": list(s), **q.to_json()} for n, s, q in imod.outputs],
        "timing_s": {"total": round(compile_s, 2), "tvm_build": round(build_s, 2)},
        "toolchain": {"tvm": tvm.__version__, "tvm_ffi": getattr(tvm_ffi, "__version__", "unknown"),
                      "cc": _cc_version(), "tvm_qplugin": __version__},
    }


def _constants(func):
    from tvm import relax

    found = []

    def visit(e):
        if isinstance(e, tvm.ir.GenericConst):
            found.append(e)

    relax.analysis.post_order_visit(func, visit)
    return found
