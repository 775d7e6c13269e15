"""Static memory planning of the C package's arena.

Every intermediate tensor of the integer graph becomes a :class:`Buffer` with a size and a live
interval ``[start, end]`` in step numbers (the step that writes it .. the last step that reads it;
inclusive, so a kernel's inputs and its output overlap in time unless the exporter made them one
buffer for an in-place kernel). Two buffers may share bytes iff their intervals are disjoint.

:func:`plan` places the buffers in one arena, greedily: buffers are taken in a priority order and
each one goes to the lowest offset where it overlaps no already placed buffer with an
intersecting interval (the "greedy by size" planner of TFLite Micro / Pisarchyk & Lee 2020).
Several priority orders are tried (size, size x lifetime, start time) and the smallest arena
wins. :func:`liveness_lower_bound` is the classic bound every placement must meet: the maximum
over steps of the total size of the buffers live at that step.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Buffer:
    name: str
    size: int
    start: int
    end: int
    offset: int | None = None
    members: list[str] = field(default_factory=list)   # tensors sharing this buffer (aliases)

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    arena_bytes: int
    lower_bound: int
    alignment: int
    strategy: str

    @property
    def ratio(self) -> float:
        return self.arena_bytes / self.lower_bound if self.lower_bound else 1.0

    def live_at(self, step: int) -> list[Buffer]:
        return [b for b in self.buffers if b.start <= step <= b.end]

    def peak_step(self) -> int:
        """The step with the most live bytes (what a budget error names)."""
        steps = sorted({b.start for b in self.buffers} | {b.end for b in self.buffers})
        if not steps:
            return 0
        return max(steps, key=lambda s: sum(b.size for b in self.live_at(s)))


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def liveness_lower_bound(buffers: list[Buffer]) -> int:
    """max over steps of the sum of the sizes of the buffers live at that step."""
    events: dict[int, int] = {}
    for b in buffers:
        events[b.start] = events.get(b.start, 0) + b.size
        events[b.end + 1] = events.get(b.end + 1, 0) - b.size
    live = best = 0
    for t in sorted(events):
        live += events[t]
        best = max(best, live)
    return best


def _place(buffers: list[Buffer], order: list[Buffer], alignment: int) -> tuple[dict[str, int], int]:
    placed: list[tuple[int, int, Buffer]] = []   # (offset, end offset, buffer)
    offsets: dict[str, int] = {}
    peak = 0
    for b in order:
        size = _align(max(b.size, 1), alignment)
        busy = sorted((o, e) for o, e, other in placed if other.overlaps_in_time(b))
        off = 0
        for o, e in busy:
            if off + size <= o:
                break
            off = max(off, _align(e, alignment))
        offsets[b.name] = off
        placed.append((off, off + size, b))
        peak = max(peak, off + b.size)
    return offsets, _align(peak, alignment) if peak else 0


STRATEGIES = {
    "size": lambda b: (-b.size, b.start, b.name),
    "size_x_lifetime": lambda b: (-b.size * (b.end - b.start + 1), -b.size, b.name),
    "lifetime": lambda b: (-(b.end - b.start), -b.size, b.name),
    "start": lambda b: (b.start, -b.size, b.name),
}


def plan(buffers: list[Buffer], alignment: int = 16) -> MemoryPlan:
    """Assign ``offset`` to every buffer; return the plan with the smallest arena."""
    for b in buffers:
        if b.end < b.start:
            raise ValueError(f"buffer {b.name}: live interval [{b.start}, {b.end}] is empty")
    best = None
    for name, key in STRATEGIES.items():
        offsets, arena = _place(buffers, sorted(buffers, key=key), alignment)
        if best is None or arena < best[1]:
            best = (offsets, arena, name)
    offsets, arena, name = best if best else ({}, 0, "none")
    for b in buffers:
        b.offset = offsets[b.name]
    lb = liveness_lower_bound(buffers)
    _check(buffers)
    return MemoryPlan(buffers, arena, lb, alignment, name)


def _check(buffers: list[Buffer]) -> None:
    """No two buffers live at the same time share a byte (an internal invariant)."""
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.overlaps_in_time(b) and a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                raise AssertionError(f"memory plan overlaps {a.name} and {b.name}")
