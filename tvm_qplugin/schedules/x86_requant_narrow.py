"""A shorter exact requantization for kernels whose accumulators are provably small (AVX2
depthwise): the bias added in int32 by the accumulator's initial value and the rounding constant
added to the product's high word, where x86_requant adds both in int64.

x86_requant's epilogue per 8 outputs: the pre-shift ``vpsllvd``, two ``vpmuldq``, two ``vpsrlq``,
two ``vpaddq`` (the folded ``(bias * m + round) << t``), ``vpblendd``, ``vpsravd``: 9 instructions
before the narrowing. Here:

    v  = acc + bias'                   (int32: the accumulator *starts* at bias', no instruction)
    v' = v << t                        (only when some channel's t > 0)
    hi = (int64(v') * m) >> 32         (int32 high word: two vpmuldq, two vpsrlq, one vpblendd)
    y  = clamp((hi + 2**(s2 - 1)) >> s2)

7 instructions (8 with the pre-shift) before the narrowing. Same integers as the op: with ``P``
the op's int64 sum ``(acc + bias') * m + 2**(sh - 1)`` (``bias'`` the offset-corrected bias) and
``t + sh = 32 + s2``, ``s2 >= 1``: ``P * 2**t = v' * m + 2**(31 + s2)``, and ``2**(31 + s2)`` is
``2**(s2 - 1)`` whole units of the high word, so ``floor(P * 2**t / 2**32) = hi + 2**(s2 - 1)``
and ``floor((hi + 2**(s2 - 1)) / 2**s2) = floor(P / 2**sh)``, the op's value before the clamp.
It holds when ``v'`` fits int32 (``(max|acc| + |bias'|) * 2**t < 2**31``, the accumulator bound
from the real weights as in ``x86_requant._epilogue_exact``), ``|m| < 2**31`` and
``s2 <= 31``; ``|hi| < 2**30`` then, so the rounding add cannot overflow. :func:`narrow_consts`
proves it per call at compile time (None: keep x86_requant's epilogue).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import SBlock, Schedule, TensorIntrin
from tvm.script import tirx as T

from ..ops.requant import i64
from ..quant import abs_max
from .x86_requant import _bias_with_offset, _with_root_regions, clamp_to, epilogue_intrin, laid_out


def narrow_consts(w2d: np.ndarray, bias, mult, shift, act_dtype: str, offset: int, pad_to: int) -> list | None:
    """Per channel, zero-padded to ``pad_to``: int32 ``bias'``, ``m``, ``t``, ``2**(s2 - 1)``,
    ``s2`` -- or None when a channel's bounds do not prove the narrow epilogue exact."""
    wsum = np.abs(w2d.astype(np.int64)).sum(axis=1)
    corrected = _bias_with_offset(w2d, bias, offset)
    m, sh = mult.astype(np.int64), shift.astype(np.int64)
    t = np.maximum(0, 33 - sh)             # s2 >= 1: the rounding constant is whole units of the high word
    s2 = sh + t - 32
    reach = ((abs_max(act_dtype) + offset) * wsum + np.abs(corrected)) << t
    if not ((np.abs(m) < 2**31).all() and (reach < 2**31).all() and (s2 <= 31).all()):
        return None
    out = []
    for value in (corrected, m, t, np.int64(1) << (s2 - 1), s2):
        padded = np.zeros(pad_to, np.int32)
        padded[: len(value)] = value
        out.append(padded)
    return out


@dataclasses.dataclass(frozen=True)
class NarrowCheck:
    """The per-call proof (:func:`narrow_consts`) for a kernel whose weights are ``[O, ...]`` and
    whose activations are ``adt`` with the dot's ``off``: the ``geo`` of :func:`narrow_or_exact`
    and the ``accepts`` of its packings (x86_int8's groups-1 conv)."""

    adt: str
    off: int

    def narrow_constants(self, consts) -> list | None:
        w2d = consts[0].reshape(consts[0].shape[0], -1)
        return narrow_consts(w2d, *consts[1:4], self.adt, self.off, w2d.shape[0])

    def accepts(self, epilogue: str):
        def accepts(consts) -> bool:
            found = self.narrow_constants(consts)
            return found is not None and (epilogue == "narrow_shift" or not found[2].any())
        return accepts


def starting_at_bias(func, block: str, bias: str, channel_index: int):
    """``func`` whose reduction ``block`` starts from ``bias[its channel]`` instead of 0 (the index
    ``channel_index`` of the block's output element). TE's ``te.sum(..., init=)`` would say it,
    but ``te.create_prim_func`` drops the init value (TVM 0.27: the block's ``T.init()`` stores 0),
    so the block is rewritten here. Its read regions stay the update's (the dot intrinsic's
    description must match them); ``decompose_reduction`` gives the init block its own."""
    sch = Schedule(func)
    rv = sch.get_sblock(block)
    old = sch.get(rv)
    store = old.init
    buf = next(p for p in func.params if p.name == bias)
    index = store.indices[channel_index]
    init = tirx.BufferStore(store.buffer, tirx.BufferLoad(buf, [index]), store.indices)
    new = SBlock(old.iter_vars, old.reads, old.writes, old.name_hint, old.body, init, old.alloc_buffers,
                 old.match_buffers, old.annotations)
    sch.state.replace(sch.get_sref(rv), new, {old: new})
    return sch.mod["main"]


def narrow_or_exact(calls, geo, exact, packing):
    """``packing(kind)`` with the narrow epilogue when every call's constants prove it exact
    (``geo.narrow_constants``) -- ``"narrow"`` when every channel's pre-shift is 0, else
    ``"narrow_shift"`` --, else the ``exact`` packing (x86_requant's epilogue)."""
    found = [geo.narrow_constants(consts) for consts in calls]
    if not found or any(f is None for f in found):
        return exact
    return packing("narrow_shift" if any(f[2].any() for f in found) else "narrow")


def info_epilogue_intrin(lanes: int, info: dict, acc_scope: str = "global", grouped: bool = False) -> str:
    """The epilogue intrinsic of a packed kernel whose info names its ``epilogue`` (absent:
    x86_requant's, the only one with a ``grouped`` form)."""
    epilogue = info.get("epilogue", "exact")
    if epilogue == "exact":
        return epilogue_intrin(lanes, info["requant"], acc_scope, grouped)
    return narrow_epilogue_intrin(lanes, info["requant"], epilogue == "narrow_shift", acc_scope)


def narrow_placeholders(channels: int):
    return tuple(te.placeholder((channels,), "int32", name=n)
                 for n in ("bias_corrected", "multiplier", "pre_shift", "rounding", "post_shift"))


def narrow_stage(acc, shape, acc_index, channel, consts, params, padded: bool, pre_shift: bool):
    """The narrow epilogue of ``acc`` (which already holds ``bias'``: see the module docstring) into
    the output of ``shape``, as ``x86_requant._requant_stage`` lays it out (``y``, or ``y_tile``
    then ``y`` when the accumulator has pad lanes). ``pre_shift``: apply ``t`` (some channel's
    shift is below 33)."""
    _, mult, pre, rounding, post = consts

    def rq(a):
        ch = channel(a)
        v = acc(*a) << pre[ch] if pre_shift else acc(*a)
        high = ((i64(v) * i64(mult[ch])) >> tirx.const(32, "int64")).astype("int32")
        y = (high + rounding[ch]) >> post[ch]
        return clamp_to(y, params)

    return laid_out(rq, acc, shape, acc_index, padded)


_REGISTERED: dict[tuple, str] = {}


def narrow_epilogue_intrin(lanes: int, params: dict, pre_shift: bool, acc_scope: str = "global") -> str:
    """:func:`narrow_stage` on ``lanes`` accumulators of one channel (in a buffer of ``acc_scope``:
    the groups-1 conv's long-K tile is ``local``) as a tensor intrinsic: the
    description is the TE expression (so only kernels whose epilogue is exactly it match), the
    implementation computes the high words on even / odd qwords as ``x86_requant.epilogue_intrin``
    does. Registered on first use."""
    qmin, qmax, dt = params["qmin"], params["qmax"], params["out_dtype"]
    key = (lanes, qmin, qmax, dt, pre_shift, acc_scope)
    if key in _REGISTERED:
        return _REGISTERED[key]
    acc = te.placeholder((lanes,), "int32", name="acc")
    consts = narrow_placeholders(1)
    y = narrow_stage(acc, (lanes,), lambda i: i, lambda a: 0, consts, params, False, pre_shift)
    used = (consts[1], consts[2], consts[3], consts[4]) if pre_shift else (consts[1], consts[3], consts[4])
    desc = _with_root_regions(te.create_prim_func([acc, *used, y]))
    if acc_scope != "global":
        desc = desc.specialize({desc.params[0]: tvm.tirx.decl_buffer((lanes,), "int32", "acc", scope=acc_scope)})

    @T.prim_func(s_tir=True)
    def with_shift(a: T.handle, m: T.handle, p: T.handle, r: T.handle, q: T.handle, o: T.handle) -> None:
        A = T.match_buffer(a, (lanes,), "int32", offset_factor=1, scope=acc_scope)
        M = T.match_buffer(m, (1,), "int32", offset_factor=1)
        P = T.match_buffer(p, (1,), "int32", offset_factor=1)
        R = T.match_buffer(r, (1,), "int32", offset_factor=1)
        Q = T.match_buffer(q, (1,), "int32", offset_factor=1)
        O = T.match_buffer(o, (lanes,), dt, offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:lanes], M[0:1], P[0:1], R[0:1], Q[0:1])
            T.writes(O[0:lanes])
            O[T.ramp(T.int32(0), 1, lanes)] = _narrow_vector(A.vload([0], f"int32x{lanes}") << T.broadcast(P[0], lanes),
                                                             M[0], R[0], Q[0], lanes, qmin, qmax, dt)

    @T.prim_func(s_tir=True)
    def without_shift(a: T.handle, m: T.handle, r: T.handle, q: T.handle, o: T.handle) -> None:
        A = T.match_buffer(a, (lanes,), "int32", offset_factor=1, scope=acc_scope)
        M = T.match_buffer(m, (1,), "int32", offset_factor=1)
        R = T.match_buffer(r, (1,), "int32", offset_factor=1)
        Q = T.match_buffer(q, (1,), "int32", offset_factor=1)
        O = T.match_buffer(o, (lanes,), dt, offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:lanes], M[0:1], R[0:1], Q[0:1])
            T.writes(O[0:lanes])
            O[T.ramp(T.int32(0), 1, lanes)] = _narrow_vector(A.vload([0], f"int32x{lanes}"), M[0], R[0], Q[0],
                                                             lanes, qmin, qmax, dt)

    impl = with_shift if pre_shift else without_shift
    name = f"qplugin_narrow_epilogue_{lanes}_{qmin}_{qmax}_{dt}_{int(pre_shift)}" + \
        ("" if acc_scope == "global" else f"_{acc_scope}")
    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED[key] = name
    return name


def _narrow_vector(v, mult, rounding, post, lanes: int, qmin: int, qmax: int, dt: str):
    """The vector expression of :func:`narrow_epilogue_intrin` on the (pre-shifted) ``v``."""
    half = lanes // 2
    wide = T.reinterpret(v, dtype=f"int64x{half}")
    m = T.broadcast(T.Cast("int64", mult), half)
    thirty_two = T.broadcast(T.int64(32), half)
    even = T.reinterpret(((wide << thirty_two) >> thirty_two) * m >> thirty_two, dtype=f"int32x{lanes}")
    odd = T.reinterpret((wide >> thirty_two) * m, dtype=f"int32x{lanes}")
    high = tirx.Shuffle([even, odd], [l + (lanes if l % 2 else 0) for l in range(lanes)])
    y = (high + T.broadcast(rounding, lanes)) >> T.broadcast(post, lanes)
    clamped = T.max(T.min(y, T.broadcast(T.int32(qmax), lanes)), T.broadcast(T.int32(qmin), lanes))
    return T.Cast(f"{dt}x{lanes}", clamped)
