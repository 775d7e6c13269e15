"""``report.json``: the one module that builds it (DESIGN.md "Contracts"), and its human summary.

The compiler hands over what it measured; this module decides the shape: :func:`build` at the end
of a compile, :func:`record_c_package` for targets that export a C package, :func:`record_code_size`
when the artifact is saved. Nothing else writes report keys.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from ._version import __version__


def build(imported, board, opts, imod, iv, weights: int, checks: dict, accuracy: dict, latency: dict, tensors,
          timing_s: dict, isa: str | None = None) -> dict:
    """The report of a finished host compile. ``iv``: the integer-only findings; ``checks``:
    ``bit_exact``, ``bit_exact_inputs``, ``bit_exact_kernels``; ``tensors``: per-tensor errors;
    ``isa``: the int8 ISA level the kernels were built for (``--isa``, else the target's own)."""
    import tvm
    import tvm_ffi

    return {
        "model": str(imported.path),
        "target": board.name,
        "isa_features": board.isa_features(),
        "isa": isa,
        "input_bits": opts.input_bits,
        "precision": opts.precision,
        "nonlinear": opts.nonlinear,
        "gelu": opts.scheme.gelu,
        "softmax_bits": opts.scheme.softmax_bits,
        "attention": opts.attention,
        "observer": opts.observer,
        "budget": dict(opts.budget.items()),
        **iv.to_report(),  # integer_only, float_ops, allowed_float_ops
        "division_ops": iv.division_ops,
        "bit_exact": bool(checks["bit_exact"]),
        "bit_exact_inputs": int(checks["bit_exact_inputs"]),
        "bit_exact_kernels": checks["bit_exact_kernels"],
        "accuracy": accuracy,
        "size_bytes": {"weights": weights, "code": None},
        "layers": [{"name": layer.name, "op": layer.op, "w_bits": layer.w_bits, "a_bits": layer.a_bits,
                    "sensitivity": None, "latency_us": None, "macs": layer.macs, "gmacs": None,
                    "fraction_of_peak": None, "primitive": layer.primitive} for layer in imod.layers],
        "latency_ms": latency,
        "tuning": {"trials": 0, "tasks_tuned": 0, "tasks_untuned": iv.kernels, "db": None},
        "inputs": [{"name": n, "shape": list(s), **(q.to_json() if q is not None else {"raw": True})}
                   for n, s, q in imod.inputs],
        "outputs": [{"name": n, "shape": list(s), **q.to_json()} for n, s, q in imod.outputs],
        "tensors": [e.to_json() for e in tensors],
        "timing_s": {k: round(v, 2) for k, v in timing_s.items()},
        "toolchain": {"tvm": tvm.__version__, "tvm_ffi": getattr(tvm_ffi, "__version__", "unknown"),
                      "cc": _cc_version(), "tvm_qplugin": __version__},
    }


def record_onnx_nodes(r: dict, names: dict[str, str]) -> None:
    """``layers[].onnx_node``: the ONNX node (the ``layer_bits`` key) behind each conv / dense layer."""
    for layer in r["layers"]:
        layer["onnx_node"] = names.get(layer["name"])


def record_sensitivity(r: dict, sens) -> None:
    """``layers[].sensitivity`` of a ``--precision mixed`` compile: what the ILP chose from, per layer
    (``sens``: mixed.sensitivity.Sensitivity, keyed by ONNX node; needs ``record_onnx_nodes`` first).
    HAWQ's Hessian trace per weight (Tr/n) with its estimator's relative standard error, Omega and the
    direct output KL per weight width -- both measures, since ``auto`` picks between their plans."""
    for layer in r["layers"]:
        node = layer.get("onnx_node")
        if node not in sens.trace_w:
            continue
        layer["sensitivity"] = {"hessian_trace": sens.trace_w[node], "trace_spread": sens.trace_w_spread.get(node),
                                "omega": sens.omega_w.get(node), "kl": sens.direct_w.get(node)}


def record_c_package(r: dict, res: dict, board) -> None:
    """Memory, emulated bit-exactness and instruction counts of the exported C package (``res``:
    what ``export.export_mcu`` returns). The board runs emulated, so there is no latency."""
    r["memory"] = res["memory"]
    r["mcu"] = {"board": board.name, "verified_on": res.get("board", board.verified_by), "bit_exact": res["bit_exact"],
                "bit_exact_inputs": res["bit_exact_inputs"],
                "instructions_per_inference": res.get("instructions_per_inference"),
                "instructions_per_mac": res.get("instructions_per_mac")}
    r["bit_exact"] = bool(r["bit_exact"] and res["bit_exact"])
    for layer in r["layers"]:  # the package's kernels are the hand-written C of export/kernels_c.py
        layer["kernel"] = {"source": "handwritten-c", "why": f"C package for {board.name}: export/kernels_c.py"}
    convs = [layer for layer in r["layers"] if layer["op"] in ("conv2d", "dense")]
    for layer, cost in zip(convs, res.get("layers") or []):
        layer["instructions"] = cost.get("instructions")
        layer["instructions_per_mac"] = cost.get("instructions_per_mac")
        if cost.get("patched"):  # run patch by patch (export/patch_plan.py): summed over its patches
            layer["patched"] = cost["patched"]
        if cost.get("kernel_choice"):  # measured choice (export/kernel_choice.py: aarch64 TensorIR vs hand-written)
            layer["kernel"] = cost["kernel_choice"]
    r["latency_ms"] = None  # qemu counts instructions, not time


def record_cuda(r: dict, built, board, layer_kernels: list, device: dict | None) -> None:
    """``cuda``: the CUDA build of the integer graph (compile_cuda.py) -- arch, kernels, which got
    dp4a, the checks that ran without a GPU, and, where a GPU ran it, device bit-exactness and
    latency (``latency_ms`` becomes the GPU's; without a GPU it is None and ``cuda.why`` says so).
    ``layer_kernels``: the kernel each layer calls, in layer order."""
    from .schedules.cuda_int16 import RULE_NAME

    kernels = sorted({name.split("_kernel")[0] for name in built.kernel_ptx})
    r["cuda"] = {"board": board.name, "arch": built.arch, "kernels": len(kernels),
                 "mma_kernels": sorted(built.mma_kernels), "dp4a_kernels": sorted(built.dp4a_kernels),
                 "int16_gemm_kernels": sorted(built.int16_gemm_kernels), "ptx_bytes": len(built.ptx),
                 "checks": ["integer-only (TIR, CUDA kernels)", "TVM GPU verifier", f"nvcc -ptx {built.arch}"],
                 "device": None, "bit_exact": None, "bit_exact_inputs": 0,
                 "why": "no CUDA GPU on the build machine: the CUDA build was checked, not run"}
    for layer, kernel in zip(r["layers"], layer_kernels):
        if kernel in built.mma_kernels:
            source, why = "cuda-mma", "schedules/cuda_mma.py (mma.sync m16n8k32 s8)"
        elif kernel in built.int16_gemm_kernels:
            source, why = RULE_NAME, "schedules/cuda_int16.py (register tiles)"
        elif kernel in built.dp4a_kernels:
            source, why = "cuda-dp4a", "schedules/cuda_int8.py (__dp4a)"
        else:
            source, why = "cuda-default", "schedules/cuda_int8.py declined; dlight fallback"
        layer["kernel"] = {"source": source, "why": f"{built.arch}: {why}"}
    if device is None:
        r["latency_ms"] = None
        return
    r["cuda"].update(device=device["device"], bit_exact=device["bit_exact"],
                     bit_exact_inputs=device["bit_exact_inputs"], why=device["first_difference"])
    r["latency_ms"] = device["latency_ms"]
    r["bit_exact"] = bool(r["bit_exact"] and device["bit_exact"])


def record_kernel_times(r: dict, layer_us: list, kernels: list, layer_peaks: list | None = None) -> None:
    """``layers[].latency_us`` (per call, in layer order; None where unmeasured), ``gmacs`` (its
    MACs over that time) and ``fraction_of_peak`` (against ``layer_peaks``: the measured GMAC/s
    of the dot instruction the layer's activation width runs on, peak.py; None where unknown),
    and ``kernels`` (time per integer op kind), from the VM instrument (profile.py)."""
    peaks = layer_peaks or [None] * len(r["layers"])
    for layer, t, peak in zip(r["layers"], layer_us, peaks):
        layer["latency_us"] = t = None if t is None else round(t, 1)  # the figures below use what is printed
        gmacs = layer["macs"] / t / 1e3 if t and layer.get("macs") else None
        layer["gmacs"] = None if gmacs is None else round(gmacs, 2)
        layer["fraction_of_peak"] = None if gmacs is None or not peak else round(gmacs / peak, 4)
    r["kernels"] = kernels


def record_wide_inputs(r: dict, layers: list, plan, policy: str, read_bits: dict) -> None:
    """``layers[].input_bits`` (the width the layer's kernel reads, from its operand's dtype:
    ``read_bits``, peak.operand_bits) and ``layers[].width`` (why: the policy's reason for a layer
    whose input is int16, else None), and ``wide_inputs``: the policy, its measurement
    (quant/wide_inputs.py) and per int16 tensor consumer the accuracy effect of 8 bits and the
    kernel time at the width compiled (``latency_us``; the other width's time is another compile's)."""
    by_layer = {c.var_name: c for c in plan.consumers} if plan is not None else {}
    tensors = []
    for layer, info in zip(r["layers"], layers):
        c = by_layer.get(info.name)
        layer["input_bits"] = read_bits.get(info.var)
        layer["width"] = None if c is None else c.reason
        if c is not None:
            tensors.append({**c.to_json(), "bits": layer["input_bits"], "latency_us": layer.get("latency_us")})
    r["wide_inputs"] = {"policy": policy, **(plan.to_json() if plan is not None else {}), "tensors": tensors,
                        "narrowed": sum(t["bits"] != 16 for t in tensors)}


def record_tuning(r: dict, section: dict, kernels: list[dict]) -> None:
    """``tuning`` and ``layers[].kernel`` (which schedule each layer's kernel got, and why), from
    tuning/apply.py; ``kernels`` is empty for C-package targets (their kernels are C)."""
    r["tuning"] = section
    for layer, kernel in zip(r["layers"], kernels):
        layer["kernel"] = kernel


def record_distilled_calibration(r: dict, info: dict) -> None:
    """``calibration``: the inputs were synthesised (``--calib distill``, mixed/distill.py), not read;
    ``timing_s.distill``: how long that took."""
    r["calibration"] = {"source": "distill", **{k: v for k, v in info.items() if k != "seconds"}}
    r.setdefault("timing_s", {})["distill"] = round(info["seconds"], 2)


def record_code_size(r: dict, nbytes: int) -> None:
    """``size_bytes.code``: the saved library's size (known once the artifact is written)."""
    r.setdefault("size_bytes", {})["code"] = int(nbytes)


def _cc_version() -> str:
    try:
        return subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


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
    cuda = r.get("cuda")
    if cuda:
        ran = ("bit-exact " + ("yes" if cuda["bit_exact"] else "NO") + f" on {cuda['device']}"
               if cuda["device"] else "not run (" + cuda["why"] + ")")
        mma = f"{len(cuda['mma_kernels'])} on mma, " if cuda.get("mma_kernels") else ""  # sm_80+ only
        lines.append(f"CUDA         {cuda['arch']}: {cuda['kernels']} kernels, {mma}{len(cuda['dp4a_kernels'])} on dp4a, "
                     f"{len(cuda.get('int16_gemm_kernels', []))} on the int16 GEMM, "
                     f"GPU verifier passed; {ran}")
    if r.get("latency_ms"):
        lines.append(f"latency      {r['latency_ms']['median']:.3f} ms median of {r['latency_ms']['runs']} runs")
    if r.get("kernels"):
        lines.append("time by op   " + ", ".join(f"{k['op']} {100 * k['share']:.0f} %" for k in r["kernels"][:4]))
    return "\n".join(lines)
