"""Mixed precision on real models: sensitivity ranking, ILP plans under size budgets, time per stage.

For the digits CNN and ViT (labelled accuracy on the held-out split) and MobileNetV2 (top-1 agreement with
fp32 on real photo crops): HAWQ-V2 Hessian traces (their spread and probe count), ZeroQ's direct
measure, the rank correlation of the two, then the ILP (weights 4/8 bits, activations held at 8,
so that every plan is compared at the same activation width) under 3 size budgets -- the midway
one between uniform int4 and int8 against 20 random assignments of at most the same size.
Accuracy is simulated in float (mixed/simulate.py) to rank plans; ``--compile N`` then compiles
for real (x86 host, integer-only, bit-exact checked) the midway plans of every method, the N best
random ones by simulation and uniform int4, and measures them on the evaluation data (MobileNetV2:
agreement with fp32 on all the real crops, as tests/test_mobilenet_v2.py).

``--distill``: data-free calibration (ZeroQ) of MobileNetV2 from an export that keeps its
batch-norms (the cached fixture has them folded), then a real int8 compile calibrated on the
distilled inputs, evaluated on the real crops (compare with real-data calibration's agreement).

Prints one JSON object. Run: `.venv/bin/python benchmarks/mixed_precision.py [--model digits|digits_vit|mobilenet_v2]
[--compile N] [--distill [--samples N --iterations N --fine-iterations N --coarse K --observer NAME]]`
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tvm_qplugin.mixed.distill import COARSE, DEFAULT_ITERATIONS, DISTILL_OBSERVER, FINE_ITERATIONS
from tvm_qplugin.mixed.ilp import pareto_front, solve
from tvm_qplugin.mixed.plan import METHODS, build_problem, int4_moments, plan_model, random_plans
from tvm_qplugin.mixed.sensitivity import sensitivity
from tvm_qplugin.mixed.simulate import simulated_outputs, top1
from tvm_qplugin.mixed.torch_graph import load_torch_graph


# MobileNetV2's sensitivity settings: 8 crops in the loss; at most 1 536 HVPs -- the two-phase
# estimator stops once its top layers' traces are within 10 % (about 800 HVPs, stop 24)
MOBILENET_V2_SETTINGS = {"samples": 8, "probes": 1536}


def load(model: str, eval_count: int = 128):
    """(onnx path, calibration inputs, calibration labels or None, eval inputs, eval reference, settings)."""
    if model.startswith("digits"):
        from qplugin_zoo.digits import digits_cnn_onnx, digits_split

        xtr, ytr, xte, yte = digits_split()
        path = digits_cnn_onnx() if model == "digits" else os.path.join(ROOT, "examples", "digits_vit.onnx")
        return path, {"input": xtr}, ytr, {"input": xte}, yte, {"samples": 64, "probes": 1024}
    from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx

    calib, evaluation = imagenet_calib_eval()
    return mobilenet_v2_onnx(), {"input": calib}, None, {"input": evaluation[:eval_count]}, None, MOBILENET_V2_SETTINGS


def compiled_figures(model: str, path: str, calib: dict, jobs: dict) -> dict:
    """Real x86 compiles of ``jobs`` (name -> compile options): agreement with fp32 on every real
    crop (MobileNetV2) or labelled accuracy on the held-out digits, the mean KL to fp32 on the same
    inputs (finer than one crop or digit), weight bytes, bit-exactness."""
    import tvm_qplugin as tq

    if model.startswith("digits"):
        import tempfile

        from qplugin_zoo.digits import digits_split

        _, _, xte, yte = digits_split()
        evaluation = os.path.join(tempfile.mkdtemp(), "eval.npz")  # labels travel in the .npz
        np.savez(evaluation, input=xte, labels=yte)
        key = "top1_int"
    else:
        from qplugin_zoo import imagenet_calib_eval

        evaluation, key = {"input": imagenet_calib_eval()[1]}, "value"
    out, per_sample = {}, {}
    for name, options in jobs.items():
        t = time.perf_counter()
        art = tq.compile(path, target="x86-host", calib=calib, eval=evaluation, **options)
        r = art.report
        x = xte if model.startswith("digits") else evaluation["input"]
        kl, hit = per_sample_figures(path, art, x, yte if model.startswith("digits") else None)
        per_sample[name] = (hit, kl)
        out[name] = {"acc": r["accuracy"].get(key), "inputs": r["accuracy"].get("inputs"),
                     "kl_to_fp32": round(float(kl.mean()), 6),
                     "weights_bytes": r["size_bytes"]["weights"], "bit_exact": r["bit_exact"],
                     "integer_only": r["integer_only"], "compile_s": round(time.perf_counter() - t, 1)}
        print(name, out[name], file=sys.stderr, flush=True)
    out["per_sample"] = per_sample  # (hits, KL) per evaluation input: for paired_bootstrap; not printed
    return out


def per_sample_figures(path: str, art, x: np.ndarray, labels=None, chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per input of ``x``: KL(fp32 || integer build) of the output distributions (the finer measure
    of the same inputs, where one digit is 0.19 point of accuracy and one MobileNetV2 crop 0.39
    point) and whether the build's top-1 is right (``labels``) or agrees with fp32's."""
    import torch

    from tvm_qplugin.mixed.torch_graph import load_torch_graph

    def log_softmax(z):
        z = np.asarray(z, dtype=np.float64) - np.max(z, axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    g = load_torch_graph(path)
    with torch.no_grad():
        ref = log_softmax(np.concatenate([g.run({"input": x[i:i + chunk]})[0].numpy() for i in range(0, len(x), chunk)]))
    got = log_softmax(np.concatenate([art.run({"input": x[i:i + 1]})[0] for i in range(len(x))]))
    want = ref.argmax(axis=1) if labels is None else np.asarray(labels)
    return (np.exp(ref) * (ref - got)).sum(axis=1), got.argmax(axis=1) == want


def kl_to_fp32(path: str, art, x: np.ndarray, chunk: int = 32) -> float:
    """Mean KL(fp32 || integer build) on ``x`` (:func:`per_sample_figures`)."""
    return round(float(per_sample_figures(path, art, x, chunk=chunk)[0].mean()), 6)


def crop_photos(count: int) -> np.ndarray:
    """The photo each of the first ``count`` ImageNet crops comes from (qplugin_zoo.images: crop
    ``i`` from photo ``i % len(real_photos())``): the clusters of :func:`paired_bootstrap`."""
    from qplugin_zoo import real_photos

    return np.arange(count) % len(real_photos())


def paired_bootstrap(a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None, draws: int = 10000,
                     seed: int = 0) -> dict:
    """Does plan A's per-input figure ``a`` (hits, or KL) differ from plan B's ``b`` on the same
    inputs by more than the inputs resolve? The difference (sum and mean) with 95 % percentile
    intervals, resampling inputs -- or whole ``clusters``: the MobileNetV2 crops come from 15
    photos (crop ``i`` from photo ``i % 15``), and crops of one photo are not independent, so
    resampling crops alone would overstate what 256 of them resolve."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    ids = np.arange(len(d)) if clusters is None else np.asarray(clusters)
    keys = np.unique(ids)
    sums = np.array([d[ids == k].sum() for k in keys])
    sizes = np.array([(ids == k).sum() for k in keys])
    pick = np.random.default_rng(seed).integers(0, len(keys), (draws, len(keys)))
    total, count = sums[pick].sum(axis=1), sizes[pick].sum(axis=1)
    means = total / count
    return {"diff_sum": float(d.sum()), "diff_mean": float(d.mean()), "discordant": int((d != 0).sum()),
            "sum_ci95": [float(np.percentile(total, 2.5)), float(np.percentile(total, 97.5))],
            "mean_ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "p_diff_le_0": float(np.mean(means <= 0)), "p_diff_ge_0": float(np.mean(means >= 0)),
            "resampled": f"{len(keys)} {'inputs' if clusters is None else 'clusters'}"}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation, ties at their mean rank (the layers whose Omega is 0 tie)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def mobilenet_v2_with_batchnorms() -> str:
    """MobileNetV2 exported with its BatchNormalization nodes kept (cached): the dynamo exporter
    without its optimizer (which folds BN into the convs), then constant folding only."""
    from qplugin_zoo.cache import atomic_path, cache_dir

    path = cache_dir() / "mobilenet_v2_224_b1_bn.onnx"
    if path.is_file():
        return str(path)
    import onnx
    import onnx_ir as ir
    import torch
    from onnxscript import optimizer
    from qplugin_zoo.mobilenet_v2 import _build_model, mobilenet_v2_weights_path

    model = _build_model()
    model.load_state_dict(torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True))
    model.eval()
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(tmp), input_names=["input"],
                          output_names=["logits"], opset_version=18, dynamo=True, external_data=False, optimize=False)
        m = ir.serde.deserialize_model(onnx.load(str(tmp)))
        optimizer.fold_constants(m)
        optimizer.remove_unused_nodes(m)
        onnx.save(ir.serde.serialize_model(m), str(tmp))
    return str(path)


def distill_benchmark(samples: int, iterations: int, fine_iterations: int, coarse: int, observer: str) -> dict:
    """ZeroQ on MobileNetV2: distil, compile int8 on the distilled inputs, agreement on real crops."""
    import tvm_qplugin as tq
    from qplugin_zoo import imagenet_calib_eval
    from qplugin_zoo.images import IMAGENET_MEAN, IMAGENET_STD
    from tvm_qplugin.data import Preprocess
    from tvm_qplugin.mixed.distill import distill

    t = time.perf_counter()
    path = mobilenet_v2_with_batchnorms()
    export_s = time.perf_counter() - t
    pre = Preprocess(mean=tuple(IMAGENET_MEAN.tolist()), std=tuple(IMAGENET_STD.tolist()))
    box = (*pre.value_range(), "NCHW")  # what --mean/--std give the CLI
    d = distill(path, samples=samples, iterations=iterations, fine_iterations=fine_iterations, coarse=coarse,
                input_box=box)
    _, evaluation = imagenet_calib_eval()
    t = time.perf_counter()
    art = tq.compile(path, target="x86-host", calib=d.arrays, eval={"input": evaluation},
                     observer=observer)
    acc = art.report["accuracy"]
    return {"model": "mobilenet_v2 (batch-norms kept)", "samples": samples, "iterations": iterations,
            "fine_iterations": d.fine_iterations, "coarse_shape": d.coarse_shape, "observer": observer,
            "distill_s": round(d.seconds, 1), "distill_cpu_s": round(d.cpu_seconds, 1),
            "load_average_1min": os.getloadavg()[0], "bn_loss": [round(d.bn_loss_start, 4), round(d.bn_loss_end, 4)],
            "export_s": round(export_s, 1), "compile_s": round(time.perf_counter() - t, 1),
            "bit_exact": art.report["bit_exact"], "top1_agreement": acc.get("value"),
            "top1_agreement_confident": acc.get("top1_agreement_confident"), "eval_inputs": acc.get("inputs")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits", choices=["digits", "digits_vit", "mobilenet_v2"])
    ap.add_argument("--random", type=int, default=20)
    ap.add_argument("--eval-count", type=int, default=128, help="MobileNetV2 crops evaluated per plan")
    ap.add_argument("--budgets", default="25%,midway,75%", help="which size budgets to plan for")
    ap.add_argument("--compile", type=int, default=0, metavar="N",
                    help="compile the midway plans, the N best random ones (by simulation) and int4 for real")
    ap.add_argument("--uniform", default="yes", choices=["yes", "no", "only"],
                    help="with --compile: compile uniform int4 and int8 too (yes), not (no), or only them")
    ap.add_argument("--refine", action="store_true",
                    help="the auto plan with plan_model(refine=True): measured swaps around the ILP's plan")
    ap.add_argument("--distill", action="store_true")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    ap.add_argument("--fine-iterations", type=int, default=FINE_ITERATIONS)
    ap.add_argument("--coarse", type=int, default=COARSE, help="1: every step at the model's size")
    ap.add_argument("--observer", default=DISTILL_OBSERVER, help="the calibration observer of the distilled inputs")
    args = ap.parse_args()
    if args.distill:
        print(json.dumps(distill_benchmark(args.samples, args.iterations, args.fine_iterations, args.coarse,
                                            args.observer), indent=1))
        return
    t0 = time.perf_counter()
    path, calib, labels, evaluation, reference, settings = load(args.model, args.eval_count)
    if args.uniform == "only":  # needs no sensitivity: run it beside the planning run
        compiled = compiled_figures(args.model, path, calib, {"int4": {"precision": "int4"}, "int8": {"precision": "int8"}})
        compiled.pop("per_sample")
        print(json.dumps({"model": args.model, "compiled": compiled}, indent=1))
        return
    g = load_torch_graph(path)
    if reference is None:  # agreement with fp32
        reference = simulated_outputs(g, {}, {}, evaluation)
    timing = {"load": time.perf_counter() - t0}
    t = time.perf_counter()
    sens = sensitivity(path, calib, labels, **settings)
    timing["sensitivity (cached after the first run)"] = time.perf_counter() - t
    names = [layer["name"] for layer in sens.layers]
    problem = build_problem(sens, g.model).restricted(a_bits=(8,))
    u8, u4 = problem.uniform(8, 8)["size"], problem.uniform(4, 8)["size"]
    mid = (u8 + u4) / 2
    moments = int4_moments(g, calib, sens, [{n: (4, 8) for n in names}])  # int4 as the compiler rounds it
    acc = lambda bits: top1(simulated_outputs(g, bits, sens.act_range, evaluation, moments=moments), reference)  # noqa: E731
    out = {"model": args.model, "layers": len(names), "probes_used": sens.probes, "samples": sens.samples,
           "sensitivity_timing_s": sens.timing_s,
           "spread_top_layers": {n: round(sens.trace_w_spread[n], 3) for n in sens.top_layers},
           "probes_per_top_layer": {n: sens.probes_per_layer[n] for n in sens.top_layers},
           "spread_median_all": round(float(np.median(list(sens.trace_w_spread.values()))), 3),
           "spearman_omega4_vs_direct4": round(spearman([sens.omega_w[n]["4"] for n in names],
                                                        [sens.direct_w[n]["4"] for n in names]), 3),
           "spearman_omega4_vs_direct4_top_layers": round(spearman([sens.omega_w[n]["4"] for n in sens.top_layers],
                                                                   [sens.direct_w[n]["4"] for n in sens.top_layers]), 3),
           "ranking_omega4": sorted(names, key=lambda n: -sens.omega_w[n]["4"])[:8],
           "ranking_direct4": sorted(names, key=lambda n: -sens.direct_w[n]["4"])[:8],
           "uniform": {"int8": {"size": u8, "acc": acc({n: (8, 8) for n in names})},
                       "int4": {"size": u4, "acc": acc({n: (4, 8) for n in names})}},
           "plans": {}}
    budgets = {"25%": u4 + 0.25 * (u8 - u4), "midway": mid, "75%": u4 + 0.75 * (u8 - u4)}
    plans = {}
    for label in args.budgets.split(","):
        size = budgets[label]
        for method in ("hessian", "direct") if label == "midway" else ("hessian",):
            p = build_problem(sens, g.model, method).restricted(a_bits=(8,))
            t = time.perf_counter()
            plan = solve(p, {"size": size})
            plans[f"{label}/{method}"] = plan.bits
            out["plans"][f"{label}/{method}"] = {"size_budget": round(size), "size": plan.totals["size"],
                                                 "solve_s": round(time.perf_counter() - t, 4),
                                                 "int4_layers": sum(w == 4 for w, _ in plan.bits.values()),
                                                 "acc": acc(plan.bits)}
    if "midway" in budgets and "midway" in args.budgets:
        auto = plan_model(path, calib, f"size={int(mid)}B", labels, method="auto", a_bits=(8,), refine=args.refine,
                          **settings)[0]
        chosen = next((m for m in METHODS if plans[f"midway/{m}"] == auto.bits), None)  # None: the refinement moved
        out["plans"]["midway/auto"] = {
            "chosen": chosen or "refined", "refinement": auto.refinement, "size": auto.totals["size"],
            "int4_layers": sum(w == 4 for w, _ in auto.bits.values()), "acc": acc(auto.bits)}
        plans["midway/auto"] = auto.bits
    rand_plans = random_plans(problem, mid, args.random)
    rand = [acc(bits) for bits in rand_plans]
    out["random_midway"] = {"count": len(rand), "best": max(rand), "median": float(np.median(rand)),
                            "worst": min(rand)}
    if args.compile:
        best = list(np.argsort(rand)[::-1][: args.compile])
        jobs = {k: {"precision": "mixed", "layer_bits": v} for k, v in plans.items()  # auto's: when it is its own
                if k.startswith("midway/") and (k != "midway/auto" or out["plans"][k]["chosen"] == "refined")}
        jobs.update({f"random{i}": {"precision": "mixed", "layer_bits": rand_plans[i]} for i in best})
        if args.uniform == "yes":
            jobs["int4"], jobs["int8"] = {"precision": "int4"}, {"precision": "int8"}
        out["compiled"] = compiled_figures(args.model, path, calib, jobs)
        per_sample = out["compiled"].pop("per_sample")
        auto = out["plans"].get("midway/auto", {}).get("chosen")
        if auto is not None and auto != "refined":
            out["compiled"]["midway/auto"] = out["compiled"][f"midway/{auto}"]
            per_sample["midway/auto"] = per_sample[f"midway/{auto}"]
        if "midway/auto" in per_sample:  # the product's plan vs each compiled random one, same inputs
            clusters = None if args.model.startswith("digits") else crop_photos(len(per_sample["midway/auto"][0]))
            out["auto_vs_random"] = {k: {what: paired_bootstrap(per_sample["midway/auto"][i], v[i], clusters)
                                         for i, what in enumerate(("top1", "kl_to_fp32"))}
                                     for k, v in per_sample.items() if k.startswith("random")}
    t = time.perf_counter()
    front = pareto_front(build_problem(sens, g.model), list(np.linspace(u4, u8, 9)))
    out["pareto_9_sizes_s"] = round(time.perf_counter() - t, 3)
    out["timing_s"] = {k: round(v, 2) for k, v in timing.items()}
    out["total_s"] = round(time.perf_counter() - t0, 1)
    out["front_points"] = len(front)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
