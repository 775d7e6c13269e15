"""Which kernel each layer of a Cortex-M board's C package calls: measured under qemu-system-arm.

The candidates of every layer a TIR kernel can take (:func:`.kernel_choice.tir_candidates`: dense
and pointwise; :func:`.kernel_choice.dw_candidates`: depthwise 3x3) are the hand-written kernel,
``smlad`` (DSP cores) and ``mve`` (Helium) -- :mod:`.tir_kernels_cortexm`'s GEMMs (a 3x3 stem conv
on <= 3 channels too, each pixel's window packed: :mod:`.tir_kernels_cortexm_conv`),
:mod:`.tir_kernels_cortexm_dw`'s depthwise kernels: one kind each, measured in the same runs -- and
a tuning record's schedule where the board's database has one (``tune --target <board>``,
tuning/tune_qemu.py: GEMMs only). Unlike the aarch64 choice (:mod:`.kernel_choice`: each layer alone, one
package per candidate), the whole model is built once per candidate kind -- every eligible layer
on that kernel -- and run once, profiled, on the board's emulated twin: the profile marks give each
layer's instructions, so a model costs 1 + (number of kinds) firmware builds and runs, not one
per layer and candidate. A kind whose run is not bit-exact against the NumPy reference (or faults,
hangs, does not build) is dropped for every layer, and said so; each layer then takes the fewest
instructions. Counts are QEMU's (exact, repeatable instructions, not cycles).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import QPluginError, UnsupportedOpError
from .tir_kernels_cortexm import CORTEXM_SCHEDULES, cortexm_applies

HANDWRITTEN = "handwritten-c"


def _model_sample(info: dict, seed: int = 0) -> list[np.ndarray]:
    """One input per model input: random over its [qmin, qmax] (or its dtype's range)."""
    rng = np.random.default_rng(seed)
    out = []
    for sp in info["inputs"]:
        dt = np.dtype(sp["dtype"] if sp["dtype"] != "bool" else "uint8")
        lo, hi = sp.get("qmin"), sp.get("qmax")
        lo = int(np.iinfo(dt).min) if lo is None else int(lo)
        hi = int(np.iinfo(dt).max) if hi is None else int(hi)
        if sp["dtype"] == "bool":
            lo, hi = 0, 1
        out.append(rng.integers(lo, hi + 1, size=sp["elements"], dtype=np.int64).astype(dt).reshape(sp["shape"]))
    return out


def _run_variant(mod, board, kernels: dict, sample, want, work: Path) -> dict:
    """Build the package with ``kernels``, run it profiled: ``{"ok", "why", "steps": {index: n}}``."""
    from .c_package import write_c_package
    from .harness_mcu import build_mcu, count_instructions
    from .runner import package_info, read_outputs

    pkg = work / "pkg"
    try:
        write_c_package(mod, pkg, board, kernels=kernels)
        build = build_mcu(pkg, board, work / "build", profile=True)
        cost = count_instructions(build, sample, work / "count")
    except Exception as e:   # a TIR kind that does not build, link, fit or run is dropped (the caller says why)
        if not kernels:       # the hand-written package: its error is the compile's own
            raise
        return {"ok": False, "why": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    got = read_outputs(work / "count" / "qout.bin", package_info(pkg), 1)[0]
    exact = len(got) == len(want) and all(np.array_equal(g, np.asarray(w)) for g, w in zip(got, want))
    steps = {st["index"]: st["instructions"] for st in cost["steps"]}
    return {"ok": exact, "why": "" if exact else "whole-model run not bit-exact", "steps": steps}


def choose_kernels_cortexm(imod, board, workdir=None, ram_budget: int | None = None) -> tuple[dict, dict]:
    """``(kernels, choices)`` as :func:`.kernel_choice.choose_kernels` returns them, for a Cortex-M
    board with a TVM target (module doc); both empty where no layer can take a TIR kernel, or where
    the model runs patch by patch (its RAM limit: the board's SRAM or ``ram_budget``)."""
    from ..tuning.tune_qemu import tuned_kernel
    from . import _reference_outputs
    from .c_graph import build_graph, integer_module_of
    from .kernel_choice import dw_candidates, tir_candidates
    from .kernels_c import macs
    from .tir_kernels import step_spec
    from .tir_kernels_cortexm_conv import im2col_spec, is_im2col_conv
    from .tir_kernels_cortexm_dw import cortexm_dw_spec

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="qmodel-mchoice-") as tmp:
            return choose_kernels_cortexm(imod, board, Path(tmp), ram_budget)
    work = Path(workdir)
    mod = integer_module_of(imod)
    g = build_graph(mod)
    gemms = {s.index for s in tir_candidates(g)}   # dense / pointwise; then depthwise 3x3, 3x3 stems
    steps = []
    for s in sorted(tir_candidates(g) + dw_candidates(g) + [s for s in g.steps if is_im2col_conv(s)],
                    key=lambda s: s.index):
        try:
            step_spec(s) if s.index in gemms else im2col_spec(s) if is_im2col_conv(s) else cortexm_dw_spec(s, "smlad")
        except UnsupportedOpError:   # an input or output dtype no TIR kernel takes
            continue
        steps.append(s)
    kinds = [sc for sc in CORTEXM_SCHEDULES if cortexm_applies(sc, board)]
    emu = board.emulator()
    if not steps or not kinds or not emu.qemu_machine or emu.cpu != board.cpu:   # nothing to measure it on
        return {}, {}
    variants = {HANDWRITTEN: {}, **{f"tensorir-{sc}": {s.index: sc for s in steps} for sc in kinds}}
    tuned = {s.index: t for s in steps if s.index in gemms and (t := tuned_kernel(step_spec(s), board)) is not None}
    if tuned:
        variants["tensorir-tuned"] = tuned
    from .c_package import write_c_package

    # the hand-written package first: its inputs give the sample; a model over its RAM limit (the board's
    # SRAM or ram_budget), which runs patch by patch or is refused (patch_emit.maybe_patch), keeps the
    # hand-written kernels: TIR kernels are chosen per step of the layer-wise graph
    probe = write_c_package(mod, work / "probe", board, ram_budget=ram_budget)
    if probe["patching"].get("tried") or probe["patching"].get("applied"):
        return {}, {}
    sample = _model_sample(probe)
    want = _reference_outputs(mod, [sample])[0]
    want = list(want) if isinstance(want, (list, tuple)) else [want]
    runs = {name: _run_variant(mod, board, kernels, sample, want, work / name) for name, kernels in variants.items()}
    if not runs[HANDWRITTEN]["ok"]:
        raise QPluginError(f"kernel choice on {board.name}: the hand-written package is not bit-exact under qemu "
                           f"({runs[HANDWRITTEN]['why']})")
    kernels, choices = {}, {}
    for s in steps:
        counts = {n: (r["steps"][s.index] if r["ok"] else None)
                  for n, r in runs.items() if n == HANDWRITTEN or s.index in variants[n]}
        ok = {n: c for n, c in counts.items() if c is not None}
        best = min(ok, key=lambda n: (ok[n], n != HANDWRITTEN))
        n_mac = max(macs(s), 1)
        why = (f"measured in the whole model under qemu-system-arm -M {board.emulator().qemu_machine}: "
               + ", ".join(f"{n} {c} instructions ({c / n_mac:.3f}/MAC)" if c is not None
                           else f"{n} dropped ({runs[n]['why']})" for n, c in counts.items())
               + f"; {best} is the fastest bit-exact candidate")
        choices[s.index] = {"source": best, "why": why, "instructions": counts,
                            "dropped": sum(1 for c in counts.values() if c is None)}
        if best != HANDWRITTEN:
            kernels[s.index] = variants[best][s.index]
    return kernels, choices
