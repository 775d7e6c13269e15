"""``report.html``: the figures of a compile (and of a mixed-precision search) in one file that
opens offline.

Figures are drawn with matplotlib (Agg backend: no display) and embedded as base64 PNG data URIs,
with the CSS inline, so the file references nothing outside itself. Sections appear when their
data exists: a plain int8 compile has no Pareto front; a host build has no static memory plan.

Inputs: ``report`` is report.json (DESIGN.md); ``mixed`` is what ``tvm-qplugin sensitivity``
writes (``sensitivity.json``: per-layer sensitivity, the Pareto front, uniform points, the plan).
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

HTML_NAME = "report.html"
_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ccc}"
        "img{max-width:100%}table{border-collapse:collapse;font-size:.85em}"
        "td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}.note{color:#666}")


def write_report_html(outdir: str | Path, report: dict | None = None, mixed: dict | None = None) -> Path:
    """Write ``outdir/report.html`` from ``report`` / ``mixed`` (read from ``outdir`` when None and present)."""
    outdir = Path(outdir)
    if report is None and (outdir / "report.json").is_file():
        report = json.loads((outdir / "report.json").read_text())
    if mixed is None and (outdir / "sensitivity.json").is_file():
        mixed = json.loads((outdir / "sensitivity.json").read_text())
    path = outdir / HTML_NAME
    path.write_text(render(report, mixed))
    return path


def render(report: dict | None, mixed: dict | None) -> str:
    """The whole page as one string."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    title = (report or mixed or {}).get("model", "model")
    parts = [f"<h1>tvm-qplugin report: {html.escape(str(title))}</h1>"]
    if report:
        parts.append(_summary(report))
    if mixed:
        parts += _pareto_sections(mixed)
        parts.append(_section("Per-layer bits and sensitivity", _sensitivity_figure(mixed),
                              _bits_table(mixed)))
    if report:
        parts.append(_section("Per-tensor SQNR along the graph", _sqnr_figure(report)))
        parts.append(_section("Latency per layer", _latency_figure(report)))
        parts.append(_section("Memory", _memory_figure(report)))
    body = "\n".join(p for p in parts if p)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(str(title))}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"<img alt='figure' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _section(title: str, *items: str | None) -> str:
    inner = "".join(i for i in items if i) or "<p class='note'>no data for this section in this build</p>"
    return f"<h2>{html.escape(title)}</h2>{inner}"


def _summary(r: dict) -> str:
    acc = r.get("accuracy") or {}
    lat = r.get("latency_ms") or {}
    rows = [("target", r.get("target")), ("precision", r.get("precision")),
            ("integer-only", r.get("integer_only")), ("bit-exact", r.get("bit_exact")),
            ("accuracy", f"{acc.get('metric')} {acc.get('value')}" if acc else None),
            ("latency median (ms)", lat.get("median")), ("weights (bytes)", (r.get("size_bytes") or {}).get("weights"))]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows if v is not None)
    return f"<table>{cells}</table>"


def _pareto_sections(m: dict) -> list[str]:
    front = m.get("front") or []
    if not front or "acc" not in front[0]:
        return [_section("Accuracy vs size", "<p class='note'>no Pareto front: pass --eval to "
                                             "`tvm-qplugin sensitivity` to measure one</p>")]
    out = [_section("Accuracy vs size (Pareto front)", _pareto_figure(m, "size", "weight bytes"))]
    if all(p.get("latency") is not None for p in front):
        out.append(_section("Accuracy vs latency", _pareto_figure(m, "latency", "latency (ms, measured per layer)")))
    else:
        out.append(_section("Accuracy vs BOPs", _pareto_figure(m, "bops", "BOPs (MACs x w_bits x a_bits)"),
                            "<p class='note'>latency per layer was not measured at every width, so the "
                            "front is drawn against BOPs</p>"))
    return out


def _pareto_figure(m: dict, key: str, label: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    front = sorted(m["front"], key=lambda p: p[key])
    ax.plot([p[key] for p in front], [p["acc"] for p in front], "o-", label="ILP Pareto front")
    for name, style in (("int8", "s"), ("int4", "v")):
        u = (m.get("uniform") or {}).get(name)
        if u and u.get(key) is not None:
            ax.plot([u[key]], [u["acc"]], style, ms=9, label=f"uniform {name}")
    for p in m.get("random") or []:
        ax.plot([p[key]], [p["acc"]], "x", color="grey", alpha=0.6)
    chosen = m.get("plan")
    if chosen and chosen.get(key) is not None and chosen.get("acc") is not None:
        ax.plot([chosen[key]], [chosen["acc"]], "*", ms=16, color="red", label="chosen")
    ax.set_xlabel(label)
    ax.set_ylabel(m.get("metric", "accuracy"))
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _sensitivity_figure(m: dict) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    layers = m["sensitivity"]["layers"]
    names = [layer["name"] for layer in layers]
    s = m["sensitivity"]
    bits = (m.get("plan") or {}).get("bits") or {}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7, 0.18 * len(names)), 6), sharex=True)
    x = np.arange(len(names))
    colors = ["tab:orange" if (bits.get(n) or [8])[0] == 4 else "tab:blue" for n in names]
    ax1.bar(x, [max(s["omega_w"][n]["4"], 1e-30) for n in names], color=colors)
    ax1.set_yscale("log")
    ax1.set_ylabel("Omega at 4 bits\n(orange: chosen int4)")
    trace = np.array([s["trace_w"][n] for n in names])
    spread = np.array([min(s["trace_w_spread"][n], 10) for n in names])
    ax2.errorbar(x, trace, yerr=np.abs(trace) * spread, fmt="o", ms=3, capsize=2)
    ax2.set_ylabel(f"Hessian trace\n({s['probes']} probes, +-1 s.e.)")
    ax2.set_xticks(x, names, rotation=90, fontsize=6)
    return _png(fig)


def _bits_table(m: dict) -> str:
    s = m["sensitivity"]
    bits = (m.get("plan") or {}).get("bits") or {}
    head = "<tr><th>layer</th><th>op</th><th>params</th><th>bits (w, a)</th><th>Tr (rel. s.e.)</th>" \
           "<th>Omega w4</th><th>Omega w8</th><th>KL w4</th><th>KL a8</th></tr>"
    rows = []
    for layer in s["layers"]:
        n = layer["name"]
        rows.append(f"<tr><td>{html.escape(n)}</td><td>{layer['op']}</td><td>{layer['params']}</td>"
                    f"<td>{html.escape(str(tuple(bits[n])) if n in bits else '-')}</td>"
                    f"<td>{s['trace_w'][n]:.3g} ({s['trace_w_spread'][n]:.2f})</td>"
                    f"<td>{s['omega_w'][n]['4']:.3g}</td><td>{s['omega_w'][n]['8']:.3g}</td>"
                    f"<td>{(s['direct_w'].get(n) or {}).get('4', float('nan')):.3g}</td>"
                    f"<td>{(s['direct_a'].get(n) or {}).get('8', float('nan')):.3g}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _sqnr_figure(r: dict) -> str | None:
    import matplotlib.pyplot as plt

    tensors = [t for t in r.get("tensors") or [] if t.get("sqnr_db") is not None]
    if not tensors:
        return None
    fig, ax = plt.subplots(figsize=(max(7, 0.12 * len(tensors)), 3.5))
    ax.plot(range(len(tensors)), [t["sqnr_db"] for t in tensors], ".-")
    ax.set_xlabel("tensor, in graph order")
    ax.set_ylabel("SQNR vs fp32 (dB)")
    ax.grid(alpha=0.3)
    return _png(fig)


def _latency_figure(r: dict) -> str | None:
    import matplotlib.pyplot as plt

    layers = [layer for layer in r.get("layers") or [] if layer.get("latency_us") is not None]
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(max(7, 0.15 * len(layers)), 3.5))
    colors = ["tab:orange" if layer.get("w_bits") == 4 else "tab:blue" for layer in layers]
    ax.bar(range(len(layers)), [layer["latency_us"] for layer in layers], color=colors)
    ax.set_xticks(range(len(layers)), [f"{layer['name']} {layer['op']}" for layer in layers], rotation=90, fontsize=6)
    ax.set_ylabel("latency per call (us, measured)")
    return _png(fig)


def _memory_figure(r: dict) -> str | None:
    import matplotlib.pyplot as plt

    mem = r.get("memory") or {}
    items = {k: v for k, v in mem.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    note = ""
    if not items:  # a host build: the TVM runtime allocates; show what is static
        items = {f"{k} bytes": v for k, v in (r.get("size_bytes") or {}).items() if isinstance(v, (int, float))}
        note = "<p class='note'>host build: no static memory plan (the TVM runtime allocates); static sizes shown</p>"
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(items) + 1))
    ax.barh(list(items), list(items.values()))
    ax.set_xlabel("bytes")
    return _png(fig) + note
