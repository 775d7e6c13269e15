"""The compile pipeline: import -> canonicalize -> calibrate -> integerize -> verify -> build ->
check bit-exactness and accuracy -> report. ``tq.compile`` and the CLI both call :func:`compile`."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm

from . import report
from .artifact import Artifact, IOSpec
from .calibrate import FloatRunner, calibrate
from .data import Dataset, Preprocess, from_arrays, load_dataset
from .errors import CalibrationError, QPluginError, UnsupportedOpError
from .frontend import import_model, name_onnx_nodes, parse_input_shapes
from .metrics import classification_agreement, cosine_agreement, is_classifier
from .passes.canonicalize import canonicalize
from .passes.functions import integer_function
from .passes.integerize import INPUT_BITS, IntegerizeConfig, integerize
from .passes.shiftadd import annotate_report, plan_for
from .passes.verify import check_lowered_kernels, kernel_origins, verify_integer_only
from .peak import operand_bits
from .progress import progress
from .quant.scheme import NonlinearScheme
from .quant.observers import DEFAULT_OBSERVER, OBSERVERS
from .quant.int4_inputs import int4_input_moments
from .quant.wide_inputs import WidePlan, auto_plan, consumers_of, fixed_plan, parse_wide_inputs
from .quant.precision import WeightedLayer, check_plan, load_layer_bits, uniform_plan, weighted_layers
from .budget import Budget
from .build import build
from .diagnose import tensor_errors
from .kernel_check import check_kernels
from .ops.registry import reuse_kernels
from .schedules.x86_narrowing import built_module
from .bitexact import first_difference
from .reference import ReferenceInterpreter
from .targets import get_board
from .tuning.apply import resolve_tuning
from .tuning.isa import isa_key, restrict_target

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "int4", "mixed")
ATTENTIONS = ("int8", "shiftadd")  # shiftadd: ShiftAddViT add attention + shift linears (passes/shiftadd.py)
BIT_EXACT_MIN_INPUTS = 16


@dataclass(frozen=True)
class CompileOptions:
    """Validated compile options (the CLI flags of DESIGN.md)."""

    target: str = "x86-host"
    precision: str = "int8"
    observer: str = DEFAULT_OBSERVER
    nonlinear: str = NonlinearScheme.variant      # the flags of quant/scheme.py's NonlinearScheme,
    gelu: str = NonlinearScheme.gelu               # validated there (see the scheme property)
    softmax_bits: int = NonlinearScheme.softmax_bits
    attention: str = "int8"
    int_io: bool = False
    allow_float: tuple[str, ...] = ()
    calib_limit: int | None = None
    bit_exact_inputs: int = BIT_EXACT_MIN_INPUTS
    timing_runs: int = 20
    show_progress: bool = False
    budget: Budget | str | None = None            # --budget: a Budget, its text form, or None (budget.py)
    mcu_verify_inputs: int = 4                    # samples run under qemu for MCU targets
    tuning_db: str | None = None                  # --tuning-db DIR, else the shipped one (tuning/apply.py)
    isa: str | None = None                        # --isa: build for a narrower x86 level (tuning/isa.py)
    input_values: dict | tuple | None = None      # --input-value: inputs fixed at compile time (passes/specialize.py)
    input_bits: int = 8                           # --input-bits 16: audio, sensor streams, recurrent states
    layer_bits: dict | str | None = None          # --layer-bits FILE.json / {onnx_node: (w_bits, a_bits)}
    shift_linears: str | None = None              # --shift-linears off|rule|all (passes/shiftadd.py)
    primitives: tuple | dict = ()                 # --primitive LAYER=int8|shift: per-layer overrides
    wide_inputs: str | int = "16"                 # --wide-inputs 16|8|auto: what convs read of int16 (quant/wide_inputs.py)

    def __post_init__(self):
        if not isinstance(self.budget, Budget):
            object.__setattr__(self, "budget", Budget.parse(self.budget))
        if self.precision not in PRECISIONS:
            raise QPluginError(f"--precision {self.precision!r} is not available in this version; choose one of "
                               f"{', '.join(PRECISIONS)}")
        if self.layer_bits is not None:
            object.__setattr__(self, "layer_bits", load_layer_bits(self.layer_bits))
        if self.precision == "mixed" and not self.layer_bits and not (self.budget.size or self.budget.bops):
            raise QPluginError("--precision mixed needs a --budget with size= and/or bops= for the ILP to choose the "
                               "per-layer widths under, or a plan of your own with --layer-bits FILE.json")
        if self.observer not in OBSERVERS:
            raise QPluginError(f"--observer {self.observer!r}: choose one of {', '.join(sorted(OBSERVERS))}")
        if self.input_bits not in INPUT_BITS:
            raise QPluginError(f"--input-bits {self.input_bits}: choose one of {', '.join(map(str, INPUT_BITS))}")
        self.scheme  # noqa: B018 - validates --nonlinear / --gelu / --softmax-bits
        if self.attention not in ATTENTIONS:
            raise QPluginError(f"--attention {self.attention!r} is not available in this version; choose one of "
                               f"{', '.join(ATTENTIONS)}")
        self.shiftadd  # noqa: B018 - validates --shift-linears / --primitive
        object.__setattr__(self, "wide_inputs", parse_wide_inputs(self.wide_inputs))

    @property
    def scheme(self) -> NonlinearScheme:
        return NonlinearScheme(self.nonlinear, self.gelu, self.softmax_bits)

    @property
    def shiftadd(self):
        return plan_for(self.attention, self.shift_linears, self.primitives)


def _dataset(data, specs, preprocess, what) -> Dataset | None:
    if data is None:
        return None
    if isinstance(data, dict):
        return from_arrays(data, specs, what)
    return load_dataset(data, specs, preprocess, what)


@dataclass
class IntegerFront:
    """The compile's front half: what ``tune`` needs too, so that it sees the very kernels
    ``compile`` will look up (same import, calibration and integerization)."""

    imported: object          # frontend.Imported: the Relax module, inputs, the ONNX model
    float_mod: tvm.IRModule   # canonicalized float graph
    runner: FloatRunner       # the float graph built for the host, observing (calibration)
    calib_ds: Dataset
    eval_ds: Dataset          # ``eval`` (loaded before calibrating: a bad file fails fast), else calib_ds
    imod: object              # passes.integerize.IntegerModule
    layers: list[WeightedLayer]   # conv / dense layers with their ONNX node names (quant/precision.py)
    layer_bits: dict          # {onnx node: (w_bits, a_bits)}: resolve_layer_bits's plan
    wide_plan: WidePlan | None = None  # what each int16 input's consumer reads (--wide-inputs)
    sensitivity: object = None  # mixed.sensitivity.Sensitivity behind the ILP's plan (report layers[].sensitivity)


def integer_front(model, opts: CompileOptions, tvm_target: tvm.target.Target, calib, input_shapes=None,
                  preprocess: Preprocess | None = None, eval=None) -> IntegerFront:  # noqa: A002 - compile's name
    """Import -> canonicalize -> calibrate -> integerize ``model`` under ``opts``."""
    if isinstance(input_shapes, (list, tuple)):
        input_shapes = parse_input_shapes(list(input_shapes))
    imported = import_model(model, input_shapes, opts.input_values)
    if calib is None:
        raise CalibrationError("no calibration data: pass --calib FILE.npz or --calib DIR (images) "
                               "with the model's input name(s)")
    calib_ds = _dataset(calib, imported.inputs, preprocess, "calibration")
    eval_ds = _dataset(eval, imported.inputs, preprocess, "evaluation") or calib_ds
    if eval_ds.labels is None and eval is None:
        eval_ds = calib_ds
    float_mod = canonicalize(imported.mod)
    layers, names_matched = weighted_layers(float_mod["main"], imported.onnx_model)
    needs_ilp = opts.precision == "mixed" and not opts.layer_bits
    plan = resolve_layer_bits(opts.precision, layers, names_matched, opts.layer_bits)  # before calibrating
    runner = FloatRunner(float_mod, tvm_target)
    ranges = calibrate(runner, calib_ds, opts.observer, opts.calib_limit, opts.show_progress)

    kernels: dict = {}  # the PrimFuncs of the first integerization, reused by the next (ops/registry.py)

    def integerize_with(plan, narrowed=()):
        ranges.input_moments = int4_input_moments(  # the int4 layers' rounding (quant/int4.py)
            runner, calib_ds, float_mod["main"], {layer.var_name for layer in layers if plan[layer.onnx_node][0] == 4},
            opts.calib_limit, ranges.input_moments)
        try:
            with reuse_kernels(kernels):
                return integerize(float_mod, ranges, IntegerizeConfig(
                    int_io=opts.int_io, scheme=opts.scheme, input_bits=opts.input_bits, shiftadd=opts.shiftadd,
                    layer_bits=tuple((layer.var_name, *plan[layer.onnx_node]) for layer in layers),
                    wide_input_bits=8 if opts.wide_inputs == "8" else 16, narrowed_inputs=tuple(narrowed)))
        except UnsupportedOpError as e:
            raise name_onnx_nodes(e, imported.onnx_model) from None

    imod = integerize_with(plan)
    sens = None
    if needs_ilp:  # the ILP's plan (mixed/), costed against the constants this int8 graph really holds
        held = weight_bytes(imod.mod[integer_function(opts.int_io)]) - sum(layer.weight_size for layer in layers)
        ilp_bits, sens = mixed_precision_plan(model, calib_ds, opts.budget, held)
        plan = resolve_layer_bits("mixed", layers, names_matched, ilp_bits)
        imod = integerize_with(plan)
    consumers = consumers_of(imod, layers)
    if opts.wide_inputs == "auto":  # measured on the calibration data, then integerized once more
        wide_plan = auto_plan(imported.onnx_model if imported.onnx_model is not None else model, calib_ds.arrays,
                              consumers)
        if wide_plan.narrowed:
            imod = integerize_with(plan, wide_plan.narrowed)
    else:
        wide_plan = fixed_plan(consumers, int(opts.wide_inputs))
    return IntegerFront(imported, float_mod, runner, calib_ds, eval_ds, imod, layers, plan, wide_plan, sens)


#: activation widths the integer conv / dense kernels take in a mixed plan (quant/precision.py also
#: has 4; the ILP's sensitivity covers 8 and 16): their intersection
MIXED_A_BITS = (8,)


def mixed_precision_plan(model, calib_ds: Dataset, budget: Budget, other_bytes: int):
    """``--precision mixed`` without ``--layer-bits``: per-layer widths from the ILP (mixed/plan.py,
    ``method="auto"``: the Hessian and the direct sensitivity plans, the better one on held-out
    calibration samples) under ``--budget`` (size / bops), on the calibration data, and the
    sensitivities it was solved from (the report's ``layers[].sensitivity``).
    ``other_bytes``: the constants besides the conv / dense weights (biases, multipliers, shifts,
    tables) that ``--budget size=`` counts too, so the ILP's sizes are the compile's.
    Returns ``({onnx node: (w_bits, a_bits)}, Sensitivity)``."""
    from .mixed.plan import plan_model

    plan, _, sens = plan_model(str(model), calib_ds.arrays, budget, labels=calib_ds.labels, a_bits=MIXED_A_BITS,
                               other_bytes=other_bytes)
    return plan.bits, sens


def resolve_layer_bits(precision: str, layers: list[WeightedLayer], names_matched: bool = True,
                       layer_bits: dict | None = None) -> dict[str, tuple[int, int]]:
    """``{onnx node: (w_bits, a_bits)}`` for every conv / dense layer: the precision's uniform plan
    with ``layer_bits`` (the user's, or the mixed-precision ILP's) on top, each entry checked.

    int8: all (8, 8). int4: all (4, 8) but the first and last layer, which stay (8, 8) unless
    ``layer_bits`` names them (HAWQ's convention, docs/precision.md "Precision: int4").
    mixed: the plan itself (the user's ``--layer-bits`` or :func:`mixed_precision_plan`'s) over int8.
    """
    check_plan(layer_bits or {}, layers, names_matched)
    if precision == "mixed":
        base = uniform_plan(layers, 8, keep_ends_8=False)
    else:
        base = uniform_plan(layers, 4 if precision == "int4" else 8, keep_ends_8=True)
    return {**base, **(layer_bits or {})}


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
    cuda_route = board.family == "cuda"  # host-verified integer graph, then its CUDA build (compile_cuda.py)
    if not board.runs_here and not c_route and not cuda_route:
        raise QPluginError(f"target {board.name!r} ({board.runner}) is not supported by `compile` yet: this version "
                           "builds x86-host, aarch64 Linux, Cortex-M and NVIDIA (CUDA) targets")
    if cuda_route:
        from .compile_cuda import check_cuda_board

        check_cuda_board(board)
        if opts.isa is not None or opts.tuning_db is not None:
            raise QPluginError(f"--isa and --tuning-db apply to x86 builds; {board.name} gets a CUDA build whose "
                               "kernels are not tuned in this version: drop them")
    opts.budget.check_enforceable(board, c_package=c_route)
    if c_route:  # the integer graph is built and checked on the host, then exported as C and run emulated
        opts = CompileOptions(**{**opts.__dict__, "int_io": True})
    host = get_board("x86-host") if c_route or cuda_route else board
    if opts.isa is not None and c_route:
        raise QPluginError(f"--isa applies to targets built by TVM and run here (x86-host); {board.name} gets a C "
                           "package built by its own cross compiler: drop --isa")
    tvm_target = restrict_target(host.target(), opts.isa)
    # a --tuning-db is checked before the long steps (a wrong one fails fast); the shipped database
    # is read only once the model has imported and calibrated (2-4 s a process that a bad model,
    # bad data or a bad option never needs)
    tuning = None if opts.tuning_db is None else resolve_tuning(opts.tuning_db, host, tvm_target, builds_tvm=not c_route)
    t0 = time.perf_counter()
    front = integer_front(model, opts, tvm_target, calib, input_shapes, preprocess, eval=eval)
    if tuning is None:
        tuning = resolve_tuning(None, host, tvm_target, builds_tvm=not c_route)
    imported, runner, imod = front.imported, front.runner, front.imod
    eval_ds = front.eval_ds
    core = integer_function(opts.int_io)
    weights = weight_bytes(imod.mod[core])
    opts.budget.check_model(weights, [layer.__dict__ for layer in imod.layers])
    iv = verify_integer_only(imod.mod, opts.allow_float, func_name=core)  # the Relax level; the TIR level runs
    origins = kernel_origins(imod.mod, core)                              # inside build, on the scheduled kernels

    t1 = time.perf_counter()
    executable, n_scheduled = build(imod.mod, tvm_target, tuning=tuning,
                                    check=lambda lowered: check_lowered_kernels(lowered, iv, origins, core))
    build_s = time.perf_counter() - t1
    if len(imported.output_names) == len(imod.outputs):  # name outputs as the ONNX model does
        imod.outputs = [(n, shape, qt) for n, (_, shape, qt) in zip(imported.output_names, imod.outputs)]
    dtypes = {spec.name: spec.dtype for spec in imported.inputs}
    art = Artifact(imod.mod, [IOSpec(n, shape, qt, dtypes.get(n)) for n, shape, qt in imod.inputs],
                   [IOSpec(*o) for o in imod.outputs], opts.int_io, executable=executable, build_target=tvm_target)

    first_env: dict = {}  # the reference's intermediates on the first batch, for the per-tensor errors
    checked_samples = [] if cuda_route else None  # what the host check compared: OUT/cuda/check.npz
    bit_exact, n_exact = check_bit_exact(art, eval_ds, opts.bit_exact_inputs, opts.show_progress, first_env,
                                         checked_samples)
    kernels_exact = check_kernels(art)  # each kernel alone on dtype extremes and exact rounding ties
    bit_exact = bit_exact and not kernels_exact["mismatched"]
    errors = tensor_errors(runner, imod, next(iter(eval_ds.batches())), first_env)
    accuracy = evaluate(art, runner, eval_ds, opts.show_progress)  # the calibration's float build, outputs only
    accuracy["data"] = "eval" if eval is not None else "calibration"
    latency = measure_latency(art, opts.timing_runs)
    opts.budget.check_latency(latency["median"], board.name)
    art.report = report.build(imported, board, opts, imod, iv, weights,
                              checks={"bit_exact": bit_exact, "bit_exact_inputs": n_exact,
                                      "bit_exact_kernels": kernels_exact},
                              accuracy=accuracy, latency=latency, tensors=errors,
                              timing_s={"total": time.perf_counter() - t0, "tvm_build": build_s},
                              isa=None if c_route else isa_key(tvm_target))
    report.record_tuning(art.report, *tuning.report(built_module(art), imod.layers))  # the kernels built
    report.record_onnx_nodes(art.report, {layer.var_name: layer.onnx_node for layer in front.layers})
    if front.sensitivity is not None:
        report.record_sensitivity(art.report, front.sensitivity)
    annotate_report(art.report, imod, iv)
    if not c_route and not cuda_route:
        add_kernel_times(art, imod, runs=3)
    report.record_wide_inputs(art.report, imod.layers, front.wide_plan, opts.wide_inputs,
                              operand_bits(imod.mod, core))
    if c_route:
        export_for_mcu(art, board, eval_ds, opts)
    if cuda_route:
        from .compile_cuda import attach_cuda_build

        attach_cuda_build(art, board, imod.layers, eval_ds, opts.bit_exact_inputs, opts.timing_runs,
                          checked_samples)
    if not bit_exact:
        log.error("compiled build differs from the NumPy reference: this is a bug, please report it")
    return art


def export_for_mcu(art: Artifact, board, ds: Dataset, opts: CompileOptions) -> None:
    """Write the C package, check budgets, run it under qemu bit-exactly; fill report memory/cost."""
    import shutil
    import tempfile

    from .export import export_mcu

    budget = opts.budget
    scratch = tempfile.TemporaryDirectory(prefix="tvm_qplugin_c_")  # removed with the artifact
    art.scratch_dirs.append(scratch)
    pkg = Path(scratch.name)
    samples = [art.quantize_inputs(b) for b in ds.batches(opts.mcu_verify_inputs)]
    res = export_mcu(art.integer_mod, pkg, board, samples=samples,
                     ram_budget=None if budget.ram is None else int(budget.ram),
                     size_budget=None if budget.size is None else int(budget.size))
    if not board.is_mcu:  # Linux board: the deploy bundle also carries a minimal runner, source + static binary
        from .export.harness import package_info, build_linux, runner_source

        (pkg / "runner").mkdir(exist_ok=True)
        (pkg / "runner" / "runner.c").write_text(runner_source(package_info(pkg)))
        with tempfile.TemporaryDirectory(prefix="tvm_qplugin_runner_") as build_dir:
            exe = build_linux(pkg, board, build_dir=Path(build_dir))
            shutil.copy2(exe, pkg / "runner" / "qmodel_runner")
    art.c_package = pkg
    report.record_c_package(art.report, res, board)


def add_kernel_times(art: Artifact, imod, runs: int) -> None:
    """``layers[].latency_us`` (each conv/dense call) and ``kernels`` (time per integer op kind)."""
    from .peak import layer_peak_gmacs
    from .profile import binding_times, by_op, instrumented_runs, kernel_times

    calls = instrumented_runs(art, runs)
    per_call = binding_times(art, calls)
    bits = operand_bits(art.integer_mod, art.integer_function)  # the operand the kernel reads, not the plan's a_bits
    peaks = [layer_peak_gmacs(art.build_target, bits.get(info.var, info.a_bits)) for info in imod.layers]
    report.record_kernel_times(art.report, [per_call.get(info.var) for info in imod.layers],
                               by_op(art, kernel_times(calls)), peaks)


def check_bit_exact(art: Artifact, ds: Dataset, n: int, show_progress: bool = False,
                    first_env: dict | None = None, samples: list | None = None) -> tuple[bool, int]:
    """Compiled integer core == NumPy reference on the first ``n`` samples (at least).
    ``first_env``, when given, receives the reference's intermediates on the first batch;
    ``samples`` the (inputs, reference outputs) pairs compared (compare_with_reference)."""
    checked, first_bad = compare_with_reference(art, ds, n, art.run_integer, show_progress, first_env, samples)
    return first_bad is None, checked


def compare_with_reference(art: Artifact, ds: Dataset, n: int, run, show_progress: bool = False,
                           first_env: dict | None = None, samples: list | None = None) -> tuple[int, str | None]:
    """``run(quantized inputs) -> outputs`` (the host build, a GPU build, ...) against the NumPy
    reference on the first ``n`` samples (at least); returns the samples checked and the first
    difference (``None`` when bit-exact). One loop for every backend, so that what "bit-exact"
    means cannot drift between them. ``samples``, when given, receives each batch's (integer
    inputs, reference outputs): a CUDA compile saves them for the GPU machine instead of running
    the reference a second time."""
    ref = ReferenceInterpreter(art.integer_mod)
    fname = art.integer_function
    checked, first_bad = 0, None
    for batch in progress(ds.batches(), total=ds.num_batches(), desc="bit-exact", enabled=show_progress):
        q = art.quantize_inputs(batch)
        got = run(q)
        want = ref.run(fname, *q, env=first_env if checked == 0 else None)
        if samples is not None:
            samples.append((q, [np.asarray(w) for w in want]))
        for i, (g, w) in enumerate(zip(got, want)):
            diff = first_difference(g, w)
            if diff is not None and first_bad is None:
                first_bad = f"output {i}, batch starting at sample {checked}: {diff}"
        checked += len(next(iter(batch.values())))
        if checked >= n:
            break
    return checked, first_bad


def evaluate(art: Artifact, runner: FloatRunner, ds: Dataset, show_progress: bool = False) -> dict:
    """Accuracy of the build against the float model on ``ds``. ``runner`` may be the calibration's
    observing build: its outputs are the plain build's bit for bit (the same legalized kernels; the
    CPU build pipeline fuses nothing), and reusing it spares a second float build and JIT (MobileNetV2:
    ~6-9 s per compile, half of a small model's float builds)."""
    f_out, q_out = [], []
    for batch in progress(ds.batches(), total=ds.num_batches(), desc="evaluate", enabled=show_progress):
        _, fo = runner.run(batch, taps=False)
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


def weight_bytes(func) -> int:
    """Bytes of every constant the integer function holds (weights, biases, multipliers, tables)."""
    return sum(int(np.prod(c.value.numpy().shape)) * c.value.numpy().itemsize for c in _constants(func))


def _constants(func):
    from tvm import relax

    found = []

    def visit(e):
        if isinstance(e, tvm.ir.GenericConst):
            found.append(e)

    relax.analysis.post_order_visit(func, visit)
    return found
