"""``tvm-qplugin sensitivity`` and the ``--calib distill`` step of ``compile`` (cli.py calls these)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .distill import DEFAULT_ITERATIONS, DEFAULT_SAMPLES, DISTILL, DISTILL_OBSERVER, check_distillable, distill

log = logging.getLogger(__name__)


def add_sensitivity_parser(sub, positive_int) -> None:
    s = sub.add_parser("sensitivity", help="per-layer sensitivity (Hessian traces, direct KL) and the mixed-precision "
                       "ILP: prints the table, writes sensitivity.json and report.html")
    s.add_argument("model")
    s.add_argument("--calib", required=True, help="FILE.npz (with optional 'labels'), a directory of images, or "
                   "'distill' (ZeroQ: synthesised from the batch-norm statistics)")
    s.add_argument("--eval", help="FILE.npz for the simulated accuracy of the Pareto front (labels, else agreement)")
    s.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    s.add_argument("--probes", type=positive_int, default=256, help="most Hutchinson probes (stops at 10%% spread)")
    s.add_argument("--samples", type=positive_int, default=32, help="calibration samples in the Hessian loss")
    s.add_argument("--method", default="hessian", choices=["hessian", "direct"])
    s.add_argument("--a-bits", default="8", help="activation widths to choose from: 8 | 16 | 8,16")
    s.add_argument("--budget", metavar="size=..,bops=..,latency=..", help="solve the ILP under this budget "
                   "(size=60%% is 60%% of the uniform int8 weights)")
    s.add_argument("--latency-report", action="append", default=[], metavar="W,A=report.json",
                   help="per-layer latency measured by a compile at w_bits,a_bits (repeat per width)")
    s.add_argument("-o", "--output", metavar="OUTDIR", help="write sensitivity.json and report.html here")


def run_sensitivity(a) -> int:
    from ..errors import QPluginError
    from ..report_html import write_report_html
    from .plan import search

    a_bits = _widths(a.a_bits)
    arrays, labels = load_calibration(a.model, a.calib, a.input_shape)
    evaluation, eval_labels = load_calibration(a.model, a.eval, a.input_shape, "evaluation") if a.eval else (None, None)
    reports = {}
    for item in a.latency_report:
        widths, sep, path = item.partition("=")
        try:
            key = tuple(int(v) for v in widths.split(","))
        except ValueError:
            key = ()
        if not sep or len(key) != 2:
            raise QPluginError(f"--latency-report {item!r}: expected W,A=report.json, e.g. 8,8=out8/report.json")
        reports[key] = path
    res = search(a.model, arrays, a.budget, labels, evaluation, eval_labels, a.method, a_bits,
                 latency_reports=reports or None, probes=a.probes, samples=a.samples)
    print(format_table(res))
    if a.output:
        out = Path(a.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sensitivity.json").write_text(json.dumps(res, indent=1))
        print(f"wrote        {out / 'sensitivity.json'}, {write_report_html(out, mixed=res)}")
    return 0


def format_table(res: dict) -> str:
    """The per-layer table (most sensitive first) and the plan."""
    s = res["sensitivity"]
    bits = (res.get("plan") or {}).get("bits") or {}
    lines = [f"{'layer':28s} {'op':5s} {'params':>8s} {'trace':>10s} {'s.e.':>5s} {'omega_w4':>9s} {'omega_w8':>9s} "
             f"{'kl_w4':>9s} {'kl_a8':>9s} bits"]
    for layer in sorted(s["layers"], key=lambda d: -s["omega_w"][d["name"]]["4"]):
        n = layer["name"]
        lines.append(f"{n[:28]:28s} {layer['op']:5s} {layer['params']:8d} {s['trace_w'][n]:10.3g} "
                     f"{s['trace_w_spread'][n]:5.2f} {s['omega_w'][n]['4']:9.3g} {s['omega_w'][n]['8']:9.3g} "
                     f"{s['direct_w'][n]['4']:9.3g} {s['direct_a'][n]['8']:9.3g} "
                     + ("w{}a{}".format(*bits[n]) if n in bits else "-"))
    focused = ", ".join(f"{n} {s['probes_per_layer'][n]}" for n in s.get("focused_layers", []))
    lines.append(f"probes       {s['probes']} HVPs (relative s.e. < 10 % targeted on {', '.join(s['top_layers'])}"
                 + (f"; probed alone: {focused}" if focused else "") + f"); {s['samples']} samples; "
                 f"time {res['timing_s']}")
    u = res["uniform"]
    lines.append("uniform      " + "; ".join(f"{k}: {v['size']:.0f} B" + (f", {v['acc']:.4f}" if "acc" in v else "")
                                           for k, v in u.items()))
    if res.get("plan"):
        p = res["plan"]
        lines.append(f"plan         {p['budget']}: {p['size']:.0f} B, {p['bops']:.4g} BOPs"
                     + (f", {p['acc']:.4f}" if "acc" in p else "") + f" (ILP {p['solve_s']} s)")
    return "\n".join(lines)


def load_calibration(model, calib, input_shapes, what: str = "calibration"):
    """``(arrays, labels)`` from an .npz / image directory, or synthesised (``distill``)."""
    if calib == DISTILL:
        return distilled_calibration(model, input_shapes)[0], None
    from ..data import load_dataset
    from ..frontend import load_specialized, parse_input_shapes, resolve_input_specs

    specs = resolve_input_specs(load_specialized(model), model, parse_input_shapes(input_shapes))
    ds = load_dataset(calib, specs, None, what)
    return ds.arrays, ds.labels


def distilled_calibration(model, input_shapes=(), preprocess=None, samples: int = DEFAULT_SAMPLES,
                          iterations: int = DEFAULT_ITERATIONS) -> tuple[dict, dict]:
    """``--calib distill``: ``(inputs, how they were made)`` (ZeroQ), with the time it took on stderr.
    ``preprocess`` (the user's --scale/--mean/--std), when given, bounds the synthetic inputs to the
    values real images can take; without it they are unbounded and the input's quantization range
    is as wide as the synthesis made it (a warning says so)."""
    from ..frontend import parse_input_shapes

    check_distillable(model)
    shapes = parse_input_shapes(list(input_shapes)) if input_shapes else {}
    box = None
    if preprocess is not None:
        lo, hi = preprocess.value_range()
        box = (lo, hi, preprocess.layout)
    else:
        log.warning("--calib distill without --scale/--mean/--std: the synthetic inputs are unbounded, so the input's "
                    "quantization range may be wider than real images need; give the model's preprocessing")
    d = distill(model, samples=samples, iterations=iterations, input_shape=next(iter(shapes.values()), None),
                input_box=box)
    print(f"distilled    {samples} calibration inputs from the batch-norm statistics in {d.seconds:.1f} s "
          f"({d.cpu_seconds:.1f} CPU-s; statistics loss {d.bn_loss_start:.3g} -> {d.bn_loss_end:.3g})", file=sys.stderr)
    return d.arrays, {"samples": samples, "iterations": iterations, "fine_iterations": d.fine_iterations,
                      "coarse_shape": d.coarse_shape, "bn_loss": [d.bn_loss_start, d.bn_loss_end],
                      "class_weight": d.class_weight, "input_range": d.input_range,
                      "cpu_seconds": round(d.cpu_seconds, 2), "seconds": d.seconds}


def distilled_observer(observer: str | None) -> str:
    """The calibration observer of a ``--calib distill`` compile: the user's, else DISTILL_OBSERVER
    (real-data calibration keeps the compiler's default)."""
    return observer or DISTILL_OBSERVER


def _widths(text: str) -> tuple[int, ...]:
    from ..errors import QPluginError
    from .fake_quant import A_BITS

    try:
        widths = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        widths = ()
    if not widths or any(w not in A_BITS for w in widths):
        raise QPluginError(f"--a-bits {text!r}: choose from {', '.join(map(str, A_BITS))}, comma-separated")
    return widths
