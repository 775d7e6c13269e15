"""Shift/add primitives (ShiftAddViT) measured: accuracy, host latency and Cortex-M instructions.

1. ``vit``: the digits ViT compiled four ways -- all-int8, shift linears, add attention, both --
   with the labelled accuracy of each against float on the 540 held-out digits, and the host
   latency of each, timed interleaved in one process (medians).
2. ``cortexm``: the ViT's kernels alone in a C package under qemu (Cortex-M4 / M55, the
   instruction-count plugin): each linear shape as an int8 multiply and as a shift linear, and the
   add attention of one encoder block. (The whole ViT per variant on Cortex-M: `compile --target
   qemu-mps2-an386 / qemu-mps3-an547`, figures in docs/transformers.md "Shift/add".)
3. ``scaling``: add attention against softmax attention (``Q Kᵀ`` -> integer softmax -> ``P V``,
   the int8 path's kernels) on the host at sequence lengths 128, 256, 512 (4 heads, d = 32),
   timed interleaved; and add attention's instruction count on Cortex-M4 at the same lengths.

Usage: ``python benchmarks/shiftadd.py [vit] [cortexm] [scaling]`` (all by default); prints JSON.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvm_qplugin.build import build  # noqa: E402
from tvm_qplugin.ops import const, emit  # noqa: E402
from tvm_qplugin.quant import dyadic  # noqa: E402
from tvm_qplugin.quant.pow2 import decode, pack_nibbles, shift_quantize  # noqa: E402

VIT = Path(__file__).resolve().parents[1] / "examples" / "digits_vit.onnx"
VARIANTS = {"int8": {}, "shift": {"shift_linears": "all"}, "add": {"attention": "shiftadd", "shift_linears": "off"},
            "both": {"attention": "shiftadd", "shift_linears": "all"}}
VIT_LINEARS = ((16, 32, 32), (16, 32, 64), (16, 64, 32))  # (tokens, K, N) of q/k/v/o, fc1, fc2
SEQ_LENS = (128, 256, 512)


def vit() -> dict:
    import tvm_qplugin as tq
    from qplugin_zoo import digits_split

    x_train, _, x_test, y_test = digits_split()
    eval_npz = Path(tempfile.mkdtemp(prefix="shiftadd-bench-")) / "digits_eval.npz"
    np.savez(eval_npz, input=x_test, labels=y_test)
    arts, out = {}, {}
    for name, opts in VARIANTS.items():
        art = tq.compile(VIT, calib={"input": x_train[:256]}, eval=str(eval_npz), timing_runs=3, **opts)
        r = art.report
        arts[name] = art
        prims = [layer["primitive"] for layer in r["layers"]]
        out[name] = {"top1_int": r["accuracy"]["top1_int"], "top1_fp32": r["accuracy"]["top1_fp32"],
                     "top1_agreement": round(r["accuracy"]["value"], 4), "integer_only": r["integer_only"],
                     "bit_exact": r["bit_exact"], "multiply_free_kernels": r.get("multiply_free_kernels"),
                     "layers": {p: prims.count(p) for p in sorted(set(prims))}, "weight_bytes": r["size_bytes"]["weights"],
                     "layer_us": _layer_us(r)}
    x = np.zeros((1, 1, 8, 8), np.float32)
    times = {name: [] for name in arts}
    for _ in range(3):                       # warm-up
        for art in arts.values():
            art.run({"input": x})
    for _ in range(200):                     # interleaved: the load hits every variant alike
        for name, art in arts.items():
            t = time.perf_counter()
            art.run({"input": x})
            times[name].append((time.perf_counter() - t) * 1e3)
    for name in arts:
        out[name]["host_ms_median"] = round(float(np.median(times[name])), 4)
    return out


def _layer_us(r: dict) -> dict:
    """Median per-kernel-call time (us) of each primitive kind in one compile's report."""
    per: dict[str, list] = {}
    for layer in r["layers"]:
        if layer.get("latency_us") is not None:
            per.setdefault(f"{layer['op']}:{layer['primitive']}", []).append(layer["latency_us"])
    return {k: round(float(np.median(v)), 2) for k, v in per.items()}


# --- single-op modules ------------------------------------------------------------------------

def _requant(rng, n):
    ds = [dyadic(float(m)) for m in rng.uniform(1 / 4096, 1 / 256, size=n)]
    return np.array([d.multiplier for d in ds], np.int64), np.array([d.shift for d in ds], np.int64)


def linear_module(kind: str, m: int, k: int, n: int, seed: int = 0):
    """``main(x)`` = one int8-input linear (x (m, k) -> int16 (m, n)) as ``dense_requant`` (kind
    "int8") or ``shift_dense_requant`` ("shift") of the same random float weights."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, k))
    bias = rng.integers(-2000, 2000, n).astype(np.int32)
    mult, shift = _requant(rng, n)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([m, k], "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            if kind == "int8":
                wq = np.clip(np.round(w / np.abs(w).max(1, keepdims=True) * 127), -127, 127).astype(np.int8)
                y = emit(bb, "dense_requant", [x, const(wq), const(bias), const(mult), const(shift)],
                         qmin=-32768, qmax=32767, out_dtype="int16")
            else:
                codes, _ = shift_quantize(w)
                assert decode(codes).shape == w.shape
                y = emit(bb, "shift_dense_requant", [x, const(pack_nibbles(codes)), const(bias), const(mult),
                                                     const(shift)], qmin=-32768, qmax=32767, out_dtype="int16")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.finalize(), rng.integers(-128, 128, (m, k)).astype(np.int8)


def attention_module(kind: str, heads: int, n: int, d: int, seed: int = 0):
    """``main(q, kt, v)`` = one attention core on int16 operands: ``add_attention`` ("add") or the
    int8 path's ``matmul_requant`` -> ``softmax_int`` -> ``matmul_requant`` ("softmax")."""
    from tvm_qplugin.quant import nonlinear_consts as nc
    from tvm_qplugin.quant.scheme import NonlinearScheme

    rng = np.random.default_rng(seed)
    shapes = {"q": (1, heads, n, d), "kt": (1, heads, d, n), "v": (1, heads, n, d)}
    bb = relax.BlockBuilder()
    vs = [relax.Var(name, relax.TensorType(list(s), "int16")) for name, s in shapes.items()]
    q, kt, v = vs
    with bb.function("main", vs):
        with bb.dataflow():
            if kind == "add":
                y = emit(bb, "add_attention", [q, kt, v], qmin=-32768, qmax=32767, out_dtype="int16")
            else:
                scheme = NonlinearScheme()
                s_scale = 2.0**-8
                dq = dyadic(2.0**-12 * 2.0**-12 / s_scale, mantissa_bits=15)
                s = emit(bb, "matmul_requant", [q, kt], multiplier=dq.multiplier, shift=dq.shift, qmin=-32768,
                         qmax=32767, out_dtype="int16", acc_bits=64)
                shift_n = nc.choose_softmax_n(s_scale, 16.0, n, scheme.variant)
                p = emit(bb, "softmax_int", [s], in_scale=s_scale, n=shift_n, variant=scheme.variant,
                         exp_poly=scheme.shiftexp_poly, out_dtype=scheme.softmax.dtype)
                dv = dyadic(scheme.softmax.scale)
                y = emit(bb, "matmul_requant", [p, v], multiplier=dv.multiplier, shift=dv.shift, qmin=-32768,
                         qmax=32767, out_dtype="int16", a_row_sum=round(1.0 / scheme.softmax.scale) + (n + 1) // 2)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    args = [rng.integers(-4096, 4096, s).astype(np.int16) for s in shapes.values()]
    return bb.finalize(), args


def _count(mod, args, board: str, work: Path) -> int:
    """Instructions of the single step of ``mod`` on ``board`` (checked bit-exact first)."""
    from tvm_qplugin.export.c_package import write_c_package
    from tvm_qplugin.export.harness import build_mcu, count_instructions, run_qemu
    from tvm_qplugin.reference import ReferenceInterpreter
    from tvm_qplugin.targets import get_board

    write_c_package(mod, work / "pkg")
    b = get_board(board)
    got = run_qemu(build_mcu(work / "pkg", b, work / "build"), [args], work / "run").outputs[0][0]
    want = ReferenceInterpreter(mod).run("main", *args)[0]
    assert np.array_equal(got, want), f"{board}: C package differs from the NumPy reference"
    cost = count_instructions(build_mcu(work / "pkg", b, work / "prof", profile=True), args, work / "count")
    return int(cost["steps"][0]["instructions"])


def cortexm() -> dict:
    out = {}
    for cpu, board in (("cortex-m4", "qemu-mps2-an386"), ("cortex-m55", "qemu-mps3-an547")):
        row = {}
        for m, k, n in VIT_LINEARS:
            for kind in ("int8", "shift"):
                mod, x = linear_module(kind, m, k, n)
                insns = _count(mod, [x], board, Path(tempfile.mkdtemp(prefix="shiftadd-m-")))
                row[f"linear {m}x{k}->{n} {kind}"] = {"instructions": insns, "per_mac": round(insns / (m * k * n), 3)}
        mod, args = attention_module("add", 2, 16, 16)
        row["add attention 2x16x16"] = {"instructions": _count(mod, args, board, Path(tempfile.mkdtemp()))}
        out[cpu] = row
    return out


def scaling() -> dict:
    from tvm_qplugin.targets import get_board

    target = get_board("x86-host").target()
    host = {}
    for n in SEQ_LENS:
        vms, inputs = {}, None
        for kind in ("add", "softmax"):
            mod, args = attention_module(kind, 4, n, 32)
            vms[kind] = relax.VirtualMachine(build(mod, target)[0], tvm.cpu())
            inputs = [tvm.runtime.tensor(a) for a in args]
        times = {k: [] for k in vms}
        for vm in vms.values():
            vm["main"](*inputs)
        for _ in range(15):
            for kind, vm in vms.items():
                t = time.perf_counter()
                vm["main"](*inputs)
                times[kind].append((time.perf_counter() - t) * 1e3)
        host[n] = {k: round(float(np.median(v)), 3) for k, v in times.items()}
    m4 = {}
    for n in SEQ_LENS:
        mod, args = attention_module("add", 1, n, 32)
        m4[n] = _count(mod, args, "qemu-mps2-an386", Path(tempfile.mkdtemp(prefix="shiftadd-s-")))
    return {"host_ms": host, "cortex_m4_add_attention_instructions": m4}


def main(argv: list[str]) -> None:
    parts = argv or ["vit", "cortexm", "scaling"]
    results = {}
    for part in parts:
        results[part] = {"vit": vit, "cortexm": cortexm, "scaling": scaling}[part]()
        print(json.dumps({part: results[part]}, indent=1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
