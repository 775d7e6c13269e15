"""Default schedules for the integer kernels, one rule class per kernel shape family.

A rule follows TVM dlight's contract: ``apply(func, target) -> PrimFunc | None`` where ``None``
means "not mine"; :func:`apply_default_schedules` gives each integer kernel of a module to the first
rule that takes it. Rules must give a working schedule without any tuning database; every scheduled
kernel is still checked bit-exactly against the NumPy reference by the compile pipeline.
"""
from __future__ import annotations

import logging

import tvm

from ..ops import op_of
from .packing import pack_weights
from .x86 import Conv2D1x1Reorder, DenseRowBlocks, GeluInlineStages, MatmulRequantIKJ
from .x86_conv_channel_lanes import Conv2D1x1ChannelLanes
from .x86_depthwise import DepthwiseConv2DTensorized
from .x86_depthwise_lanes import DepthwiseChannelLanes
from .x86_depthwise_pairs import DepthwiseRowPairs
from .x86_int4 import Int4WidenedAtBuild
from .x86_int8 import Conv2DTensorized, DenseTensorized
from .x86_matmul import MatmulTensorized
from .x86_nonlinear import GeluRowsParallel, GeluTable, SoftmaxRowsParallel
from .x86_shiftadd import AddAttentionPerHead, ShiftDenseRows

log = logging.getLogger(__name__)

# tensorized rules first: they take the kernels pack_weights packed for them (and only those)
RULES = [Conv2D1x1ChannelLanes(), Conv2DTensorized(), DepthwiseChannelLanes(), DepthwiseRowPairs(), DepthwiseConv2DTensorized(),
         DenseTensorized(), MatmulTensorized(),
         GeluTable(), GeluRowsParallel(), SoftmaxRowsParallel(),
         Conv2D1x1Reorder(), DenseRowBlocks(), MatmulRequantIKJ(), GeluInlineStages(),
         AddAttentionPerHead(), ShiftDenseRows()]
RULES.insert(0, Int4WidenedAtBuild([rule for rule in RULES if hasattr(rule, "pack")]))  # int4 -> the int8 packers
__all__ = ["RULES", "apply_default_schedules", "pack_weights"]


def apply_rules(mod: tvm.IRModule, target: tvm.target.Target, rules) -> tuple[tvm.IRModule, list[str]]:
    """Give each integer kernel of ``mod`` to the first of ``rules`` that takes it; returns the
    module and the names of the kernels scheduled (any target family's rule list)."""
    taken, updates = [], {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or op_of(func) is None:
            continue
        for rule in rules:
            new = rule.apply(func, target)
            if new is not None:
                updates[gv] = new
                taken.append(gv.name_hint)
                break
    if updates:
        mod = mod.clone() if hasattr(mod, "clone") else mod
        for gv, func in updates.items():
            mod.update_func(gv, func)
    return mod, taken


def apply_default_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, int]:
    """Schedule every integer kernel some CPU rule takes; returns the module and how many were scheduled."""
    mod, taken = apply_rules(mod, target, RULES)
    return mod, len(taken)
