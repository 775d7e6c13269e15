"""The TIR half of ``verify_integer_only``: a structural visitor over the kernels that are compiled.

Where it runs: on the IRModule that :func:`tvm_qplugin.build.lower` returns -- the integer
module after our default schedules and our Relax pipeline (LegalizeOps turns the layout ops into
TIR too, CallTIRRewrite/VMShapeLower finish the Relax side). :func:`tvm_qplugin.build.build`
hands that very module to ``tvm.compile`` with no further Relax pass, so what is checked here is
what TVM's TIR pipeline lowers and codegen compiles. (That pipeline -- FlattenBuffer, vectorize,
unroll, simplify, MakePackedAPI, LowerIntrin -- only re-expresses the same arithmetic; checking
before it keeps MakePackedAPI's argument-checking boilerplate out of the findings.)

What it looks at, on every node of every kernel the integer function calls (``tvm_ffi``'s
``structural_walk``, so no node kind is skipped by a hand-written visitor that forgot it):

* the dtype of every expression: buffer variables (parameters, ``alloc_buffer``,
  ``decl_buffer``: a buffer is a ``Var`` of ``BufferType``), pointer parameters
  (``T.handle("float32")``), loop and let variables, casts, loads, lets, broadcasts, calls;
  a dtype is float when its name holds ``float`` (float16/32/64, bfloat16, float8_*, float6_*,
  float4_*, vector forms such as float32x4);
* ``FloatImm`` constants, whatever they are cast to afterwards;
* calls: ``call_extern`` / ``call_pure_extern`` unless the callee is in :data:`INTEGER_EXTERNS`;
  tensor-core ``ptx_legacy.mma`` unless its element types are in :data:`INTEGER_MMA_TYPES`;
  ``call_llvm_intrin`` / ``call_llvm_pure_intrin`` unless the intrinsic is in
  :data:`INTEGER_LLVM_INTRINSICS`; float math intrinsics (:data:`FLOAT_MATH_OPS`) even when the
  argument is an integer (``T.exp(T.Cast("int32", x))`` is still a float exponential in LLVM).
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import relax, tirx

# Math intrinsics that LLVM computes in floating point whatever the argument dtype.
FLOAT_MATH_OPS = frozenset(f"tirx.{n}" for n in (
    "exp", "exp2", "exp10", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "cbrt", "pow", "erf",
    "tanh", "sigmoid", "sin", "cos", "tan", "sinh", "cosh", "asin", "acos", "atan", "atan2", "asinh", "acosh",
    "atanh", "round", "nearbyint", "floor", "ceil", "trunc", "fabs", "fmod", "hypot", "ldexp", "copysign",
    "nextafter", "isnan", "isinf", "isfinite", "isnullptr_float"))
EXTERN_CALLS = frozenset({"tirx.call_extern", "tirx.call_pure_extern"})
LLVM_CALLS = frozenset({"tirx.call_llvm_intrin", "tirx.call_llvm_pure_intrin"})
# External functions accepted in an integer kernel: only CUDA integer intrinsics whose arithmetic
# is fixed by the ISA (``__dp4a``: four 8-bit products summed into an int32, schedules/cuda_int8.py).
# No C library function: a C callee's arithmetic cannot be inspected here.
INTEGER_EXTERNS: frozenset[str] = frozenset({"__dp4a"})
# Tensor-core ``mma.sync`` (a TIR builtin, not an extern: schedules/cuda_mma.py) is accepted only
# on integer operand / accumulator types -- 8-bit products summed into int32 -- and refused on
# fp16 / bf16 / tf32 / fp8 ones, whatever dtype the buffers holding the registers have.
PTX_MMA_OPS = frozenset({"tirx.ptx_legacy.mma"})
INTEGER_MMA_TYPES = frozenset({"int8", "uint8", "int32"})
# LLVM intrinsics accepted in an integer kernel: integer multiply-add instructions that integer
# GEMM tensorization routes emit (s_tir.tensor_intrin x86 VNNI / aarch64 dot product, and the
# AVX2 u8 x s8 -> s16 -> s32 route of TVM_NOTES.md). Integer operands, integer results, no
# rounding. Any other intrinsic -- and any of these with a float dtype -- is refused.
INTEGER_LLVM_INTRINSICS = frozenset({
    "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd",          # vpmaddubsw / vpmaddwd (AVX2)
    "llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512",  # the same, AVX-512BW
    "llvm.x86.avx512.vpdpbusd.512", "llvm.x86.avx512.vpdpwssd.512",    # VNNI u8 x s8 / s16 x s16 -> s32
    "llvm.x86.avx512.vpdpbusd.256", "llvm.x86.avx512.vpdpwssd.256",    # the same, AVX-VNNI (256-bit)
    "llvm.aarch64.neon.sdot", "llvm.aarch64.neon.udot",                # ARMv8.2 dot product
})


@dataclass(frozen=True)
class TirFinding:
    """One float construct in one kernel: ``kernel`` (PrimFunc name), ``construct``, ``dtype``."""

    kernel: str
    construct: str
    dtype: str

    def __str__(self) -> str:
        return f"kernel {self.kernel}: {self.construct} ({self.dtype})"


def is_float_dtype(dtype: str) -> bool:
    """float16/32/64, bfloat16, float8_*/float6_*/float4_* and their vector forms."""
    return "float" in dtype


def _dtype_of(ty) -> str | None:
    """Element dtype of a TIR type: PrimType, BufferType, or the pointee of a PointerType."""
    if isinstance(ty, tvm.ir.PointerType):
        return _dtype_of(ty.element_type)
    dtype = getattr(ty, "dtype", None)
    return None if dtype is None else str(dtype)


def _construct(e) -> str:
    """A short description of the node that carries a float dtype."""
    if isinstance(e, tirx.Var):
        kind = "buffer" if isinstance(e.ty, tirx.BufferType) else "pointer" if isinstance(e.ty, tvm.ir.PointerType) \
            else "variable"
        return f"{kind} {e.name}"
    if isinstance(e, tirx.FloatImm):
        return f"constant {e.value!r}"
    if isinstance(e, tvm.ir.Call):
        return f"call {_callee(e)}"
    return type(e).__name__.replace("TensorLoad", "BufferLoad")


def _callee(call: tvm.ir.Call) -> str:
    op = call.op
    name = op.name if isinstance(op, tvm.ir.Op) else str(op)
    if name in EXTERN_CALLS and call.args and isinstance(call.args[0], tvm.ir.StringImm):
        return f"{name.split('.')[-1]}({call.args[0].value!r})"
    if name in LLVM_CALLS and call.args and isinstance(call.args[0], tirx.IntImm):
        return f"{name.split('.')[-1]}({_llvm_name(int(call.args[0].value))!r})"
    return name


def _llvm_name(intrinsic_id: int) -> str:
    from tvm.target import codegen

    return codegen.llvm_get_intrinsic_name(intrinsic_id)


def _call_problem(call: tvm.ir.Call) -> str | None:
    """Why this call is not integer arithmetic, or None."""
    op = call.op
    if not isinstance(op, tvm.ir.Op):
        return None
    if op.name in FLOAT_MATH_OPS:
        return "float math intrinsic"
    if op.name in PTX_MMA_OPS:  # args 3-5: the A, B, C/D element types
        types = [a.value if isinstance(a, tvm.ir.StringImm) else "?" for a in call.args[3:6]]
        return None if all(t in INTEGER_MMA_TYPES for t in types) else f"tensor-core mma on {'/'.join(types)}"
    if op.name in EXTERN_CALLS:
        callee = call.args[0].value if call.args and isinstance(call.args[0], tvm.ir.StringImm) else "?"
        return None if callee in INTEGER_EXTERNS else "external call (not in INTEGER_EXTERNS)"
    if op.name in LLVM_CALLS:
        intrinsic = _llvm_name(int(call.args[0].value)) if call.args and isinstance(call.args[0], tirx.IntImm) else "?"
        return None if intrinsic in INTEGER_LLVM_INTRINSICS else "LLVM intrinsic (not in INTEGER_LLVM_INTRINSICS)"
    return None


def scan_kernel(func: tirx.PrimFunc, kernel: str) -> list[TirFinding]:
    """Every float construct of one PrimFunc, in visiting order, without duplicates."""
    found: dict[TirFinding, None] = {}
    seen: set[int] = set()  # a shared sub-expression is walked once (inlined TE stages share nodes)

    def visit(e):
        handle = e.__chandle__()
        if handle in seen:
            return tvm_ffi.WalkResult.SKIP
        seen.add(handle)
        if isinstance(e, tvm.ir.Call):
            why = _call_problem(e)
            if why is not None:
                found[TirFinding(kernel, f"{_construct(e)}: {why}", _dtype_of(e.ty) or "?")] = None
        if isinstance(e, tirx.PrimFunc):  # the function node itself: its type only repeats the params
            return None
        dtype = _dtype_of(e.ty)
        if dtype is not None and is_float_dtype(dtype):
            found[TirFinding(kernel, _construct(e), dtype)] = None
        return None

    tvm_ffi.structural_walk(func, [(tirx.Expr, visit)], order="pre")
    return list(found)


def kernels_called_by(mod: tvm.IRModule, func_name: str) -> list[tvm.ir.GlobalVar]:
    """PrimFuncs that the Relax function ``func_name`` calls (``call_tir`` or, after the Relax
    pipeline, a direct call), in first-use order."""
    called: dict[str, tvm.ir.GlobalVar] = {}

    def visit(e):
        if isinstance(e, tvm.ir.GlobalVar) and isinstance(mod[e], tirx.PrimFunc):
            called.setdefault(e.name_hint, e)

    relax.analysis.post_order_visit(mod[func_name], visit)
    return list(called.values())


def scan_kernels(mod: tvm.IRModule, func_name: str) -> dict[str, list[TirFinding]]:
    """Kernel name -> its float constructs, for every kernel ``func_name`` calls (clean ones too)."""
    return {gv.name_hint: scan_kernel(mod[gv], gv.name_hint) for gv in kernels_called_by(mod, func_name)}


# --- multiply-free kernels (shift/add primitives, ops/shiftadd.py) ---------------------------

#: ops whose accumulations must not multiply: the shift linear and add attention of ShiftAddViT
MULTIPLY_FREE_OPS = frozenset({"shift_dense_requant", "add_attention"})


class MultiplyInShiftAddKernelError(RuntimeError):
    """A shift/add kernel multiplies inside an accumulation: a bug of this project, not a user error."""


def multiply_sites(func: tirx.PrimFunc) -> list[str]:
    """Multiplies on the data path of every accumulation in ``func``.

    An accumulation is a store whose value reads the element it writes (``acc[i] = acc[i] + ...``:
    a reduction update, the inner loop of a kernel). Its value is walked with buffer indices left
    out -- address arithmetic (``2 * kb + half``) is not a multiply of data. Elementwise stages (the
    per-output requantization) are not accumulations and may multiply."""
    sites: list[str] = []

    def store(node):
        if not isinstance(node, tirx.BufferStore):
            return None
        if not _reads_own_element(node):
            return tvm_ffi.WalkResult.SKIP
        for mul in _data_multiplies(node.value):
            sites.append(f"{node.buffer.name}[...] accumulates {mul}")
        return tvm_ffi.WalkResult.SKIP

    tvm_ffi.structural_walk(func.body, [(tirx.Stmt, store)], order="pre")
    return sites


def _reads_own_element(st: tirx.BufferStore) -> bool:
    found = []

    def visit(e):
        if isinstance(e, tvm.ir.TensorLoad) and e.source.same_as(st.buffer):
            found.append(e)
            return tvm_ffi.WalkResult.SKIP
        return None

    tvm_ffi.structural_walk(st.value, [(tirx.Expr, visit)], order="pre")
    return bool(found)


def _data_multiplies(value) -> list[str]:
    found: list[str] = []

    def visit(e):
        if isinstance(e, tvm.ir.TensorLoad):  # a buffer load: its indices are addresses
            return tvm_ffi.WalkResult.SKIP
        if isinstance(e, tirx.Mul):
            found.append(f"{e.a} * {e.b} ({e.dtype})")
        elif isinstance(e, tvm.ir.Call) and isinstance(e.op, tvm.ir.Op) and _is_multiply_call(e.op.name, e):
            found.append(f"call {_callee(e)}")
        return None

    tvm_ffi.structural_walk(value, [(tirx.Expr, visit)], order="pre")
    return found


def _is_multiply_call(name: str, call) -> bool:
    """Multiply-adds hidden in calls: the integer dot intrinsics, ``tirx.mul``-like helpers."""
    if name in LLVM_CALLS or name in EXTERN_CALLS or name in PTX_MMA_OPS:
        return True  # every accepted intrinsic (INTEGER_LLVM_INTRINSICS, __dp4a, mma.sync) is a multiply-add
    return name in ("tirx.q_multiply_shift", "tirx.q_multiply_shift_per_axis")


def check_multiply_free(mod: tvm.IRModule, origins: dict[str, str], func_name: str = "core") -> int:
    """Every kernel of a :data:`MULTIPLY_FREE_OPS` op that ``func_name`` calls in the lowered
    ``mod`` accumulates without a multiply; returns how many kernels were proven, raises
    :class:`MultiplyInShiftAddKernelError` naming the kernel and the multiply otherwise."""
    proven = 0
    for gv in kernels_called_by(mod, func_name):
        if origins.get(gv.name_hint) not in MULTIPLY_FREE_OPS:
            continue
        sites = multiply_sites(mod[gv])
        if sites:
            raise MultiplyInShiftAddKernelError(f"kernel {gv.name_hint} [{origins[gv.name_hint]}] multiplies inside "
                                                f"an accumulation: {'; '.join(sites[:4])}")
        proven += 1
    return proven
