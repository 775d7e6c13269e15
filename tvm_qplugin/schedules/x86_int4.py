"""int4-weight conv / dense on x86: widened once, at build time, into the int8 tensorized kernels.

x86 has no 4-bit dot product: the fastest int4 kernel here is the int8 VNNI / AVX2 one fed with
the widened weights (``vpdpbusd`` / ``vpmaddwd`` take bytes). Widening inside every call, as the
plain TE kernel does (ops/int4_linear.py's ``w_unpacked`` stage), only adds work; so for a
``*_w4`` kernel that an int8 tensorized rule would take, this packer hands
:func:`~.packing.pack_weights` that rule's packing of the equivalent int8 kernel, with the packed
int4 rows widened first (quant/int4.py). The result:

* the same integers as the int4 op (its twin widens the same rows; kernel_check.py runs the
  compiled kernel with these packed arguments against ``conv2d_requant_w4``'s twin);
* int8 speed, and the x86 executable holds int8 (prepacked) weights -- the artifact's integer
  module, its size figure and the C package keep the packed int4 bytes.

Note: kernels no tensorized rule takes (an ISA without the dot instructions, an epilogue that
does not fit) keep the plain TE kernel, which widens per call -- slower, never wrong.
"""
from __future__ import annotations

import tvm

from ..ops import OPS, op_of
from ..quant.int4 import unpack_int4
from .packing import PACKED_ATTR, Packing, tag_packed
from .x86_int8 import _param_type

INT8_OF = {"conv2d_requant_w4": "conv2d_requant", "dense_requant_w4": "dense_requant"}


class Int4WidenedAtBuild:
    """Packer for ``conv2d_requant_w4`` / ``dense_requant_w4`` on LLVM targets (module doc)."""

    def __init__(self, int8_packers):
        self.int8_packers = int8_packers

    def pack(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> Packing | None:
        described = op_of(func)
        if target.kind.name != "llvm" or described is None or described[0] not in INT8_OF:
            return None
        op, params = described
        w_shape = tuple(params["w_shape"])
        types = [_param_type(p) for p in func.params]
        int8_params = {k: v for k, v in params.items() if k != "w_shape"}
        func8, _ = OPS[INT8_OF[op]].prim_func([types[0], (w_shape, "int8"), *types[2:-1]], **int8_params)
        for packer in self.int8_packers:
            inner = packer.pack(func8, target)
            if inner is not None:
                return _widening(inner, func, w_shape)
        return None

    def apply(self, func, target):
        return None  # packs only: the int8 rule schedules the packed kernel it made


def _widening(inner: Packing, func: tvm.tirx.PrimFunc, w_shape: tuple[int, ...]) -> Packing | None:
    """``inner`` (an int8 kernel's packing) taking the int4 call's constants: the packed rows at
    argument 1 are widened to ``w_shape`` first. A choice ``inner`` makes from all its calls'
    constants (``for_calls``: AVX2's ``vpmaddubsw`` where the weights prove it exact -- int4
    weights, at most 8 in size, always do) is made on the widened weights and widened in turn."""
    if 1 not in inner.const_args:
        return None
    at = inner.const_args.index(1)
    k = 1
    for d in w_shape[1:]:
        k *= d

    def widened(consts):
        consts = list(consts)
        consts[at] = unpack_int4(consts[at], k).reshape(w_shape)
        return consts

    def for_calls(calls):
        chosen = inner.for_calls([widened(c) for c in calls])
        return None if chosen is None else _widening(chosen, func, w_shape)

    info = {**_info(inner.func), "int4": "widened at build"}
    return Packing(tag_packed(inner.func, func, info), inner.const_args,
                   lambda consts: inner.pack_args(widened(consts)), lambda consts: inner.accepts(widened(consts)),
                   for_calls if inner.for_calls is not None else None)


def _info(func) -> dict:
    import json

    return json.loads(str(func.attrs[PACKED_ATTR]))


def int4_kernel_note(kernel: dict, name: str | None, packed: dict) -> dict:
    """``layers[].kernel`` of an int4 layer says how its weights are widened: at build into the
    int8 tensorized kernel (``packed[name]`` carries ``int4``), or per call by the plain TE kernel
    (the fallback, e.g. on an ISA without the dot instructions)."""
    if not name or "_w4_" not in name:
        return kernel
    how = "widened at build into the int8 kernel" if "int4" in packed.get(name, {}) else \
        "widened per call by the plain TE kernel (no tensorized int8 rule takes it)"
    return {**kernel, "why": f"int4 weights {how}; {kernel['why']}"}
