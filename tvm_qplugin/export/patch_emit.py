"""Choosing and emitting patch-based execution (:mod:`.patch_plan` rewrites the graph).

:func:`choose_patching` runs when the layer-wise arena does not fit the RAM limit (the board's
SRAM or ``--budget ram=``, less the stack allowance of :mod:`.budget`):

1. Every prefix cut N and grid g x g (g <= ``MAX_GRID``) is costed in MACs first, cheaply (conv
   MACs scale with the output area a patch computes).
2. The candidates are ranked by the liveness of their tensors (no planner), and the best few
   are planned for real (:func:`.arena.plan_memory`).
3. The smallest arena among candidates that recompute at most ``MAX_EXTRA_MAC_FRACTION`` of the
   model's MACs wins when it fits; otherwise the cheapest (in MACs) candidate that fits; if none
   fits, the smallest arena found is reported (the budget error names it).

Note: the planner, not the liveness bound, decides: aliasing (in-place requantize, concat slices)
moves the arena by kilobytes, enough to reorder candidates of similar size.

:class:`PatchKernelCalls` emits the rewritten graph: the patches of one layer call the same kernel
with the same weights, so constant arrays are shared by content (one copy in flash), and the
``patch_store`` step copies a tile into the full stage-N tensor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .arena import plan_memory, tensor_liveness_bytes
from .budget import MODEL_STACK_ALLOWANCE, ram_limit
from .c_graph import Graph, Step, row_major_strides
from .kernels_c import KernelCalls
from .patch_plan import Patching, candidates, patch_graph

log = logging.getLogger(__name__)

MAX_EXTRA_MAC_FRACTION = 0.15    # recompute we accept to minimise the arena (MCUNetV2 reports ~10 %)
SEARCH_EXTRA_MAC_FRACTION = 1.0  # beyond 15 % only when nothing cheaper fits; never beyond 2x the MACs
PLANNED_PER_ROUND = 6            # candidates planned for real per round (each plan is ~0.1-1 s)


@dataclass
class PatchChoice:
    """The outcome: ``graph``/``patching`` when a patched plan fits, else the smallest arena seen."""

    graph: Graph | None
    patching: Patching | None
    smallest_arena_bytes: int | None
    smallest: Patching | None


def _planned(g: Graph, n: int, grid) -> tuple[Graph, Patching]:
    g2, info = patch_graph(g, n, grid)
    info.arena_bytes = plan_memory(g2)[0].arena_bytes
    return g2, info


def choose_patching(g: Graph, arena_limit: int) -> PatchChoice:
    """The patch schedule for ``g`` (already planned layer-wise) under ``arena_limit`` bytes."""
    total = sum(s.macs for s in g.steps) or 1
    cands = candidates(g, SEARCH_EXTRA_MAC_FRACTION)
    scored = []
    for n, grid, extra in cands:
        g2, _ = patch_graph(g, n, grid)
        scored.append((tensor_liveness_bytes(g2), extra, n, grid))
    cheap = sorted(c for c in scored if c[1] <= MAX_EXTRA_MAC_FRACTION * total)[:PLANNED_PER_ROUND]
    best_any: tuple[int, int, Graph, Patching] | None = None
    best_cheap = None
    for est, extra, n, grid in cheap:
        g2, info = _planned(g, n, grid)
        key = (info.arena_bytes, extra)
        if best_cheap is None or key < best_cheap[:2]:
            best_cheap = (*key, g2, info)
    if best_cheap is not None and best_cheap[0] <= arena_limit:
        return PatchChoice(best_cheap[2], best_cheap[3], best_cheap[0], best_cheap[3])
    best_any = best_cheap
    # nothing cheap fits: the fewest extra MACs among those that do (smallest estimates first)
    rest = sorted((c for c in scored if c[1] > MAX_EXTRA_MAC_FRACTION * total), key=lambda c: (c[0], c[1]))
    fitting = []
    for est, extra, n, grid in rest[:2 * PLANNED_PER_ROUND]:
        g2, info = _planned(g, n, grid)
        if best_any is None or (info.arena_bytes, extra) < best_any[:2]:
            best_any = (info.arena_bytes, extra, g2, info)
        if info.arena_bytes <= arena_limit:
            fitting.append((extra, info.arena_bytes, g2, info))
    if fitting:
        _, arena, g2, info = min(fitting, key=lambda f: f[:2])
        log.info("patching %s: %d extra MACs (over %.0f %%) to fit %d bytes", info.grid, info.extra_macs,
                 100 * MAX_EXTRA_MAC_FRACTION, arena_limit)
        return PatchChoice(g2, info, arena, info)
    if best_any is None:
        return PatchChoice(None, None, None, None)
    return PatchChoice(None, None, best_any[0], best_any[3])


def maybe_patch(g: Graph, mplan, copies, board, ram_budget, kernels, forced):
    """``(graph, plan, copies, patching)``: ``g`` patched when its layer-wise ``mplan`` is over the RAM
    limit (or ``forced`` = ``(N, grid)``), else unchanged; ``patching`` is qmodel.json's record.
    Not with aarch64 TensorIR ``kernels``: their choice is per step of the layer-wise graph."""
    limit = ram_limit(board, ram_budget)
    patching = {"applied": False, "layerwise_arena_bytes": mplan.arena_bytes,
                "layerwise_liveness_lower_bound_bytes": mplan.lower_bound}
    base_macs = sum(s.macs for s in g.steps)
    if forced is not None:
        g2, info = patch_graph(g, forced[0], tuple(forced[1]))
        choice = PatchChoice(g2, info, None, info)
    elif limit is None or mplan.arena_bytes + MODEL_STACK_ALLOWANCE <= limit[0] or kernels:
        return g, mplan, copies, patching
    else:
        choice = choose_patching(g, limit[0] - MODEL_STACK_ALLOWANCE)
    patching.update(tried=True, smallest_arena_bytes=choice.smallest_arena_bytes)
    if choice.smallest is not None:
        patching.update(choice.smallest.summary(base_macs))
    if choice.graph is None:
        return g, mplan, copies, patching
    g = choice.graph
    mplan, copies = plan_memory(g)
    patching.update(applied=True, arena_bytes=mplan.arena_bytes, smallest_arena_bytes=mplan.arena_bytes)
    return g, mplan, copies, patching


class PatchKernelCalls(KernelCalls):
    """:class:`~.kernels_c.KernelCalls` for a patched graph: constants shared by content, and the
    ``patch_store`` copy of a tile into the stage-N tensor."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._const_names: dict[tuple, str] = {}
        self._mve_names: dict[str, str] = {}

    def const_array(self, a, ctype: str, prefix: str) -> str:
        key = (ctype, prefix, a.dtype.str, a.shape, a.tobytes())
        name = self._const_names.get(key)
        if name is None:
            name = self._const_names[key] = super().const_array(a, ctype, prefix)
        return name

    def emit_step(self, s: Step) -> None:
        before = len(self.mve_consts)
        super().emit_step(s)
        if len(self.mve_consts) == before + 1:     # MVE weight-sum corrections: one copy per layer too
            text = self.mve_consts[-1]
            name = text.split("[", 1)[0].rsplit(" ", 1)[-1]
            body = text.replace(name, "", 1)
            first = self._mve_names.setdefault(body, name)
            if first != name:
                self.mve_consts.pop()
                self.mve_bytes -= 4 * int(text.split("[", 1)[1].split("]", 1)[0])
                self.params = [ln.replace(f"QM_WCORR({name})", f"QM_WCORR({first})") for ln in self.params]

    def op_patch_store(self, s: Step, p: dict) -> None:
        (tile,) = s.args
        full = s.out
        fs = row_major_strides(full.shape)
        esize = full.val.itemsize
        off = (p["y0"] * fs[2] + p["x0"] * fs[3]) * esize
        s.c_func = "qk_copy_nd"
        self._copy(s, "", tile.shape, row_major_strides(tile.shape), fs, self.ptr(tile, True),
                   f"(void *)((uint8_t *){self.ptr(full)} + {off})", esize)


def patch_memory(info: dict) -> dict:
    """report.json -> memory fields of patch-based execution, from the package description."""
    p = info.get("patching") or {}
    out = {"layerwise_arena_bytes": p.get("layerwise_arena_bytes", info["arena_bytes"]),
           "layerwise_liveness_lower_bound_bytes": p.get("layerwise_liveness_lower_bound_bytes",
                                                         info["liveness_lower_bound_bytes"]),
           "patches": None, "patch_extra_macs": 0}
    if p.get("applied"):
        out["patches"] = {k: p[k] for k in ("layers", "grid", "count", "cut_tensor", "halo_px", "patched_layers",
                                            "extra_mac_fraction")}
        out["patch_extra_macs"] = p["extra_macs"]
    return out


def fold_patch_layers(layers: list[dict]) -> list[dict]:
    """One entry per model layer: a patched layer's per-patch steps summed (MACs, instructions),
    marked ``patched: {patches, macs_layerwise}``, so ``layers[]`` lines up with the model's."""
    out: list[dict] = []
    by_name: dict[str, dict] = {}
    for layer in layers:
        if "patch" not in layer:
            out.append(layer)
            continue
        name = layer["patch"][1]
        f = by_name.get(name)
        if f is None:
            f = by_name[name] = {k: v for k, v in layer.items() if k != "patch"}
            f.update(name=name, patched={"patches": 0}, macs=0)
            if "instructions" in layer:
                f["instructions"] = 0
            out.append(f)
        f["patched"]["patches"] += 1
        f["macs"] += layer["macs"]
        if layer.get("instructions") is not None and f.get("instructions") is not None:
            f["instructions"] += layer["instructions"]
            f["instructions_per_mac"] = round(f["instructions"] / max(f["macs"], 1), 4)
    return out
