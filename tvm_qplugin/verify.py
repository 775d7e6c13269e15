"""``tvm-qplugin verify OUTDIR``: re-run a compiled artifact against the NumPy reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import load
from .data import InputSpec, load_dataset
from .errors import CalibrationError


def verify_outdir(outdir: str, inputs: str | None = None, count: int = 16) -> dict:
    if count < 1:
        raise CalibrationError(f"--count {count}: verify needs at least 1 input; pass --count N with N >= 1")
    art = load(outdir)
    specs = [InputSpec(s.name, s.shape, s.host_dtype) for s in art.inputs]
    if inputs:
        ds = load_dataset(inputs, specs, what="verification")
        batches = [art.quantize_inputs(b) for b in ds.batches(count)]
    else:  # random integers over the full quantized range: exercises saturation paths too
        rng = np.random.default_rng(0)
        batches = [[rng.integers(s.qtype.qmin, s.qtype.qmax + 1, size=s.shape).astype(s.qtype.dtype)
                    if s.qtype is not None else rng.integers(0, 2, size=s.shape).astype(s.host_dtype)
                    for s in art.inputs] for _ in range(count)]
    from .reference import ReferenceInterpreter  # imports TVM: only once the directory loaded

    ref = ReferenceInterpreter(art.integer_mod)
    fname = "main" if art.int_io else "core"
    mismatches = []
    for i, q in enumerate(batches):
        got, want = art.run_integer(q), ref.run(fname, *q)
        for k, (g, w) in enumerate(zip(got, want)):
            if g.dtype != w.dtype or not np.array_equal(g, w):
                mismatches.append({"input": i, "output": k, "elements_differ": int((g != w).sum())})
    from .kernel_check import check_kernels

    kernels = check_kernels(art)  # each kernel alone on dtype extremes and exact rounding ties
    res = {"outdir": str(outdir), "bit_exact": not mismatches and not kernels["mismatched"], "inputs": len(batches),
           "mismatches": mismatches[:10], "bit_exact_kernels": kernels,
           "integer_only": art.report.get("integer_only"), "float_ops": art.report.get("float_ops")}
    pkg = Path(outdir) / "c"
    if pkg.is_dir():  # MCU artifact: the C package on the host (ASan/UBSan) and under qemu on the board
        from .export import verify_c_package

        board = art.report.get("target")
        for where in ("host", board):
            r = verify_c_package(pkg, where, batches[: min(len(batches), 4)], mod=art.integer_mod, count=False)
            res[f"c_package_{'host' if where == 'host' else 'board'}"] = {"board": r["board"], "bit_exact": r["bit_exact"],
                                                                        "inputs": r["inputs"]}
            res["bit_exact"] = res["bit_exact"] and r["bit_exact"]
    return res
