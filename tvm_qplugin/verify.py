"""``tvm-qplugin verify OUTDIR``: re-run a compiled artifact against the NumPy reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import load
from .data import InputSpec, load_dataset
from .errors import CalibrationError, ModelLoadError, last_line


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
    from .bitexact import first_difference
    from .reference import ReferenceInterpreter  # imports TVM: once the directory loaded

    ref = ReferenceInterpreter(art.integer_mod)
    fname = art.integer_function
    mismatches = []
    for i, q in enumerate(batches):
        got, want = _run_library(art, q, outdir), ref.run(fname, *q)
        for k, (g, w) in enumerate(zip(got, want)):
            diff = first_difference(g, w)
            if diff is not None:
                mismatches.append({"input": i, "output": k, "difference": diff})
    from .kernel_check import check_kernels

    kernels = check_kernels(art)  # each kernel alone on dtype extremes and exact rounding ties
    res = {"outdir": str(outdir), "bit_exact": not mismatches and not kernels["mismatched"], "inputs": len(batches),
           "mismatches": mismatches[:10], "bit_exact_kernels": kernels, **recheck_integer_only(art)}
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


def recheck_integer_only(art) -> dict:
    """``integer_only`` / ``float_ops`` computed afresh from the artifact's integer module (Relax
    level + the TIR visitor on its kernels as scheduled for the host target), not copied from
    report.json; ``report_disagrees`` holds report.json's claim when it differs (a tampered or
    stale report)."""
    import logging

    from .passes.verify import check_integer_only
    from .targets import get_board

    target = get_board("x86-host").target()  # the integer graph is built and checked on the host
    rep = check_integer_only(art.integer_mod, target, func_name=art.integer_function)
    fields = rep.to_report()
    res = {"integer_only": fields["integer_only"], "float_ops": fields["float_ops"],
           "float_findings": (rep.float_ops + rep.allowed)[:20],
           "integer_only_checked": f"relax + TIR of {rep.tir_kernels} kernels scheduled for {target.kind.name} "
                                   f"{target.attrs.get('mcpu', '')}".strip()}
    claimed = {k: art.report.get(k) for k in ("integer_only", "float_ops")}
    if claimed != {k: res[k] for k in claimed}:
        res["report_disagrees"] = claimed
        logging.getLogger(__name__).warning("report.json claims %s but the integer module checks as %s", claimed,
                                            {k: res[k] for k in claimed})
    return res


def _run_library(art, q: list[np.ndarray], outdir: str) -> list[np.ndarray]:
    """The artifact's model.so on inputs its io.json and integer module agree on (``load`` checked
    that): a library that refuses them is not this artifact's (a manifest rewritten over another
    build's model.so), a user error naming the file, not an internal one."""
    try:
        return art.run_integer(q)
    except Exception as e:  # noqa: BLE001 - TVM's runtime raises assorted error types
        raise ModelLoadError(f"{str(Path(outdir) / 'model.so')!r} does not run the module of its io.json / "
                             f"integer_module.json ({type(e).__name__}: {last_line(e)}); re-create the "
                             "artifact with `tvm-qplugin compile MODEL -o DIR`") from None
