"""Build an integer module for an NVIDIA GPU without needing one: CUDA source, PTX, and checks.

What runs with no GPU (only TVM's CUDA codegen and the CUDA toolkit's ``nvcc``):

* scheduling: schedules/cuda_mma.py's tensor-core kernels (sm_80+), then schedules/cuda_int8.py's
  ``__dp4a`` rules on the 8-bit GEMM-shaped kernels, schedules/cuda_int16.py's register-tiled GEMM
  on those with an int16 operand, dlight's
  ``gpu.Fallback`` on every other kernel (LegalizeOps' layout kernels included), so every kernel
  has thread bindings;
* the integer-only check (passes/verify_tir.py) on the scheduled kernels, as for the CPU build;
* TVM's GPU code verifier (``s_tir.analysis.verify_gpu_code``: threads per block, shared memory
  per block, thread extents) on every kernel, against the limits of the target's arch;
* code generation (CUDA C from TVM) and ``nvcc -ptx`` for the board's arch.

What needs a GPU: loading the module and running the kernels -- so bit-exactness against the
NumPy reference is not established by this build (tests/test_cuda_build.py runs it where a GPU
is present).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field

import tvm
from tvm import relax

from .build import relax_pipeline
from .errors import TargetError
from .passes.verify import (
    IntegerOnlyReport,
    check_lowered_kernels,
    kernel_origins,
    verify_integer_only,
)

# Per-block limits every sm_75+ part has (CUDA programming guide, compute capability table);
# TVM's verifier checks the kernels against them.
GPU_LIMITS = {
    "max_threads_per_block": 1024,
    "max_thread_x": 1024,
    "max_thread_y": 1024,
    "max_thread_z": 64,
    "max_shared_memory_per_block": 48 * 1024,  # without the opt-in dynamic carve-out
    "max_local_memory_per_block": 2**31 - 1,
    "max_vector_bytes": 16,
    "max_vthread": 1,
}
SUPPORTED_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90")  # CUDA 13 dropped sm_70


@dataclass
class CudaBuild:
    """What :func:`build_cuda` produced: the CUDA source, its PTX, and per-kernel facts."""

    arch: str
    source: str
    ptx: str
    dp4a_kernels: list[str]               # integer kernels a cuda_int8 rule scheduled (dp4a)
    integer_only: IntegerOnlyReport       # passes/verify.py's report, TIR level on these kernels
    kernel_ptx: dict[str, str] = field(default_factory=dict)  # PTX ``.entry`` name -> its body
    executable: object = None             # relax VM executable (loadable only with a GPU)
    int16_gemm_kernels: list[str] = field(default_factory=list)  # scheduled by cuda_int16 (register tiles)
    mma_kernels: list[str] = field(default_factory=list)  # integer kernels cuda_mma wrote (mma.sync s8, sm_80+)
    check_samples: list = field(default_factory=list)  # (inputs, reference outputs): OUT/cuda/check.npz

    def ptx_of(self, kernel: str) -> str:
        """PTX body of the entry TVM emitted for PrimFunc ``kernel`` (``<kernel>_kernel``...)."""
        bodies = [body for name, body in self.kernel_ptx.items() if name.startswith(f"{kernel}_kernel")]
        if not bodies:
            raise KeyError(f"no PTX entry for kernel {kernel!r}; entries: {sorted(self.kernel_ptx)}")
        return "\n".join(bodies)


def cuda_target(arch: str) -> tvm.target.Target:
    """The CUDA target for ``arch`` (an LLVM host for the VM side)."""
    if arch not in SUPPORTED_ARCHS:
        raise TargetError(f"CUDA arch {arch!r} not supported; use one of {', '.join(SUPPORTED_ARCHS)} "
                          "(CUDA 13 has no sm_70)")
    return tvm.target.Target({"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}})


def find_nvcc() -> str:
    """Path of ``nvcc``; a one-line error naming the fix when the CUDA toolkit is missing."""
    path = shutil.which("nvcc")
    if path is None:
        raise TargetError("nvcc not found: a CUDA board needs the CUDA toolkit (install it and put its "
                          "bin/ on PATH) to compile the kernels to PTX")
    return path


def schedule_for_cuda(mod: tvm.IRModule,
                      target: tvm.target.Target) -> tuple[tvm.IRModule, list[str], list[str], list[str]]:
    """cuda_mma / cuda_int8 / cuda_int16 rules, LegalizeOps, dlight fallback, then build.py's Relax
    pipeline; returns the module, the dp4a kernels, the int16 GEMM kernels and the mma kernels."""
    # imported here: it loads TVM's CUDA tensor intrinsics (tens of seconds of TVMScript parsing),
    # which the checks a CUDA compile makes before any work (cuda_target, find_nvcc) do not need
    from .schedules.cuda_int8 import FALLBACK, apply_cuda_schedules
    from .schedules.cuda_int16 import int16_gemm_kernels
    from .schedules.cuda_mma import is_mma_kernel

    mod, taken = apply_cuda_schedules(mod, target)
    int16 = int16_gemm_kernels(mod)
    mma = [gv.name_hint for gv, func in mod.functions.items() if is_mma_kernel(func)]
    with target:
        mod = relax.transform.LegalizeOps()(mod)
        mod = FALLBACK(mod)
    return relax_pipeline(target)(mod), taken, int16, mma


def lower_for_verifier(mod: tvm.IRModule) -> tvm.IRModule:
    """The kernels of ``mod`` lowered as far as TVM's GPU verifier needs: it reads ``thread_extent``
    attributes and flat allocations, so on block-form (s_tir) kernels it sees nothing and passes
    anything. These are the first passes of ``s_tir/pipeline.py``'s default pipeline."""
    from tvm import s_tir, tirx

    kernels = tvm.IRModule({gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)})
    return tvm.transform.Sequential([
        s_tir.transform.CanonicalizeLoop(), s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.LiftThreadBinding(),
        s_tir.transform.CompactBufferAllocation(), s_tir.transform.UnifyThreadBinding(),
        s_tir.transform.LowerMatchBuffer(), s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(),
    ])(kernels)


def verify_gpu_kernels(lowered: tvm.IRModule) -> list[str]:
    """Names of the kernels TVM's GPU verifier refuses under :data:`GPU_LIMITS` (empty: all pass)."""
    return [gv.name_hint for gv, func in lower_for_verifier(lowered).functions.items()
            if not tvm.s_tir.analysis.verify_gpu_code(func, GPU_LIMITS)]


def check_kernels(mod: tvm.IRModule, lowered: tvm.IRModule, func_name: str = "core") -> IntegerOnlyReport:
    """The compile's integer-only check (both levels; the TIR one on the CUDA-scheduled kernels
    ``func_name`` calls) and TVM's GPU verifier on every kernel; raises on a failure."""
    rep = verify_integer_only(mod, func_name=func_name, raise_on_error=False)
    check_lowered_kernels(lowered, rep, kernel_origins(mod, func_name), func_name, raise_on_error=True)
    refused = verify_gpu_kernels(lowered)
    if refused:
        raise RuntimeError(f"TVM's GPU verifier refused kernels {', '.join(refused)} (threads / shared memory "
                           "per block over the sm_75+ limits): a CUDA schedule rule is wrong")
    return rep


def _cuda_source(executable) -> str:
    """CUDA C of the (one) CUDA module the VM executable imports."""
    modules, seen = [executable.mod], []
    while modules:
        m = modules.pop()
        if m.kind == "cuda":
            seen.append(m.inspect_source())
        modules.extend(m.imports)
    if not seen:
        raise RuntimeError("the CUDA build produced no CUDA module")
    return "\n".join(seen)


ENTRY = re.compile(r"\.entry\s+(\w+)\(")


def split_ptx(ptx: str) -> dict[str, str]:
    """PTX ``.entry`` name -> the text up to the next entry."""
    starts = [(m.start(), m.group(1)) for m in ENTRY.finditer(ptx)]
    return {name: ptx[at:(starts[n + 1][0] if n + 1 < len(starts) else len(ptx))] for n, (at, name) in enumerate(starts)}


def build_cuda(mod: tvm.IRModule, arch: str) -> CudaBuild:
    """Schedule, check and compile the integer module ``mod`` for ``arch``; no GPU needed."""
    from tvm.support import nvcc

    target = cuda_target(arch)
    find_nvcc()
    lowered, taken, int16, mma = schedule_for_cuda(mod, target)
    integer_only = check_kernels(mod, lowered)
    executable = tvm.compile(lowered, target=target, relax_pipeline=None)
    source = _cuda_source(executable)
    with target:  # nvcc.compile_cuda reads the arch from the current target as well
        ptx = nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc").decode()
    return CudaBuild(arch, source, ptx, taken, integer_only, split_ptx(ptx), executable, int16, mma)
