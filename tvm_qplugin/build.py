"""Build an integer module with TVM: default schedules, then TVM's CPU pipeline *without* FuseOps.

Why no fusion: each integer kernel is already a fused unit (conv + bias + requant + clamp), and
keeping kernel boundaries as in the integer graph means a bit-exact mismatch points at one
kernel. TVM's FuseOps/FuseTIR also mis-handles some of our TE kernels ("Inconsistent buffers ...
mapped to the same relax var") and blows up lowering time on the long integer expressions of
the non-linear kernels (minutes for a 4-block ViT), so the pipeline below is the CPU default
(relax/backend/cpu_generic/pipeline.py) minus those two passes.
"""
from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax

from .schedules import apply_default_schedules, pack_weights
from .schedules.x86_narrowing import fuse_narrowing


def relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="QPluginRelaxPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential([
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.RewriteDataflowReshape(),
                relax.transform.ToNonDataflow(),
                relax.transform.RemovePurityChecking(),
                relax.transform.CallTIRRewrite(),
                relax.transform.StaticPlanBlockMemory(),
                relax.transform.LowerAllocTensor(),
                relax.transform.KillAfterLastUse(),
                relax.transform.LowerRuntimeBuiltin(),
                relax.transform.ComputePrimValue(),
                relax.transform.VMShapeLower(),
                relax.transform.AttachGlobalSymbol(),
            ])
            return seq(mod)

    return _pipeline


def lower(mod: tvm.IRModule, target: tvm.target.Target, tuning=None) -> tuple[tvm.IRModule, int]:
    """Default schedules + the Relax pipeline above: the module TVM's TIR pipeline and codegen get.
    ``tuning`` (tuning/apply.py ``AppliedTuning``): its database's schedules replace the default
    ones, kernel by kernel. Returns ``(lowered module, number of kernels a schedule rule took)``."""
    mod = fuse_narrowing(mod, target)  # a narrowing requantize read in its conv's gather (schedules/x86_narrowing.py)
    mod = pack_weights(mod, target)  # a copy with prepacked weights: the integer module keeps plain layouts
    scheduled, n = apply_default_schedules(mod, target)
    if tuning is not None:  # MetaSchedule records win over the default rules where they were faster
        scheduled = tuning.apply(mod, scheduled, target)
    return relax_pipeline(target)(scheduled), n


def build(mod: tvm.IRModule, target: tvm.target.Target,
          check: Callable[[tvm.IRModule], None] | None = None, tuning=None):
    """Schedule and compile; returns ``(executable, number of kernels a schedule rule took)``.

    ``check``, when given, sees the lowered module before it is compiled -- the very module handed
    to ``tvm.compile`` (which then runs no Relax pass of its own): the integer-only checker
    (passes/verify_tir.py) runs there, on the kernels as scheduled (tuned ones included), and
    raises to stop the build.
    """
    lowered, n = lower(mod, target, tuning)
    if check is not None:
        check(lowered)
    return tvm.compile(lowered, target=target, relax_pipeline=None), n
