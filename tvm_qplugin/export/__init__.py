"""Export of the integer module for deployment (DESIGN.md "export").

* :func:`write_c_package` -- the MCU C package (model.h/.c, qkernels, CMake, Make, Zephyr module)
  with a liveness-planned static arena (:mod:`.memory_plan`);
* :func:`verify_c_package` -- build it for the host (ASan/UBSan) or a Cortex-M board (under
  qemu-system-arm, the real board's memory enforced at link time), compare with reference
  outputs bit for bit, and report memory and instruction counts (:mod:`.harness`);
* :func:`check_budget` -- does a package fit a board / a ``--budget`` (:mod:`.budget`);
* :func:`export_mcu` -- all of it for a compiled model: what ``compile --target <mcu board>``
  writes to ``OUT/c/`` and what report.json's ``memory`` and per-layer ``instructions`` hold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .budget import check_budget
from .patch_emit import fold_patch_layers, patch_memory
from .c_graph import integer_module_of
from .c_package import write_c_package
from ..bitexact import first_difference
from .memory_plan import Buffer, MemoryPlan, liveness_lower_bound, plan

__all__ = ["write_c_package", "verify_c_package", "check_budget", "export_mcu", "plan", "liveness_lower_bound",
           "Buffer", "MemoryPlan"]


def _reference_outputs(mod, samples):
    from ..reference import ReferenceInterpreter
    from .c_graph import integer_function

    name, _ = integer_function(mod)
    ref = ReferenceInterpreter(mod)
    return [ref.run(name, *s) for s in samples]


def verify_c_package(pkg, board, samples, expected=None, mod=None, workdir=None, count: bool = True) -> dict:
    """Run ``samples`` (lists of integer input arrays) through the package on ``board`` ("host" or
    a Cortex-M board) and compare with ``expected`` (or the NumPy reference of ``mod``).

    Returns ``{"bit_exact", "inputs", "board", "memory" (MCU), "cost" (MCU, count=True)}``.
    """
    from ..targets import resolve_board
    from .harness import run_package

    board = board if board == "host" else resolve_board(board)
    samples = [[np.asarray(a) for a in (s if isinstance(s, (list, tuple)) else [s])] for s in samples]
    if expected is None:
        if mod is None:
            raise ValueError("verify_c_package needs expected outputs or the integer module")
        expected = _reference_outputs(mod, samples)
    res = run_package(pkg, board, samples, workdir=workdir, count=count)
    mismatches = []
    for i, (got, want) in enumerate(zip(res["outputs"], expected)):
        for j, (g, w) in enumerate(zip(got, want)):
            diff = first_difference(g, w)
            if diff is not None:
                mismatches.append(f"sample {i} output {j}: {diff}")
    out = {"bit_exact": not mismatches, "inputs": len(samples), "board": res["board"], "mismatches": mismatches[:10]}
    for k in ("memory", "cost", "emulator"):
        if k in res:
            out[k] = res[k]
    return out


def export_mcu(model, outdir, board, samples=None, expected=None, verify: bool = True, count: bool = True,
               ram_budget: int | None = None, size_budget: int | None = None, workdir=None) -> dict:
    """Write ``outdir`` (the C package) for a Cortex-M ``board``, check the budgets, and (with
    ``samples``) verify it bit-exact under qemu on the board's emulated twin.

    ``model``: IntegerModule / Artifact / integer IRModule. ``samples``: integer inputs (lists of
    arrays, one per model input). Returns ``{"package": info, "memory": {...}, "layers": [...],
    "bit_exact", "bit_exact_inputs", "instructions_per_inference", "instructions_per_mac"}`` in the
    shapes of report.json (DESIGN.md).
    """
    from ..targets import resolve_board

    board = resolve_board(board)
    from .kernel_choice import choose_kernels

    kernels, choices = choose_kernels(model, board, ram_budget=ram_budget)   # TensorIR vs hand-written, measured
    info = write_c_package(model, outdir, board, kernels=kernels, ram_budget=ram_budget)
    for layer in info["layers"]:
        ch = choices.get(layer["index"])
        if ch:  # the chosen candidate's own count: the layer alone under qemu-aarch64, same shapes and weights
            n = ch["instructions"][ch["source"]]
            layer.update(kernel_choice=ch, instructions=n, instructions_per_mac=round(n / max(layer["macs"], 1), 4))
    check_budget(info, board, ram_budget=ram_budget, size_budget=size_budget)
    memory = {"peak_arena_bytes": info["arena_bytes"], "liveness_lower_bound_bytes": info["liveness_lower_bound_bytes"],
              "weights_bytes": info["weights_bytes"], **patch_memory(info)}
    res = {"package": info, "memory": memory, "layers": info["layers"], "board": board.name}
    if verify and samples:
        v = verify_c_package(outdir, board, samples, expected=expected, mod=integer_module_of(model),
                             workdir=Path(workdir) if workdir else None, count=count)
        res["bit_exact"], res["bit_exact_inputs"], res["mismatches"] = v["bit_exact"], v["inputs"], v["mismatches"]
        if "memory" in v:
            m = v["memory"]
            memory.update(flash_bytes=m["flash_bytes"] + m.get("ext_flash_bytes", 0),
                          ext_flash_bytes=m.get("ext_flash_bytes", 0), ram_bytes=m["ram_bytes"],
                          static_ram_bytes=m["static_ram_bytes"], stack_bytes=m["stack_bytes"],
                          ram_limit_bytes=m.get("ram_limit"), flash_limit_bytes=m.get("flash_limit"),
                          ext_flash_limit_bytes=m.get("ext_flash_limit"))
        if "cost" in v:
            c = v["cost"]
            res["instructions_per_inference"] = c["instructions_per_inference"]
            res["instructions_per_mac"] = c["instructions_per_mac"]
            res["layers"] = [dict(layer, instructions=s["instructions"], instructions_per_mac=s.get("instructions_per_mac"))
                             for layer, s in zip(info["layers"], c["layers"])]
            res["kernel_functions"] = c["functions"]
    res["layers"] = fold_patch_layers(res["layers"])   # one entry per model layer (patched ones marked)
    return res
