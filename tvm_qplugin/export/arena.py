"""Where the C package's values live: aliasing choices, then the arena placement (:mod:`.memory_plan`).

Graph inputs are read in place from the caller's pointers and graph outputs are written straight
into the caller's output buffers. Everything else lives in ``static uint8_t qm_arena[N]`` at
offsets from the planner. A channel concat of a batch-1 NCHW tensor is made of contiguous
slices, so its producers write straight into their slice (no copy); elementwise requantize/add
run in place over an operand that dies there. The arena is compared with the liveness lower
bound of the resulting buffers.
"""
from __future__ import annotations

from .c_graph import ALIGN, Graph, Ref, Val, prod
from .memory_plan import Buffer, MemoryPlan, liveness_lower_bound, plan


def _members(vals: list[Val], root: Val) -> list[tuple[Val, int]]:
    out = []
    for v in vals:
        r, off = v.root()
        if r is root:
            out.append((v, off))
    return out


def _assign_outputs(g: Graph) -> list[tuple[int, Ref]]:
    """Graph outputs produced by a step live in the caller's buffer; others are copied at the end."""
    copies = []
    for i, r in enumerate(g.outputs):
        v = r.val
        if v.kind == "arena" and v.out_index < 0 and v.parent is None and v.nbytes == r.nbytes:
            v.out_index = i
        else:
            copies.append((i, r))
    return copies


def _merge_concats(g: Graph) -> None:
    for s in g.steps:
        if s.op != "relax.concat":
            continue
        axis = s.params["axis"] % len(s.out.shape)
        if prod(s.out.shape[:axis]) != 1:
            continue
        y = s.out.val
        off = 0
        seen: set[int] = set()
        for a in s.args:
            x = a.val
            if (x.kind == "arena" and x.out_index < 0 and x.parent is None and id(x) not in seen and x is not y
                    and x.nbytes == a.nbytes and y.root()[0] is not x):
                x.parent, x.poff = y, off
                seen.add(id(x))
            off += a.nbytes


def _group_bytes_last(g: Graph, x: Val, step: int) -> int:
    """Last step at which any value sharing bytes with ``x`` (other than x) is read."""
    root, xo = x.root()
    last = -1
    for v, vo in _members(g.vals, root):
        if v is x:
            continue
        if vo < xo + x.nbytes and xo < vo + v.nbytes:
            last = max(last, v.last_step)
    return last


def _merge_inplace(g: Graph) -> None:
    for s in g.steps:
        if s.op not in ("requantize", "add_requant"):
            continue
        y = s.out.val
        if y.kind != "arena" or y.out_index >= 0:
            continue
        cands = [s.args[0]] if s.op == "requantize" else [a for a in s.args if tuple(a.shape) == tuple(s.out.shape)]
        for a in cands:
            x = a.val
            others = [b.val for b in s.args if b is not a]
            if (x.kind != "arena" or x.out_index >= 0 or any(o is x for o in others) or x.last_step != s.index
                    or x.itemsize != y.itemsize or x.nbytes != y.nbytes or x.root()[0] is y.root()[0]):
                continue
            if _group_bytes_last(g, x, s.index) > s.index:
                continue
            if y.parent is None and not any(v.parent is y for v in g.vals):
                y.parent, y.poff = x, 0
                s.params = {**s.params, "_inplace": True}
                break
            if x.parent is None:
                x.parent, x.poff = y, 0
                s.params = {**s.params, "_inplace": True}
                break


def _reset(g: Graph) -> None:
    for v in g.vals:
        v.parent, v.poff, v.out_index = None, 0, -1
    for s in g.steps:
        s.params.pop("_inplace", None)


def _buffers(g: Graph) -> list[Buffer]:
    groups: dict[int, Buffer] = {}
    for v in g.vals:
        if v.kind not in ("arena", "scratch"):
            continue
        r, off = v.root()
        if r.kind not in ("arena", "scratch") or r.out_index >= 0:
            continue
        b = groups.get(id(r))
        if b is None:
            b = groups[id(r)] = Buffer(r.name, r.nbytes, v.def_step, v.last_step)
        b.start, b.end = min(b.start, v.def_step), max(b.end, v.last_step)
        b.size = max(b.size, off + v.nbytes)
        b.members.append(v.name)
    return list(groups.values())


def plan_memory(g: Graph, concat_alias: bool | None = None, inplace: bool = True) -> tuple[MemoryPlan, list]:
    """Choose aliasing (concat slices: tried with and without) and place the arena buffers."""

    def attempt(ca: bool):
        _reset(g)
        copies = _assign_outputs(g)
        if ca:
            _merge_concats(g)
        if inplace:
            _merge_inplace(g)
        return plan(_buffers(g), ALIGN), copies

    choices = [True, False] if concat_alias is None else [concat_alias]
    sizes = {ca: attempt(ca)[0].arena_bytes for ca in choices}
    best = min(choices, key=lambda ca: (sizes[ca], not ca))
    return attempt(best)


def tensor_liveness_bytes(g: Graph) -> int:
    """Liveness bound without any aliasing: every intermediate tensor separately."""
    bufs = [Buffer(v.name, v.nbytes, v.def_step, v.last_step) for v in g.vals
            if v.kind in ("arena", "scratch") and v.out_index < 0]
    return liveness_lower_bound(bufs)

