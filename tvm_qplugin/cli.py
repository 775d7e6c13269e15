"""``tvm-qplugin`` command line (DESIGN.md "Contracts"). User mistakes print one line and exit 2."""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

from . import torch_gate
from .errors import QPluginError, last_line, one_line
from .quant.scheme import VARIANTS, NonlinearScheme

EXIT_USER_ERROR = 2


EXIT_INTERNAL_ERROR = 70  # sysexits EX_SOFTWARE: a bug in tvm-qplugin, not a user mistake
PROG = "tvm-qplugin"


def _error_line(message) -> str:
    """The one stderr line of a failed command."""
    return f"{PROG}: error: {one_line(message)}"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error contract (still exit status 2)."""

    def error(self, message: str):  # noqa: D102
        self.exit(EXIT_USER_ERROR, f"{PROG}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers, e.g. 0.485,0.456,0.406") \
            from None


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} is not a positive integer")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Float ONNX -> verified integer-only TVM build")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="quantize + integerize + build + verify a model")
    c.add_argument("model")
    c.add_argument("--target", default="x86-host")
    c.add_argument("--calib", help="calibration data: FILE.npz, a directory of images, or 'distill' (data-free, ZeroQ)")
    c.add_argument("--eval", help="FILE.npz of inputs (and optional 'labels') for the accuracy figure")
    c.add_argument("--precision", default="int8", help="int8 (default) | int4 (4-bit weights for every conv / dense but "
                   "the first and last; 8-bit activations) | mixed (needs --layer-bits for now)")
    c.add_argument("--layer-bits", metavar="FILE.json", help="per-layer widths {onnx_node: [w_bits, a_bits]} over "
                   "--precision's plan (w_bits 4 | 8, a_bits 4 | 8)")
    c.add_argument("--observer", default=None, help="minmax | percentile (default, 99.999) | mse (the default "
                   "with --calib distill)")
    c.add_argument("--nonlinear", default=NonlinearScheme.variant, help=" | ".join(VARIANTS) + " (the *-paper variants: "
                   "the published integer kernels bit for bit; they fix --gelu and --softmax-bits)")
    c.add_argument("--gelu", default=NonlinearScheme.gelu, help="tanh (default: tanh-GELU as an integer sigmoid, max error "
                   "5e-4) | paper (the form of I-ViT's x*sigmoid(1.702x) / I-BERT's erf polynomial, ~0.02, in our arithmetic)")
    c.add_argument("--softmax-bits", type=int, default=NonlinearScheme.softmax_bits, help="16 (default: int16 probabilities) | 8 ("
                   "uint8 at 2^-8, in our arithmetic)")
    c.add_argument("--attention", default="int8", help="int8 | shiftadd (ShiftAddViT: add attention + shift linears)")
    c.add_argument("--shift-linears", default=None, help="off | rule | all: power-of-two linears (default: rule "
                   "with --attention shiftadd, else off; docs/transformers.md \"Shift/add\")")
    c.add_argument("--primitive", action="append", default=[], metavar="LAYER=int8|shift",
                   help="per-layer override of the shift/add rule (LAYER as in report.json layers[].name)")
    c.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    c.add_argument("--input-value", action="append", default=[], metavar="NAME=V[,V...]",
                   help="fix an input at compile time (a mode or sample-rate input the model branches on)")
    c.add_argument("--input-bits", type=int, default=8, choices=(8, 16),
                   help="width of the quantized model inputs: 16 for audio / sensor streams and recurrent states")
    c.add_argument("--wide-inputs", default="16", metavar="16|8|auto", help="width at which a conv / dense reads "
                   "the int16 residual stream: 16 (default: vpdpwssd), 8 (a requantize in front of each such layer: "
                   "vpdpbusd, less precise), auto (8 where measured harmless on the calibration data)")
    c.add_argument("--int-io", action="store_true", help="integer inputs/outputs (no entry/exit float ops)")
    c.add_argument("--allow-float", default="", metavar="OP,...", help="accept float findings "
                   "of these ops (qplugin op or relax.* names): reported, integer_only becomes false")
    c.add_argument("--calib-limit", type=_positive_int, help="use at most N calibration samples")
    c.add_argument("--budget", metavar="size=..,ram=..", help="fail unless the model fits: size= (weights), "
                   "bops=, ram= (C-package targets), latency= (targets run here), e.g. size=512KB,latency=5ms")
    img = c.add_argument_group("image directory preprocessing (with --calib DIR)")
    img.add_argument("--resize", type=_positive_int, help="resize the short side to N pixels")
    img.add_argument("--crop", type=_positive_int, help="center crop N x N")
    img.add_argument("--scale", type=float, help="multiply pixels by this (default 1/255)")
    img.add_argument("--mean", type=_floats, help="subtract per channel after scaling (default 0,0,0)")
    img.add_argument("--std", type=_floats, help="divide per channel after the mean (default 1,1,1); with --calib "
                     "distill, --scale/--mean/--std bound the synthetic inputs to what real images can produce")
    img.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])
    img.add_argument("--grayscale", action="store_true")
    c.add_argument("--tuning-db", metavar="DIR", help="MetaSchedule database from `tune` (default: the one shipped for "
                   "the board and the CPU's ISA level, if any)")
    c.add_argument("--isa", help="build the kernels for a narrower x86 ISA level than this CPU's (e.g. avx2 on an "
                   "AVX-512 machine, for a fleet of AVX2 boxes); its shipped tuning database applies")
    c.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    c.add_argument("--no-progress", action="store_true")
    _add_tune_parser(sub)
    from .mixed.cli import add_sensitivity_parser

    add_sensitivity_parser(sub, _positive_int)

    v = sub.add_parser("verify", help="re-run a compiled OUTDIR against the NumPy reference, bit for bit")
    v.add_argument("outdir")
    v.add_argument("--inputs", help="FILE.npz of inputs (default: random inputs in the quantized range)")
    v.add_argument("--count", type=_positive_int, default=16)

    i = sub.add_parser("inspect", help="ops, shapes, params; what is supported and why not")
    i.add_argument("model")
    i.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    i.add_argument("--input-value", action="append", default=[], metavar="NAME=V[,V...]")

    sub.add_parser("targets", help="list the board catalogue")
    return p


def cmd_compile(a) -> int:
    out = Path(a.output)
    # Fail fast, before TVM loads and the (long) compile runs: model file, data files, OUTDIR.
    _precheck(a)
    _check_writable(out)
    allow_float = tuple(x.strip() for x in a.allow_float.split(",") if x.strip())
    from .passes.verify import check_allow_names

    check_allow_names(allow_float)  # an unknown name is refused now, not after calibration

    from .compiler import compile as compile_model
    from .data import Preprocess
    from .report import summary

    given = {k: getattr(a, k) for k in ("scale", "mean", "std") if getattr(a, k) is not None}
    pre = Preprocess(resize=a.resize, crop=a.crop, layout=a.layout, grayscale=a.grayscale, **given)
    calib, distilled = a.calib, None
    if calib == "distill":  # ZeroQ: inputs synthesised from the model's batch-norm statistics
        from .mixed.cli import distilled_calibration, distilled_observer

        calib, distilled = distilled_calibration(a.model, a.input_shape, pre if given else None)
        a.observer = distilled["observer"] = distilled_observer(a.observer)
    art = compile_model(a.model, target=a.target, calib=calib, eval=a.eval, input_shapes=a.input_shape,
                        preprocess=pre, precision=a.precision, layer_bits=a.layer_bits, nonlinear=a.nonlinear,
                        **({"observer": a.observer} if a.observer else {}),
                        attention=a.attention, shift_linears=a.shift_linears, primitives=tuple(a.primitive),
                        int_io=a.int_io, gelu=a.gelu, softmax_bits=a.softmax_bits,
                        allow_float=allow_float, calib_limit=a.calib_limit, tuning_db=a.tuning_db, isa=a.isa,
                        input_values=tuple(a.input_value) or None, input_bits=a.input_bits, wide_inputs=a.wide_inputs,
                        budget=a.budget, show_progress=not a.no_progress and sys.stderr.isatty())
    if distilled is not None:
        from .report import record_distilled_calibration

        record_distilled_calibration(art.report, distilled)
    art.save(out)
    from .report_html import write_report_html

    write_report_html(out, art.report)
    print(summary(art.report, out))
    _print_tuning(art.report)
    return 0 if art.report["bit_exact"] else 1


def cmd_sensitivity(a) -> int:
    from .mixed.cli import run_sensitivity

    return run_sensitivity(a)


def cmd_verify(a) -> int:
    from .verify import verify_outdir

    res = verify_outdir(a.outdir, a.inputs, a.count)
    print(json.dumps(res, indent=2))
    return 0 if res["bit_exact"] and res["integer_only"] else 1  # both re-checked on the artifact itself


def cmd_inspect(a) -> int:
    from .inspect_model import inspect_model

    print(inspect_model(a.model, a.input_shape, a.input_value))
    return 0


def cmd_targets(a) -> int:
    from .targets import boards

    for b in boards().values():
        extra = f" [{', '.join(b.isa_features())}]" if b.detect_host else ""
        mem = b.memory_summary() if hasattr(b, "memory_summary") else ""
        via = f" (verified on {b.verified_by})" if getattr(b, "verified_by", "") else ""
        print(f"{b.name:18s} {b.family:9s} {b.runner:16s} {b.description}{extra} {mem}{via}".rstrip())
    return 0


def _add_tune_parser(sub) -> None:
    t = sub.add_parser("tune", help="tune the model's integer kernels with MetaSchedule into a database")
    t.add_argument("model")
    t.add_argument("--target", default="x86-host")
    t.add_argument("--trials", type=_positive_int, required=True, help="trials per kernel (a rerun resumes)")
    t.add_argument("--calib", help="calibration data, as for compile (same data: same kernels)")
    t.add_argument("--db", metavar="DIR", help="database folder (default ./schedules/<board>/<isa>/)")
    t.add_argument("--isa", help="tune for a narrower ISA level than this CPU's, e.g. avx2 on an AVX-512 machine")
    t.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on the boards of a TVM RPC tracker")
    t.add_argument("--rpc-key", metavar="KEY", help="the tracker key the boards are registered under")
    t.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    t.add_argument("--input-value", action="append", default=[], metavar="NAME=V[,V...]")
    t.add_argument("--observer", default="percentile")
    t.add_argument("--nonlinear", default="ivit")
    t.add_argument("--int-io", action="store_true")
    t.add_argument("--wide-inputs", default="16", metavar="16|8|auto",
                   help="as for compile: the kernels of the graph compile builds (8 / auto: narrowed convs)")
    t.add_argument("--calib-limit", type=_positive_int)
    t.add_argument("--eval", help=argparse.SUPPRESS)      # _precheck reads it; tune evaluates nothing
    t.add_argument("--trials-per-iter", type=_positive_int, default=16, help="candidates measured per batch")


def cmd_tune(a) -> int:
    _precheck(a)
    if a.rpc_tracker or a.rpc_key:  # seconds, before TVM loads: an unreachable tracker fails fast
        from .tuning.tracker import check_tracker, parse_tracker

        if not (a.rpc_tracker and a.rpc_key):
            raise QPluginError("--rpc-tracker HOST:PORT and --rpc-key KEY go together")
        check_tracker(*parse_tracker(a.rpc_tracker), a.rpc_key)
    from .tuning.tuner import tune

    res = tune(a.model, target=a.target, trials=a.trials, calib=a.calib, db=a.db, isa=a.isa,
               rpc_tracker=a.rpc_tracker, rpc_key=a.rpc_key, input_shapes=a.input_shape,
               trials_per_iter=a.trials_per_iter, observer=a.observer, nonlinear=a.nonlinear, int_io=a.int_io,
               wide_inputs=a.wide_inputs, calib_limit=a.calib_limit, input_values=tuple(a.input_value) or None,
               progress=lambda line: print(line, file=sys.stderr, flush=True))
    tuned = sum(1 for t in res.tasks if t.stored)
    print(f"database     {res.db}  ({res.board} / {res.isa})")
    print(f"tasks        {tuned} of {len(res.tasks)} with a verified record; {res.rejected_wrong} wrong candidate(s) "
          "rejected")
    for t in res.tasks:
        print(f"  {t.line(res.trials)}" + (f"  [not tuned: {t.skipped}]" if t.skipped else ""))
    same = f" --wide-inputs {a.wide_inputs}" if a.wide_inputs != "16" else ""  # the graph that was tuned
    use = (f"TVM_QPLUGIN_SCHEDULES={res.db.parent.parent} tvm-qplugin compile {a.model} --target {res.board}{same} ..."
           if res.c_package   # the C package's kernels (tune_qemu.py): export's kernel choice finds them
           else f"tvm-qplugin compile {a.model} --target {res.board}{same} --tuning-db {res.db} ...")
    print(f"use it       {use}")
    return 0


def _print_tuning(report: dict) -> None:
    t = report.get("tuning") or {}
    if t.get("db"):
        print(f"tuning       {t['tasks_tuned']} kernel(s) tuned, {len(t['default_faster'])} kept their faster default, "
              f"{t['tasks_untuned']} without a record ({t['db_source']} database {t['db']}, {t['trials']} trials, "
              f"{t['rejected_wrong']} wrong rejected)")


def _precheck(a) -> None:
    """The checks that need no TVM: a bad model, data file or input shape errors in well under a second."""
    from .data import check_data_file
    from .errors import CalibrationError
    from .frontend import check_supported, load_specialized, parse_input_shapes, resolve_input_specs
    from .onnx_checks import check_graph

    from .frontend_tflite import check_supported_tflite, input_specs, is_tflite, load_tflite

    if is_tflite(a.model):
        tfl = load_tflite(a.model)
        check_supported_tflite(tfl, a.model)
        specs = input_specs(tfl, a.model, parse_input_shapes(a.input_shape))
    else:
        onnx_model = load_specialized(a.model, a.input_value)
        specs = resolve_input_specs(onnx_model, a.model, parse_input_shapes(a.input_shape))
        check_supported(onnx_model, a.model)
        check_graph(onnx_model, a.model, {s.name: s.shape for s in specs})
    if getattr(a, "layer_bits", None) is not None:  # compile's option; the shared precheck serves tune too
        from .quant.precision import load_layer_bits

        load_layer_bits(a.layer_bits)
    if a.calib is None:
        raise CalibrationError(f"no calibration data for {a.model!r}: pass --calib FILE.npz (one array per input: "
                               f"{', '.join(s.name for s in specs)}) or --calib DIR (images)")
    if a.calib == "distill":
        from .mixed.distill import check_distillable

        check_distillable(a.model)  # a model with folded batch-norms is refused before any work
    else:
        check_data_file(a.calib, specs, "calibration")
    if a.eval is not None:
        check_data_file(a.eval, specs, "evaluation")


def _check_writable(out: Path) -> None:
    from .artifact import check_output_dir

    check_output_dir(out)


COMMANDS = {name: f"cmd_{name}" for name in ("compile", "tune", "verify", "inspect", "targets", "sensitivity")}  # looked up when run


def main(argv: list[str] | None = None) -> int:
    torch_gate.install()  # before any command imports tvm: TVM's own torch import costs ~2.4 s of CPU
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    # Python warnings (numpy's overflow/invalid on user data, ...) are held back: a failed command
    # prints its one error line only; a successful one shows them after the fact (and -v always).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        rc, message, failure = _run(args)
        if failure is not None:
            _release_native_objects(failure)
            del failure
    if rc == 0 or args.verbose:
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if message is not None:
        print(message, file=sys.stderr)
    return rc


def _release_native_objects(failure: list) -> None:
    """Drop a failed command's exception (its traceback holds the frames of the pass that raised)
    with TVM's native log muted: objects freed then log from C++ (a BlockBuilder dropped mid-pass:
    "destroyed with remaining blocks!"), which would break the one-line contract."""
    from .native_log import quiet_native_stderr

    with quiet_native_stderr():
        failure.clear()
        gc.collect(1)  # the young generations hold such cycles; a full collection costs ~0.5 s with TVM loaded


def _run(args) -> tuple[int, str | None, list | None]:
    """Run the command: (exit status, the stderr line to print, [the exception] to release first)."""
    try:
        return globals()[COMMANDS[args.cmd]](args), None, None
    except QPluginError as e:
        return EXIT_USER_ERROR, _error_line(e), [e]
    except KeyboardInterrupt as e:
        return 130, f"{PROG}: interrupted", [e]
    except BrokenPipeError:  # e.g. `tvm-qplugin targets | head -1`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        except OSError:
            pass
        return 0, None, None
    except ImportError as e:  # a broken install (TVM's shared library, onnx, ...): say how to repair it
        if args.verbose:
            traceback.print_exc()
        return EXIT_USER_ERROR, _error_line(f"cannot import {e.name or 'a dependency'} ({type(e).__name__}: {e}); "
                                          "reinstall with `make setup` (or pip install -e .)"), [e]
    except Exception as e:  # noqa: BLE001 - a bug: one line by default, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        return EXIT_INTERNAL_ERROR, (f"{PROG}: internal error: {type(e).__name__}: {last_line(e)} (this "
                                     f"is a bug in {PROG}; rerun with -v for the traceback and please report it)"), [e]


if __name__ == "__main__":
    sys.exit(main())
