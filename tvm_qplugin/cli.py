"""``tvm-qplugin`` command line (DESIGN.md "Contracts"). User mistakes print one line and exit 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import QPluginError

EXIT_USER_ERROR = 2


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(v) for v in s.split(","))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvm-qplugin", description="Float ONNX -> verified integer-only TVM build")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="quantize + integerize + build + verify a model")
    c.add_argument("model")
    c.add_argument("--target", default="x86-host")
    c.add_argument("--calib", help="calibration data: FILE.npz or a directory of images")
    c.add_argument("--eval", help="FILE.npz of inputs (and optional 'labels') for the accuracy figure")
    c.add_argument("--precision", default="int8")
    c.add_argument("--observer", default="mse", help="minmax | percentile | mse (default)")
    c.add_argument("--nonlinear", default="ivit")
    c.add_argument("--attention", default="int8")
    c.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    c.add_argument("--int-io", action="store_true", help="integer inputs/outputs (no entry/exit float ops)")
    c.add_argument("--allow-float", default="", metavar="OP,...", help="accept these float ops (reported)")
    c.add_argument("--calib-limit", type=int, help="use at most N calibration samples")
    img = c.add_argument_group("image directory preprocessing (with --calib DIR)")
    img.add_argument("--resize", type=int, help="resize the short side to N pixels")
    img.add_argument("--crop", type=int, help="center crop N x N")
    img.add_argument("--scale", type=float, default=1 / 255, help="multiply pixels by this (default 1/255)")
    img.add_argument("--mean", type=_floats, default=(0.0, 0.0, 0.0))
    img.add_argument("--std", type=_floats, default=(1.0, 1.0, 1.0))
    img.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])
    img.add_argument("--grayscale", action="store_true")
    c.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    c.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("verify", help="re-run a compiled OUTDIR against the NumPy reference, bit for bit")
    v.add_argument("outdir")
    v.add_argument("--inputs", help="FILE.npz of inputs (default: random inputs in the quantized range)")
    v.add_argument("--count", type=int, default=16)

    i = sub.add_parser("inspect", help="ops, shapes, params; what is supported and why not")
    i.add_argument("model")
    i.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")

    sub.add_parser("targets", help="list the board catalogue")
    return p


def cmd_compile(a) -> int:
    from .compiler import compile as compile_model
    from .data import Preprocess
    from .report import summary

    out = Path(a.output)
    _check_writable(out)
    pre = Preprocess(resize=a.resize, crop=a.crop, scale=a.scale, mean=a.mean, std=a.std, layout=a.layout,
                     grayscale=a.grayscale)
    art = compile_model(a.model, target=a.target, calib=a.calib, eval=a.eval, input_shapes=a.input_shape,
                        preprocess=pre, precision=a.precision, observer=a.observer, nonlinear=a.nonlinear,
                        attention=a.attention, int_io=a.int_io,
                        allow_float=tuple(x for x in a.allow_float.split(",") if x), calib_limit=a.calib_limit,
                        show_progress=not a.no_progress and sys.stderr.isatty())
    art.save(out)
    print(summary(art.report, out))
    return 0 if art.report["bit_exact"] else 1


def cmd_verify(a) -> int:
    from .verify import verify_outdir

    res = verify_outdir(a.outdir, a.inputs, a.count)
    print(json.dumps(res, indent=2))
    return 0 if res["bit_exact"] else 1


def cmd_inspect(a) -> int:
    from .inspect_model import inspect_model

    print(inspect_model(a.model, a.input_shape))
    return 0


def cmd_targets(a) -> int:
    from .targets import boards

    for b in boards().values():
        extra = f" [{', '.join(b.isa_features())}]" if b.detect_host else ""
        print(f"{b.name:18s} {b.family:8s} {b.runner:10s} {b.description}{extra}")
    return 0


def _check_writable(out: Path) -> None:
    from .errors import OutputDirError

    parent = out.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK) or (out.exists() and not out.is_dir()):
        raise OutputDirError(f"output directory {str(out)!r} is not writable (checked {str(probe)!r}); "
                             "choose another path with -o")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return {"compile": cmd_compile, "verify": cmd_verify, "inspect": cmd_inspect,
                "targets": cmd_targets}[args.cmd](args)
    except QPluginError as e:
        print(f"tvm-qplugin: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("tvm-qplugin: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
