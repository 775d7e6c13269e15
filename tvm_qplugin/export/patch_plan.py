"""Patch-based execution of the C package's first stages (MCUNetV2, Lin et al. 2021; QuantMCU).

Layer by layer, the arena can never go below the liveness bound of the graph: the early,
high-resolution layers (MobileNetV2-96: 48x48x96 = 221 KB for one tensor) set the peak. Patch by
patch, the first ``N`` steps run once per spatial tile of stage N's output: each patch computes
through all N layers only the rows/columns its tile needs (the receptive field, so neighbouring
patches recompute a halo), and stores its tile into the full stage-N tensor. Only the tiles of one
patch are live at a time, so the stage's peak falls to about the full stage-N tensor plus one
patch's tiles; the rest of the graph runs layer-wise as before.

This module rewrites the :class:`~.c_graph.Graph` (nothing else changes): every patched layer
becomes one ordinary step per patch whose input and output are tile-sized values, so the planner
(:mod:`.arena`), the kernel calls (:mod:`.kernels_c`) and the harness work unchanged.

1. Region arithmetic, backwards from a tile of the cut tensor: a conv/pool step whose output rows
   are ``[a, b)`` reads input rows ``[a*s - pt, (b-1)*s - pt + (k-1)*d + 1)`` clipped to ``[0, H)``;
   elementwise steps read what they write. A value read by several steps (a residual branch) gets
   the bounding box of their reads.
2. The tile step's padding is the layer's padding only where its input region was clipped by the
   image border: ``pt' = max(0, pt - a*s)``; inside the image the halo rows are real data. The C
   kernels treat rows outside ``[0, h)`` of their input as the zero point (0: activations are
   symmetric or ReLU-unsigned), which is then exactly the layer-wise padding, so every patch is
   bit-exact with the layer-wise graph.
3. A consumer whose read is smaller than the producer's tile (a residual add next to a 3x3 branch)
   gets a crop (``strided_slice`` copy); the graph input is cropped the same way; the last tile is
   copied into the full cut tensor by a ``patch_store`` step (:mod:`.patch_emit`).

Note: only steps whose C kernel is position-independent are patched (conv2d_requant, max_pool2d,
requantize, add_requant of same-shape operands, lut). avg_pool2d_requant is not: its per-position
divisors depend on where the window sits in the whole image.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from .c_graph import Graph, Ref, Step, Val
from .kernels_c import macs, scratch_bytes

WINDOW_OPS = ("conv2d_requant", "max_pool2d")
ELEMENTWISE_OPS = ("requantize", "add_requant", "lut")
MAX_GRID = 8   # patches per side tried (MCUNetV2 uses 2..4; more only adds halo)


@dataclass(frozen=True)
class Region:
    """Rows [y0, y1) and columns [x0, x1) of an NCHW tensor's spatial plane."""

    y0: int
    y1: int
    x0: int
    x1: int

    def union(self, other: Region | None) -> Region:
        if other is None:
            return self
        return Region(min(self.y0, other.y0), max(self.y1, other.y1), min(self.x0, other.x0), max(self.x1, other.x1))

    @property
    def hw(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _kernel_hw(s: Step) -> tuple[int, int]:
    if s.op == "conv2d_requant":
        return int(s.args[1].shape[2]), int(s.args[1].shape[3])
    return tuple(int(k) for k in s.params["pool_size"])


def _spatial_args(s: Step) -> list[Ref]:
    """The activation operands of a patchable step (constants excluded)."""
    return list(s.args[:2]) if s.op == "add_requant" else [s.args[0]]


def input_region(s: Step, out: Region, arg: Ref) -> Region:
    """The region of ``arg`` that step ``s`` reads to write ``out`` (clipped to the image)."""
    if s.op not in WINDOW_OPS:
        return out
    (kh, kw), (sh, sw), (dh, dw) = _kernel_hw(s), s.params["strides"], s.params["dilation"]
    pt, pl = s.params["padding"][0], s.params["padding"][1]
    h, w = arg.shape[2], arg.shape[3]
    return Region(max(0, out.y0 * sh - pt), min(h, (out.y1 - 1) * sh - pt + (kh - 1) * dh + 1),
                  max(0, out.x0 * sw - pl), min(w, (out.x1 - 1) * sw - pl + (kw - 1) * dw + 1))


def _patchable(s: Step) -> bool:
    if s.op not in WINDOW_OPS + ELEMENTWISE_OPS or len(s.out.shape) != 4 or s.out.shape[0] != 1:
        return False
    refs = _spatial_args(s) + [s.out]
    if any(len(r.shape) != 4 or tuple(r.shape) != tuple(r.val.shape) for r in refs):
        return False      # views (reshapes) of a value: not a plain NCHW plane
    if s.op in ELEMENTWISE_OPS:
        return all(tuple(a.shape) == tuple(s.out.shape) for a in _spatial_args(s))
    return s.op != "conv2d_requant" or len(s.args[1].shape) == 4


def cut_candidates(g: Graph) -> list[int]:
    """Prefix lengths ``n`` such that steps ``[0, n)`` are patchable, read only graph inputs,
    constants and their own outputs, and hand exactly one tensor (step n-1's output, a plane
    larger than 1x1) to the rest of the graph."""
    out_of = {id(s.out.val): s.index for s in g.steps}
    graph_outs = {id(r.val) for r in g.outputs}
    cands = []
    for n, s in enumerate(g.steps, start=1):
        if not _patchable(s):
            break
        if any(a.val.kind != "input" and out_of.get(id(a.val), n) >= n for a in _spatial_args(s)):
            break     # reads a constant plane or a value from outside the prefix
        inside = {id(t.out.val) for t in g.steps[:n]}
        crossing = {id(a.val) for t in g.steps[n:] for a in t.args if id(a.val) in inside}
        crossing |= inside & graph_outs
        if crossing == {id(s.out.val)} and id(s.out.val) not in graph_outs and s.out.shape[2] * s.out.shape[3] > 1:
            cands.append(n)
    return cands


def grid_bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, near-equal ranges covering ``[0, size)``."""
    cuts = [size * i // parts for i in range(parts + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(parts)]


def needed_regions(steps: list[Step], tile: Region) -> dict[int, Region]:
    """id(value) -> the region of it one patch needs, for the cut tensor's ``tile`` (backwards)."""
    need: dict[int, Region] = {id(steps[-1].out.val): tile}
    for s in reversed(steps):
        out = need.get(id(s.out.val))
        if out is None:
            continue
        for a in _spatial_args(s):
            need[id(a.val)] = input_region(s, out, a).union(need.get(id(a.val)))
    return need


@dataclass
class Patching:
    """The chosen patch schedule and its figures (report.json -> memory)."""

    layers: int                    # N: steps patched
    grid: tuple[int, int]          # patches along rows, columns
    cut: str                       # the stage-N tensor the patches write
    halo: int                      # input pixels one patch reads beyond its share, worst side
    macs: int                      # MACs of the patched graph
    extra_macs: int                # recomputed halo MACs
    layer_names: list[str]
    arena_bytes: int = 0

    def summary(self, base_macs: int) -> dict:
        return {"layers": self.layers, "grid": list(self.grid), "count": self.grid[0] * self.grid[1],
                "cut_tensor": self.cut, "halo_px": self.halo, "patched_layers": self.layer_names,
                "extra_macs": self.extra_macs,
                "extra_mac_fraction": round(self.extra_macs / base_macs, 4) if base_macs else 0.0}


def _crop(x: Ref, have: Region, want: Region, name: str) -> Step:
    n, c = x.shape[0], x.shape[1]
    shape = (n, c, *want.hw)
    out = Val(name=name, shape=shape, dtype=x.dtype, kind="arena")
    params = {"begin": [0, 0, want.y0 - have.y0, want.x0 - have.x0], "stride": [1, 1, 1, 1], "out_shape": list(shape)}
    return Step(-1, name, "strided_slice", "", params, [x], Ref(out, shape, x.dtype))


def _tile_params(s: Step, inp: Region, out: Region, arg: Ref) -> dict:
    """The step's params with the padding it has inside this patch (border sides only)."""
    if s.op not in WINDOW_OPS:
        return dict(s.params)
    (kh, kw), (sh, sw), (dh, dw) = _kernel_hw(s), s.params["strides"], s.params["dilation"]
    pt, pl = s.params["padding"][0], s.params["padding"][1]
    top, left = inp.y0 - (out.y0 * sh - pt), inp.x0 - (out.x0 * sw - pl)
    bottom = (out.y1 - 1) * sh - pt + (kh - 1) * dh + 1 - inp.y1
    right = (out.x1 - 1) * sw - pl + (kw - 1) * dw + 1 - inp.x1
    assert min(top, left) >= 0, (s.name, inp, out)
    return {**s.params, "padding": [top, left, max(0, bottom), max(0, right)]}


def _patch_steps(steps: list[Step], tile: Region, p: int) -> list[Step]:
    """The steps of one patch: crops, the tile-sized layers, and the store into the cut tensor."""
    need = needed_regions(steps, tile)
    tiles: dict[int, tuple[Ref, Region]] = {}
    out_steps: list[Step] = []
    for s in steps:
        out_r = need.get(id(s.out.val))
        if out_r is None:
            continue
        args = list(s.args)
        for i, a in enumerate(_spatial_args(s)):
            want = input_region(s, out_r, a)
            have_ref, have = tiles.get(id(a.val), (a, Region(0, a.shape[2], 0, a.shape[3])))
            if have != want:
                crop = _crop(have_ref, have, want, f"{a.val.name}__p{p}c{len(out_steps)}")
                out_steps.append(crop)
                have_ref = crop.out
            args[i] = have_ref
        shape = (s.out.shape[0], s.out.shape[1], *out_r.hw)
        out = Val(name=f"{s.out.val.name}__p{p}", shape=shape, dtype=s.out.dtype, kind="arena")
        params = _tile_params(s, input_region(s, out_r, s.args[0]), out_r, s.args[0])
        t = Step(-1, f"{s.name}__p{p}", s.op, s.kernel, {**params, "_patch": (p, s.name)}, args,
                 Ref(out, shape, s.out.dtype))
        out_steps.append(t)
        tiles[id(s.out.val)] = (t.out, out_r)
    last = steps[-1].out
    cut_ref = Ref(last.val, tuple(last.shape), last.dtype)
    store = Step(-1, f"{steps[-1].name}__p{p}store", "patch_store", "",
                 {"y0": tile.y0, "x0": tile.x0, "_patch": (p, steps[-1].name)}, [tiles[id(last.val)][0]], cut_ref)
    out_steps.append(store)
    return out_steps


def _halo(steps: list[Step], tiles: list[Region], in_shape) -> int:
    """Worst input pixels a patch reads beyond its non-overlapping share of the stage input."""
    cut = steps[-1].out.shape
    sy, sx = in_shape[2] / cut[2], in_shape[3] / cut[3]
    worst = 0
    first = _spatial_args(steps[0])[0]
    for t in tiles:
        r = needed_regions(steps, t)[id(first.val)]
        worst = max(worst, round(t.y0 * sy) - r.y0, r.y1 - round(t.y1 * sy),
                    round(t.x0 * sx) - r.x0, r.x1 - round(t.x1 * sx))
    return int(worst)


def patch_graph(g: Graph, n: int, grid: tuple[int, int]) -> tuple[Graph, Patching]:
    """A copy of ``g`` whose first ``n`` steps run patch by patch on a ``grid`` of stage-N tiles."""
    if n not in cut_candidates(g):
        raise ValueError(f"patch_graph: the first {n} steps cannot run patch by patch "
                         f"(possible cuts: {cut_candidates(g)})")
    memo = {id(v.const): v.const for v in g.vals if v.const is not None}
    g = copy.deepcopy(g, memo)
    head, tail = g.steps[:n], g.steps[n:]
    cut = head[-1].out
    rows, cols = grid_bounds(cut.shape[2], grid[0]), grid_bounds(cut.shape[3], grid[1])
    tiles = [Region(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]
    new_steps: list[Step] = []
    for p, t in enumerate(tiles):
        new_steps += _patch_steps(head, t, p)
    dropped = {id(s.out.val) for s in head[:-1]} | {id(s.scratch) for s in head if s.scratch is not None}
    vals = [v for v in g.vals if id(v) not in dropped]
    for s in new_steps:
        s.macs = macs(s) if s.op != "patch_store" else 0
        nb = scratch_bytes(s) if s.op in WINDOW_OPS else 0
        s.scratch = (Val(name=f"{s.name}__scratch", shape=(nb,), dtype="uint8", kind="scratch") if nb else None)
        vals += [v for v in (s.out.val, s.scratch) if v is not None and v is not cut.val]
    steps = new_steps + tail
    for i, s in enumerate(steps):
        s.index = i
    _liveness(vals, steps)
    base = sum(macs(s) for s in head)
    total = sum(s.macs for s in new_steps)
    halo = _halo(head, tiles, _spatial_args(head[0])[0].shape)
    info = Patching(n, grid, cut.val.name, halo, total, total - base, [s.name for s in head])
    return Graph(g.inputs, g.outputs, steps, vals, g.func_name), info


def _liveness(vals: list[Val], steps: list[Step]) -> None:
    """def/last step of every value, as :func:`.c_graph.build_graph` sets them (first writer)."""
    for v in vals:
        v.def_step, v.last_step = -1, -1
    for s in steps:
        if s.out.val.def_step < 0:
            s.out.val.def_step = s.index
        if s.scratch is not None:
            s.scratch.def_step = s.scratch.last_step = s.index
        for a in s.args:
            a.val.last_step = max(a.val.last_step, s.index)
    for v in vals:
        if v.kind == "arena" and v.last_step < v.def_step:
            v.last_step = v.def_step


def patched_macs(g: Graph, n: int, grid: tuple[int, int]) -> int:
    """MACs of the first ``n`` steps run on ``grid`` (cheap: conv MACs scale with output area)."""
    head = g.steps[:n]
    cut = head[-1].out.shape
    total = 0
    for y0, y1 in grid_bounds(cut[2], grid[0]):
        for x0, x1 in grid_bounds(cut[3], grid[1]):
            need = needed_regions(head, Region(y0, y1, x0, x1))
            for s in head:
                r = need.get(id(s.out.val))
                if r is not None:
                    h, w = r.hw
                    total += macs(s) * h * w // (s.out.shape[2] * s.out.shape[3])
    return total


def candidates(g: Graph, max_extra: float) -> list[tuple[int, tuple[int, int], int]]:
    """``(n, grid, extra MACs)`` of every prefix cut and square-ish grid within ``max_extra``
    recomputed MACs (as a fraction of the whole graph's)."""
    total = sum(macs(s) for s in g.steps) or 1
    out = []
    for n in cut_candidates(g):
        head = g.steps[:n]
        base = sum(macs(s) for s in head)
        cut = head[-1].out.shape
        for k in range(2, MAX_GRID + 1):
            grid = (min(k, cut[2]), min(k, cut[3]))
            if grid[0] * grid[1] < 2 or (out and out[-1][:2] == (n, grid)):
                continue
            extra = patched_macs(g, n, grid) - base
            if extra <= max_extra * total:
                out.append((n, grid, extra))
    return out
