"""MobileNetV2's hot groups-1 convs (pointwise and the KxK stem) and its dense layer, kernel by
kernel: the plain schedule rules (before) against the prepacked, tensorized kernels of
schedules/x86_int8.py (after), for the native target and the AVX2-restricted one, with each
kernel's GMAC/s against this CPU's measured int8 peak (benchmarks/int8_peak.py).

``--baseline OLD_x86_int8.py`` (a saved copy of an earlier schedules/x86_int8.py, e.g. from
``git show REV:tvm_qplugin/schedules/x86_int8.py``) makes "before" that version's tensorized
kernels instead of the plain rules: a before/after of a change to the tensorized rules.

One process, before/after interleaved, medians; every "after" output is checked bit-exactly
against "before" first. Prints one JSON object (``total_us``: the listed convs' time per
inference, calls counted).

Run: `.venv/bin/python benchmarks/x86_kernels.py [--module integer_module.json] [--top 8]
[--baseline FILE]` (without --module, MobileNetV2 is compiled first, ~2 minutes; --top 0: all).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np
import tvm
from tvm import relax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from int8_peak import _cpu_name, peak_gmacs

from tvm_qplugin.ops import op_of
from tvm_qplugin.schedules import RULES
from tvm_qplugin.schedules.intrin_x86 import ISA_BY_NAME, select_isa
from tvm_qplugin.schedules.packing import packed_info

OPS = ("conv2d_requant", "dense_requant")


def integer_module(path: str | None) -> tvm.IRModule:
    if path:
        with open(path) as f:
            return tvm.ir.load_json(f.read())
    import tvm_qplugin as tq
    from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx

    calib, evaluation = imagenet_calib_eval()
    art = tq.compile(str(mobilenet_v2_onnx()), target="x86-host", calib={"input": calib[:8]},
                     eval={"input": evaluation[:16]})
    return art.integer_mod


def kernels(mod: tvm.IRModule) -> list[dict]:
    """Every conv/dense kernel of the integer function: its PrimFunc, one call's constants, MACs."""
    func = mod["core"] if "core" in [gv.name_hint for gv in mod.functions] else mod["main"]
    found: dict[str, dict] = {}
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if not (isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir"):
                continue
            prim = mod[v.args[0]]
            described = op_of(prim)
            if described is None or described[0] not in OPS:
                continue
            args = v.args[1].fields
            x_shape, x_dtype = tuple(int(d) for d in args[0].ty.shape), str(args[0].ty.dtype.dtype)
            consts = [a.value.numpy() for a in args[1:]]
            out = tuple(int(d) for d in b.var.ty.shape)
            w = consts[0]
            macs = int(np.prod(out)) * int(np.prod(w.shape[1:]))
            entry = found.setdefault(v.args[0].name_hint, {"name": v.args[0].name_hint, "func": prim, "op": described[0],
                                                           "params": described[1], "x": (x_shape, x_dtype),
                                                           "consts": consts, "out": out, "macs": macs, "calls": 0})
            entry["calls"] += 1
    return list(found.values())


def _plain(func, target):
    for rule in RULES:
        if not hasattr(rule, "pack"):
            new = rule.apply(func, target)
            if new is not None:
                return new
    return func


def _baseline_rules(path: str) -> list:
    """The packer rules of a saved copy of schedules/x86_int8.py (imported inside the package, so
    that its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location("tvm_qplugin.schedules._baseline_x86_int8", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [module.Conv2DTensorized(), module.DenseTensorized()]


def _tensorized(func, target, consts, rules=RULES):
    """The scheduled packed kernel and its packing for one call's constants ``consts`` (a packing
    chosen per call, e.g. AVX2's vpmaddubsw when the weights allow it, resolved as compile does)."""
    for rule in rules:
        if hasattr(rule, "pack"):
            packing = rule.pack(func, target)
            if packing is not None and getattr(packing, "for_calls", None) is not None:
                packing = packing.for_calls([[consts[i - 1] for i in packing.const_args]])
            if packing is not None:
                return rule.apply(packing.func, target), packing
    return None, None


def _build(func, target):
    return tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)["main"]


def _call_args(k: dict, x, packing) -> list:
    """The kernel's arguments: ``x``, then its constants (packed as ``packing`` packs them)."""
    consts = k["consts"]
    if packing is not None:
        packed = packing.pack_args([consts[i - 1] for i in packing.const_args])
        first, last = packing.const_args[0] - 1, packing.const_args[-1] - 1
        consts = [*consts[:first], *packed, *consts[last + 1:]]
    return [x, *[tvm.runtime.tensor(c) for c in consts]]


def time_pair(k: dict, target, rounds: int, rng, baseline=None) -> dict | None:
    """Median microseconds of the plain (or ``baseline`` rules') and the tensorized kernel, interleaved."""
    after, packing = _tensorized(k["func"], target, k["consts"])
    if after is None:
        return None
    shape, dtype = k["x"]
    info = np.iinfo(dtype)
    x = tvm.runtime.tensor(rng.integers(info.min, info.max + 1, shape).astype(dtype))
    out_dtype = k["params"]["out_dtype"]
    before, before_packing = (_plain(k["func"], target), None) if baseline is None else \
        _tensorized(k["func"], target, k["consts"], baseline)
    if before is None:
        return None
    plain_args, packed_args = _call_args(k, x, before_packing), _call_args(k, x, packing)
    outs = [tvm.runtime.tensor(np.zeros(k["out"], out_dtype)) for _ in range(2)]
    fns = [_build(before, target), _build(after, target)]
    fns[0](*plain_args, outs[0])
    fns[1](*packed_args, outs[1])
    assert np.array_equal(outs[0].numpy(), outs[1].numpy()), f"{k['name']}: tensorized kernel differs"
    times = [[], []]
    for _ in range(rounds):
        for which, (fn, args) in enumerate(((fns[0], plain_args), (fns[1], packed_args))):
            for call in range(12):  # per call; the first two after a switch warm the caches up
                t = time.perf_counter()
                fn(*args, outs[which])
                if call >= 2:
                    times[which].append(time.perf_counter() - t)
    isa = packed_info(packing.func)["isa"]
    return {"before_us": float(np.median(times[0]) * 1e6), "after_us": float(np.median(times[1]) * 1e6), "isa": isa}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", help="integer_module.json of MobileNetV2 (else compiled here)")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--baseline", help="a saved copy of an earlier schedules/x86_int8.py: its tensorized kernels are 'before'")
    ap.add_argument("--isa", choices=("all", "native", "avx2"), default="all", help="the targets to time")
    args = ap.parse_args()
    baseline = _baseline_rules(args.baseline) if args.baseline else None
    mod = integer_module(args.module)
    ks = sorted(kernels(mod), key=lambda k: -k["macs"] * k["calls"])
    convs = [k for k in ks if k["op"] == "conv2d_requant" and k["params"]["groups"] == 1][: args.top or None]
    dense = [k for k in ks if k["op"] == "dense_requant"][:1]
    threads = os.cpu_count()
    targets = {"native": tvm.target.Target.from_device(tvm.cpu()),
               "avx2": tvm.target.Target({"kind": "llvm", "mcpu": "znver3", "mattr": ["-sse4a"]})}
    targets = {name: t for name, t in targets.items() if args.isa in ("all", name)}
    rng = np.random.default_rng(0)
    res = {"cpu": _cpu_name(), "threads": threads, "targets": {}}
    for tname, target in targets.items():
        isa8 = select_isa(target, "uint8")
        peaks = {}  # per instruction the kernels run (AVX2: vpmaddubsw where the weights allow, else vpmaddwd)
        rows = []
        for k in convs + dense:
            t = time_pair(k, target, args.rounds, rng, baseline)
            if t is None:
                continue
            isa = ISA_BY_NAME[t["isa"]]
            if isa.name not in peaks:
                peaks[isa.name] = peak_gmacs(target, isa, threads)
            peak = peaks[isa.name]
            rows.append({"kernel": k["name"], "x": list(k["x"][0]), "x_dtype": k["x"][1], "w": list(k["consts"][0].shape),
                         "calls": k["calls"], "isa": isa.name, "before_us": round(t["before_us"], 1),
                         "after_us": round(t["after_us"], 1),
                         "before_gmacs": round(k["macs"] / t["before_us"] / 1e3, 1),
                         "after_gmacs": round(k["macs"] / t["after_us"] / 1e3, 1),
                         "after_fraction_of_peak": round(k["macs"] / t["after_us"] / 1e3 / peak, 3)})
        res["targets"][tname] = {"mcpu": str(target.attrs.get("mcpu", "")), "isa_8bit": isa8.name,
                                 "peak_gmacs": {name: round(v, 1) for name, v in peaks.items()}, "kernels": rows,
                                 "total_us": {w: round(sum(r[f"{w}_us"] * r["calls"] for r in rows), 1)
                                              for w in ("before", "after")}}
    res["note"] = ("medians of interleaved runs, all threads; the machine is shared and noisy (other jobs), so "
                   "absolute figures move between runs; before = " + ("the baseline file's tensorized kernels" if baseline else
                   "plain schedule rules") + ", after = prepacked + tensorized")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
