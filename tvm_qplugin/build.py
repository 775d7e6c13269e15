"""Build an integer module with TVM: default schedules, then TVM's CPU pipeline *without* FuseOps.

Why no fusion: each integer kernel is already a fused unit (conv + bias + requant + clamp), and
keeping kernel boundaries as in the integer graph means a bit-exact mismatch points at one
kernel. TVM's FuseOps/FuseTIR also mis-handles some of our TE kernels ("Inconsistent buffers ...
mapped to the same relax var") and blows up lowering time on the long integer expressions of
the non-linear kernels (minutes for a 4-block ViT), so the pipeline below is the CPU default
(relax/backend/cpu_generic/pipeline.py) minus those two passes.
"""
from __future__ import annotations

import tvm
from tvm import relax

from .schedules import apply_default_schedules


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


def build(mod: tvm.IRModule, target: tvm.target.Target, tuning=None):
    """Schedule and compile; returns ``(executable, number of kernels a schedule rule took)``.
    ``tuning`` (tuning/apply.py ``AppliedTuning``): its database's schedules replace the default ones."""
    scheduled, n = apply_default_schedules(mod, target)
    if tuning is not None:  # MetaSchedule records win over the default rules, kernel by kernel
        scheduled = tuning.apply(mod, scheduled, target)
    return tvm.compile(scheduled, target=target, relax_pipeline=relax_pipeline(target)), n
