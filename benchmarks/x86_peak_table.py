"""The kernel table of issue 9's acceptance ("hot conv/dense kernels >= 50 % of the measured int8
peak"): MobileNetV2 compiled as a user compiles it (``x86-host``, the shipped database), once for
this CPU and once with ``--isa avx2``, and every conv / dense layer's ``report.json`` ->
``layers[]`` figures -- ``latency_us`` (per call, in the whole model, VM instrument), ``gmacs``
and ``fraction_of_peak`` (against tvm_qplugin/peak.py's register-only loop of the dot instruction
the layer's activation width runs on, all threads).

The compile times its kernels over 3 runs; here over ``--runs`` (medians per call: this machine is
shared, and 3 runs move a thin layer's figure by 2x). Prints a markdown table of the layers
that lose the most time against the peak (``latency x (1 - fraction_of_peak)``, the order in which
to attack them) and a JSON summary (share of conv/dense time in kernels at >= 50 % of peak, the
time lost, per ISA).

Run: `.venv/bin/python benchmarks/x86_peak_table.py [--runs 30] [--top 15] [--isa native avx2] [--save F | --load F]`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # qplugin_zoo (the repository's fixtures, not installed)

import tvm_qplugin as tq
from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx
from tvm_qplugin import compiler
from tvm_qplugin.peak import cpu_name

HOT_OPS = ("conv2d", "dense")  # report.json layers[].op


def compiled_layers(isa: str | None, runs: int) -> dict:
    """``report.json`` of MobileNetV2 compiled for ``isa`` (None: this CPU), its kernels timed over ``runs``."""
    timed = compiler.add_kernel_times
    compiler.add_kernel_times = lambda art, imod, **_: timed(art, imod, runs=runs)  # more runs, same code
    try:
        calib, evaluation = imagenet_calib_eval()
        options = {} if isa is None else {"isa": isa}
        return tq.compile(str(mobilenet_v2_onnx()), target="x86-host", calib={"input": calib},
                          eval={"input": evaluation[:8]}, **options).report
    finally:
        compiler.add_kernel_times = timed


def rule(layer: dict) -> str:
    """The schedule rule that took the layer's kernel (``layers[].kernel.why``), e.g. ``Conv2DTensorized``."""
    found = re.search(r"by the (\w+) rule", (layer.get("kernel") or {}).get("why", ""))
    return found.group(1) if found else "-"


def operand_bits(layer: dict) -> int:
    """The width of the operand the kernel reads (peak.operand_bits), as its fraction of peak tells:
    ``gmacs / fraction_of_peak`` is the peak it was measured against -- not kept in the report."""
    return 16 if "vpdpwssd" in (layer.get("kernel") or {}).get("why", "") else layer["a_bits"]


def lost_us(layer: dict) -> float:
    """Time the layer loses against its peak, ``latency x (1 - fraction_of_peak)``: what a kernel
    at peak would save -- the order in which to attack the kernels."""
    return layer["latency_us"] * (1 - (layer["fraction_of_peak"] or 0))


def table(reports: dict, top: int) -> tuple[str, dict]:
    """Markdown rows for the ``top`` conv/dense layers that lose the most time against the peak
    (:func:`lost_us`, the first ISA's) and, per ISA, the share of conv/dense time spent in layers
    at >= 50 % of peak."""
    names = list(reports)
    layers = {isa: [layer for layer in r["layers"] if layer["op"] in HOT_OPS and layer["latency_us"]]
              for isa, r in reports.items()}
    first = sorted(layers[names[0]], key=lambda layer: -lost_us(layer))[:top]
    by_name = {isa: {layer["name"]: layer for layer in ls} for isa, ls in layers.items()}
    head = "| layer (ONNX node) | rule | operand bits | MMAC | " + " | ".join(f"{isa} µs | GMAC/s | of peak | lost µs" for isa in names) + " |"
    rows = [head, "|" + "---|" * (4 + 4 * len(names))]
    for layer in first:
        cells = [layer.get("onnx_node") or layer["name"], rule(layer), str(operand_bits(layer)), f"{layer['macs'] / 1e6:.1f}"]
        for isa in names:
            other = by_name[isa].get(layer["name"])
            cells += ["-"] * 4 if other is None else \
                [f"{other['latency_us']:.1f}", f"{other['gmacs']:.0f}", f"{100 * (other['fraction_of_peak'] or 0):.0f} %",
                 f"{lost_us(other):.1f}"]
        rows.append("| " + " | ".join(cells) + " |")
    summary = {}
    for isa, ls in layers.items():
        total = sum(layer["latency_us"] for layer in ls)
        at_half = sum(layer["latency_us"] for layer in ls if (layer["fraction_of_peak"] or 0) >= 0.5)
        summary[isa] = {"conv_dense_us": round(total, 1), "lost_us": round(sum(map(lost_us, ls)), 1),
                        "share_at_half_peak": round(at_half / max(total, 1e-9), 3),
                        "layers": len(ls), "layers_at_half_peak": int(sum((layer["fraction_of_peak"] or 0) >= 0.5 for layer in ls)),
                        "latency_ms": reports[isa]["latency_ms"], "bit_exact": reports[isa]["bit_exact"]}
    return "\n".join(rows), summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30, help="whole-model runs the kernels are timed over")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--isa", nargs="+", default=["native", "avx2"])
    ap.add_argument("--save", help="write the reports' layers here (JSON), to render again with --load")
    ap.add_argument("--load", help="render a --save file instead of compiling")
    args = ap.parse_args()
    if args.load:
        with open(args.load) as f:
            reports = json.load(f)
    else:
        reports = {isa: compiled_layers(None if isa == "native" else isa, args.runs) for isa in args.isa}
    if args.save:
        with open(args.save, "w") as f:
            json.dump({isa: {"layers": r["layers"], "latency_ms": r["latency_ms"], "bit_exact": r["bit_exact"]}
                       for isa, r in reports.items()}, f, default=lambda v: v.item())  # NumPy scalars
    md, summary = table(reports, args.top)
    print(md)
    load = os.getloadavg()[0]
    print(json.dumps({"cpu": cpu_name(), "threads": os.cpu_count(), "load_average": round(load, 1),
                      "per_isa": summary}, indent=2))


if __name__ == "__main__":
    main()
