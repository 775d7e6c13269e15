"""Per-kernel inputs for :mod:`tvm_qplugin.kernel_check`: dtype extremes and exact rounding ties.

A kernel is a :class:`KernelSite` (its op, params, constant operands and runtime input types).
:func:`extreme_cases` gives all-qmin, all-qmax, alternating, zero and random inputs;
``TIE_BUILDERS[op]`` gives inputs that make each requant channel of the kernel see an exact,
unsaturated tie where any legal input can (the arithmetic is in tie_solver.py), packing many
channels into one call: conv channels at output positions whose receptive fields do not overlap,
dense channels on separate rows, pooling positions on separate planes. Each builder counts, per
channel, a tie hit, no tie reachable (rounding cannot matter there) or not solved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .ops.conv_narrowed import narrowing_site
from .ops.int4_linear import widened_site
from .quant import qrange
from .tie_solver import dot_range, may_tie, solve_dot, spread_sum, tie_step, tie_targets

MAX_TIE_CALLS = 64  # packed tie calls per kernel: bounds the time on wide layers (later channels go unchecked)


@dataclass
class KernelSite:
    """One kernel as the integer function calls it: constants as arrays, runtime inputs as types."""

    name: str
    op: str
    params: dict
    args: list            # np.ndarray (a Relax constant) or (shape, dtype) (a runtime input)
    out: tuple            # (shape, dtype)

    def runtime(self) -> list[int]:
        return [i for i, a in enumerate(self.args) if not isinstance(a, np.ndarray)]


@dataclass
class TieCount:
    """Requant channels of one kernel: tie hit, none reachable over legal inputs, or not solved."""

    channels: int = 0
    hit: int = 0
    unreachable: int = 0
    unsolved: int = 0


def _range(site: KernelSite, i: int) -> tuple[int, int]:
    """Legal integer range of runtime input ``i`` (its dtype's; matmul's proven row-sum bound)."""
    shape, dtype = site.args[i]
    if dtype == "bool":
        return 0, 1
    lo, hi = qrange(dtype) if dtype != "int64" else qrange("int32")  # int64 operands carry int32 values
    row_sum = site.params.get("a_row_sum") if site.op == "matmul_requant" and i == 0 else None
    if row_sum is not None:
        cap = max(1, int(row_sum) // int(shape[-1]))
        lo, hi = max(lo, -cap), min(hi, cap)
    return lo, hi


def extreme_cases(site: KernelSite, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """all-qmin, all-qmax, alternating, zeros, random -- and min/max crossed between two inputs."""
    idx = site.runtime()
    shapes = [site.args[i] for i in idx]
    ranges = [_range(site, i) for i in idx]

    def fill(kind, shape, dtype, lo, hi):
        if kind == "alt":
            v = np.where(np.arange(math.prod(shape)) % 2 == 0, lo, hi).reshape(shape)
        elif kind == "random":
            v = rng.integers(lo, hi + 1, size=shape)
        else:
            v = np.full(shape, {"min": lo, "max": hi, "zero": 0}[kind])
        return v.astype(dtype)

    cases = [[fill(k, s, d, lo, hi) for (s, d), (lo, hi) in zip(shapes, ranges)]
             for k in ("min", "max", "alt", "zero", "random")]
    if len(idx) == 2:
        cases += [[fill(a, *shapes[0], *ranges[0]), fill(b, *shapes[1], *ranges[1])]
                  for a, b in (("min", "max"), ("max", "min"))]
    return cases


def _per_tensor_ties(site, acc_lo, acc_hi, count: TieCount) -> list[int]:
    p = site.params
    targets = tie_targets(acc_lo, acc_hi, p["multiplier"], p["shift"], p["qmin"], p["qmax"])
    count.channels += 1
    count.hit += bool(targets)
    count.unreachable += not targets
    return targets


def _ties_requantize(site, count):
    (shape, dtype), = [site.args[i] for i in site.runtime()]
    lo, hi = _range(site, site.runtime()[0])
    targets = _per_tensor_ties(site, lo, hi, count)
    return [[np.resize(np.asarray(targets, dtype), shape)]] if targets else []


def _ties_sum(site, count):
    (shape, dtype), = [site.args[i] for i in site.runtime()]
    lo, hi = _range(site, site.runtime()[0])
    axes = sorted(a % len(shape) for a in site.params["axes"])
    n = math.prod(shape[a] for a in axes)
    kept = [a for a in range(len(shape)) if a not in axes]
    cases = []
    for t in _per_tensor_ties(site, n * lo, n * hi, count)[:2]:
        block = np.broadcast_to(spread_sum(t, n, lo, hi).reshape([shape[a] for a in axes]),
                                [shape[a] for a in kept] + [shape[a] for a in axes])
        cases.append([np.transpose(block, np.argsort(kept + axes)).astype(dtype)])
    return cases


def _ties_add(site, count):
    """``a ma + b mb`` an unsaturated tie: for each value of one operand (the constant's values, or
    up to 2**16 values of a second runtime operand), the other solves a linear congruence mod
    ``2**c`` (:func:`_add_ties`); it is the operand whose multiplier has fewer trailing zero bits."""
    p = site.params
    mults, out_shape, runtime = [int(p["ma"]), int(p["mb"])], site.out[0], site.runtime()
    count.channels += 1
    if len(runtime) == 2:
        u = int(_trailing_zeros(mults[1]) < _trailing_zeros(mults[0]))
        vlo, vhi = _range(site, 1 - u)
        xv = np.arange(max(vlo, -(1 << 15)), min(vhi, (1 << 15) - 1) + 1)
        xu, ok = _add_ties(site, mults, u, xv, _range(site, u))
        found = [(xu[i], xv[i]) if u == 0 else (xv[i], xu[i]) for i in np.flatnonzero(ok)[:2]]
        cases = [[np.full(site.args[0][0], a, site.args[0][1]), np.full(site.args[1][0], b, site.args[1][1])]
                 for a, b in found]
        truncated = len(xv) < vhi - vlo + 1
    elif tuple(site.args[runtime[0]][0]) == tuple(out_shape):  # runtime operand + constant operand
        u = runtime[0]
        other = np.broadcast_to(site.args[1 - u], out_shape).astype(np.int64).ravel()
        xu, ok = _add_ties(site, mults, u, other, _range(site, u))
        cases = [[np.where(ok, xu, 0).reshape(out_shape).astype(site.args[u][1])]] if ok.any() else []
        truncated = False
    else:  # a runtime operand broadcast against a constant: not constructed
        cases, truncated = [], True
    count.hit += bool(cases)
    count.unsolved += not cases and truncated
    count.unreachable += not cases and not truncated
    return cases


def _trailing_zeros(m: int) -> int:
    return (m & -m).bit_length() - 1 if m else 64


def _add_ties(site, mults, u, xv: np.ndarray, urange) -> tuple[np.ndarray, np.ndarray]:
    """For each ``xv``, the smallest ``xu >= urange[0]`` with ``xu mults[u] + xv mults[1-u]`` a tie,
    and whether it lies in ``urange`` with an unsaturated output. The congruence is solved in
    wrapping uint64 arithmetic, exact mod ``2**c`` because ``2**c`` divides ``2**64``."""
    c, (ulo, uhi) = int(site.params["shift"]), urange
    if c < 1:
        return np.zeros(len(xv), np.int64), np.zeros(len(xv), bool)
    mu, mv, e = mults[u], mults[1 - u], min(_trailing_zeros(mults[u]), c)
    mod = 1 << (c - e)
    w64 = (1 << 64) - 1
    need = (np.uint64(1 << (c - 1)) - xv.astype(np.int64).astype(np.uint64) * np.uint64(mv & w64)) \
        & np.uint64((1 << c) - 1)
    solvable = (need & np.uint64((1 << e) - 1)) == 0
    inv = pow(mu >> e, -1, mod) if mod > 1 else 0
    r = ((need >> np.uint64(e)) * np.uint64(inv) & np.uint64(mod - 1)).astype(np.int64)
    xu = ulo + (r - ulo) % mod
    ok = solvable & (xu <= uhi)
    qmin, qmax = site.params["qmin"], site.params["qmax"]
    if max(abs(ulo), abs(uhi)) * abs(mu) + int(np.abs(xv).max(initial=0)) * abs(mv) < 1 << 62:
        y = (xu * np.int64(mu) + xv.astype(np.int64) * np.int64(mv) + np.int64(1 << (c - 1))) >> np.int64(c)
        return xu, ok & (qmin < y) & (y <= qmax)
    for i in np.flatnonzero(ok):  # int32 operands: the output check in Python ints
        ok[i] = qmin < (int(xu[i]) * mu + int(xv[i]) * mv + (1 << (c - 1))) >> c <= qmax
    return xu, ok


def _channel_ties(count, lo, hi, w, bias, m, s, qmin, qmax):
    """Input values for one output channel's taps that make its accumulator a tie, or None."""
    d_lo, d_hi = dot_range(w, lo, hi)
    targets = tie_targets(d_lo + bias, d_hi + bias, m, s, qmin, qmax)
    for t in targets:
        x = solve_dot(w, t - bias, lo, hi)
        if x is not None:
            count.hit += 1
            return x
    count.unsolved += bool(targets)
    count.unreachable += not targets  # the prefilter's margin let it through
    return None


def _candidates(site, count, lo, hi) -> np.ndarray:
    """Output channels of a conv/dense that may see a visible tie over the full window (fewer
    taps only narrow the accumulator range); the others are counted as unreachable here."""
    _, w, bias, mult, shift = site.args
    w = w.reshape(w.shape[0], -1).astype(np.int64)
    acc_lo = np.minimum(w * lo, w * hi).sum(axis=1) + bias
    acc_hi = np.maximum(w * lo, w * hi).sum(axis=1) + bias
    cand = np.flatnonzero(may_tie(acc_lo, acc_hi, mult, shift, site.params["qmin"], site.params["qmax"]))
    count.channels += len(w)
    count.unreachable += len(w) - len(cand)
    return cand


def _only_runtime(site, runtime: list[int], count: TieCount) -> bool:
    """The builders below solve for these operands with the rest constant; otherwise "unsolved"."""
    if site.runtime() == runtime:
        return True
    count.channels += 1
    count.unsolved += 1
    return False


def _keep(cases: list, inputs: list, count: TieCount, hits_before: int) -> bool:
    """Keep a packed call only if it holds a tie; True once :data:`MAX_TIE_CALLS` are kept."""
    if count.hit > hits_before:
        cases.append(inputs)
    return len(cases) >= MAX_TIE_CALLS


def _ties_dense(site, count):
    """Candidate channel ``j`` gets one row of ``x`` solving ``x . w[j] = tie - bias[j]``."""
    if not _only_runtime(site, [0], count):
        return []
    (shape, dtype), w, bias, mult, shift = site.args
    lo, hi = _range(site, 0)
    rows, cand = math.prod(shape[:-1]), _candidates(site, count, lo, hi)
    cases = []
    for start in range(0, len(cand), rows):
        x, before = np.zeros((rows, shape[-1]), np.int64), count.hit
        for r, j in enumerate(cand[start:start + rows]):
            sol = _channel_ties(count, lo, hi, w[j], int(bias[j]), int(mult[j]), int(shift[j]),
                                site.params["qmin"], site.params["qmax"])
            if sol is not None:
                x[r] = sol
        if _keep(cases, [x.reshape(shape).astype(dtype)], count, before):
            break
    return cases


def _ties_conv(site, count):
    """Channel ``oc`` gets one output position (receptive fields of the positions used in one call
    do not overlap; channels of different groups read different inputs, so they share positions)."""
    if not _only_runtime(site, [0], count):
        return []
    (shape, dtype), w, bias, mult, shift = site.args
    p = site.params
    lo, hi = _range(site, 0)
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), (pt, pl, _, _), groups = p["strides"], p["dilation"], p["padding"], p["groups"]
    oh, ow = site.out[0][2], site.out[0][3]
    step_y, step_x = -(-((kh - 1) * dh + 1) // sh), -(-((kw - 1) * dw + 1) // sw)
    candidates = _candidates(site, count, lo, hi)
    if not len(candidates):
        return []
    # grid offset so the first position's window starts inside; unpadded windows first (wider acc range)
    i0, j0 = -(-pt // sh) % step_y, -(-pl // sw) % step_x
    inside_y = {i: sum(0 <= i * sh + r * dh - pt < shape[2] for r in range(kh)) for i in range(i0, oh, step_y)}
    inside_x = {j: sum(0 <= j * sw + r * dw - pl < shape[3] for r in range(kw)) for j in range(j0, ow, step_x)}
    slots = sorted(((b, i, j) for b in range(shape[0]) for i in inside_y for j in inside_x),
                   key=lambda s: -inside_y[s[1]] * inside_x[s[2]])
    og = o // groups
    ranks: dict[int, int] = {}
    calls: list[list] = []
    for oc in candidates:  # the k-th candidate of each group -> slot k
        k = ranks[oc // og] = ranks.get(oc // og, -1) + 1
        if k // len(slots) == len(calls):
            calls.append([])
        calls[k // len(slots)].append((slots[k % len(slots)], int(oc)))
    cases = []
    for call in calls:
        x, before = np.zeros(shape, np.int64), count.hit
        for slot, oc in call:
            _solve_conv_channel(count, x, slot, oc, (oc // og) * cg, w, bias, mult, shift, site, lo, hi)
        if _keep(cases, [x.astype(dtype)], count, before):
            break
    return cases


def _taps(slot, site):
    """Input rows/cols read by output position ``slot`` and which of them are not padding."""
    p, (_, _, h, wd), w = site.params, site.args[0][0], site.args[1]
    _, i, j = slot
    (sh, sw), (dh, dw), (pt, pl, _, _) = p["strides"], p["dilation"], p["padding"]
    rc, ry, rx = np.meshgrid(*(np.arange(d) for d in w.shape[1:]), indexing="ij")
    yy, xx = i * sh + ry * dh - pt, j * sw + rx * dw - pl
    return rc, yy, xx, (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)


def _solve_conv_channel(count, x, slot, oc, c0, w, bias, mult, shift, site, lo, hi):
    p = site.params
    rc, yy, xx, inside = _taps(slot, site)  # padded taps read 0: only the inside ones are free
    b = slot[0]
    sol = _channel_ties(count, lo, hi, w[oc][inside], int(bias[oc]), int(mult[oc]), int(shift[oc]),
                        p["qmin"], p["qmax"])
    if sol is not None:
        x[b, c0 + rc[inside], yy[inside], xx[inside]] = sol


def _ties_avg_pool(site, count):
    """Each output position has its own multiplier (1/count folded in): position ``p`` gets the
    ``p``-th (batch, channel) plane, whose window for ``p`` sums to a tie."""
    if not _only_runtime(site, [0], count):
        return []
    (shape, dtype), mult = site.args
    p = site.params
    lo, hi = _range(site, 0)
    (kh, kw), (sh, sw), (pt, pl, _, _) = p["pool_size"], p["strides"], p["padding"]
    planes = shape[0] * shape[1]
    positions = [(i, j) for i in range(mult.shape[0]) for j in range(mult.shape[1])]
    cases = []
    for start in range(0, len(positions), planes):
        x, before = np.zeros(shape, np.int64).reshape(planes, *shape[2:]), count.hit
        for plane, (i, j) in enumerate(positions[start:start + planes]):
            rows = [y for y in range(i * sh - pt, i * sh - pt + kh) if 0 <= y < shape[2]]
            cols = [v for v in range(j * sw - pl, j * sw - pl + kw) if 0 <= v < shape[3]]
            n = len(rows) * len(cols)
            count.channels += 1
            targets = tie_targets(n * lo, n * hi, int(mult[i, j]), p["shift"], p["qmin"], p["qmax"]) if n else []
            count.hit += bool(targets)
            count.unreachable += not targets
            if targets:
                x[plane][np.ix_(rows, cols)] = spread_sum(targets[0], n, lo, hi).reshape(len(rows), len(cols))
        if _keep(cases, [x.reshape(shape).astype(dtype)], count, before):
            break
    return cases


def _ties_matmul(site, count):
    """``b`` all equal to ``v``, each row of ``a`` summing to ``tie / v``: every output is the tie.
    Ties are odd multiples of a power of two, so ``v`` is the largest power of two dividing it
    that ``b`` holds (1 would reach only ``|acc| <= K max|a|``)."""
    if not _only_runtime(site, [0, 1], count):
        return []
    (sa, da), (sb, db) = (site.args[i] for i in site.runtime())
    (alo, ahi), (_, bhi) = (_range(site, i) for i in site.runtime())
    step = tie_step(site.params["multiplier"], site.params["shift"]) or 1
    v, k = min(step, 1 << (bhi.bit_length() - 1)), sa[-1]
    targets = _per_tensor_ties(site, k * alo * v, k * ahi * v, count)
    return [[np.broadcast_to(spread_sum(t // v, k, alo, ahi), sa).astype(da), np.full(sb, v, db)] for t in targets[:2]]


TIE_BUILDERS = {"avg_pool2d_requant": _ties_avg_pool, "matmul_requant": _ties_matmul,
                "requantize": _ties_requantize, "sum_requant": _ties_sum, "add_requant": _ties_add,
                "dense_requant": _ties_dense, "conv2d_requant": _ties_conv}
# int4-weight kernels: the int8 builders on the widened weights (ops/int4_linear.py)
TIE_BUILDERS["dense_requant_w4"] = lambda site, count: _ties_dense(widened_site(site), count)
TIE_BUILDERS["conv2d_requant_w4"] = lambda site, count: _ties_conv(widened_site(site), count)
# the x86 build's narrowing requantize fused into its conv: the requantize's ties, through the conv
TIE_BUILDERS["conv2d_requant_narrowed"] = lambda site, count: _ties_requantize(narrowing_site(site), count)
