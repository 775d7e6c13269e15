"""Human-readable summary of report.json (the CLI's stdout)."""
from __future__ import annotations

from pathlib import Path


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def summary(r: dict, outdir: Path | str) -> str:
    acc = r.get("accuracy", {})
    lines = [
        f"model        {r['model']}  ->  {outdir}",
        f"target       {r['target']}  precision {r['precision']}  observer {r.get('observer')}",
        f"integer-only {'yes' if r['integer_only'] else 'NO'}  (float ops {r['float_ops']}, divisions {r['division_ops']})",
        f"bit-exact    {'yes' if r['bit_exact'] else 'NO'} vs NumPy reference on {r['bit_exact_inputs']} inputs",
    ]
    if acc.get("metric") == "top1_agreement":
        lines.append(f"accuracy     top-1 agreement with fp32 {_pct(acc['value'])} on {acc['inputs']} inputs; "
                     f"confident {_pct(acc.get('top1_agreement_confident'))}; in fp32 top-5 {_pct(acc['top5_contains'])}")
        if "top1_int" in acc:
            lines.append(f"             top-1 vs labels: fp32 {_pct(acc['top1_fp32'])}, int8 {_pct(acc['top1_int'])}")
    elif acc:
        lines.append(f"accuracy     mean cosine vs fp32 {acc['value']:.5f} (min {acc['min']:.5f}) on {acc['inputs']} inputs")
    measured = [t for t in r.get("tensors", []) if t.get("sqnr_db") is not None]
    if measured:
        worst = sorted(measured, key=lambda t: t["sqnr_db"])[:3]
        lines.append("least exact  " + ", ".join(f"{t['name']} ({t['op']}, {t['dtype']}) {t['sqnr_db']:.1f} dB"
                                                 for t in worst) + "  [SQNR vs fp32; all in report.json \"tensors\"]")
    lines.append(f"size         weights {r['size_bytes']['weights'] / 1024:.1f} KiB")
    mem, mcu = r.get("memory"), r.get("mcu")
    if mem:
        extra = ", ".join(f"{k} {mem[f'{k}_bytes']} B" for k in ("flash", "ram", "stack") if mem.get(f"{k}_bytes"))
        lines.append(f"memory       arena {mem['peak_arena_bytes']} B (liveness bound {mem['liveness_lower_bound_bytes']} B)"
                     + (f", {extra}" if extra else ""))
    if mcu:
        ipm, ipi = mcu.get("instructions_per_mac"), mcu.get("instructions_per_inference")
        lines.append(f"C package    bit-exact {'yes' if mcu['bit_exact'] else 'NO'} under emulation ({mcu['verified_on']}) "
                     f"on {mcu['bit_exact_inputs']} inputs"
                     + (f"; {ipi} instructions/inference" if ipi else "") + (f", {ipm:.2f} per MAC" if ipm else ""))
    if r.get("latency_ms"):
        lines.append(f"latency      {r['latency_ms']['median']:.3f} ms median of {r['latency_ms']['runs']} runs")
    if r.get("kernels"):
        lines.append("time by op   " + ", ".join(f"{k['op']} {100 * k['share']:.0f} %" for k in r["kernels"][:4]))
    return "\n".join(lines)
