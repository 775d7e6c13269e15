"""The paired bootstrap the mixed-precision benchmark reports (benchmarks/mixed_precision.py): a
difference the inputs cannot resolve keeps 0 inside its interval, a real one does not, and
resampling whole clusters of correlated inputs widens the interval."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mixed_precision import crop_photos, paired_bootstrap  # noqa: E402


def test_one_hit_in_256_is_not_resolved_and_a_consistent_shift_is():
    rng = np.random.default_rng(0)
    a = (rng.random(256) < 0.86).astype(float)
    b = a.copy()
    flip = rng.choice(256, 23, replace=False)  # 23 discordant inputs, 11 for b and 12 for a
    b[flip[:12]], a[flip[:12]] = 0.0, 1.0
    b[flip[12:]], a[flip[12:]] = 1.0, 0.0
    r = paired_bootstrap(a, b)
    assert r["diff_sum"] == 1.0 and r["discordant"] == 23
    assert r["sum_ci95"][0] < 0 < r["sum_ci95"][1]
    kl_a = rng.gamma(2.0, 0.02, 256)
    shifted = paired_bootstrap(kl_a, kl_a * 1.4)  # B's KL 40 % higher on every input
    assert shifted["mean_ci95"][1] < 0 and shifted["p_diff_ge_0"] == 0.0


def test_clusters_of_correlated_inputs_widen_the_interval():
    clusters = crop_photos(256)
    assert len(np.unique(clusters)) >= 12 and clusters[0] == clusters[len(np.unique(clusters))]
    rng = np.random.default_rng(1)
    per_photo = rng.normal(0, 1, len(np.unique(clusters)))
    d = per_photo[clusters] + rng.normal(0, 0.1, 256)  # each photo's crops move together
    wide = paired_bootstrap(d, np.zeros(256), clusters)
    narrow = paired_bootstrap(d, np.zeros(256))
    assert wide["resampled"].endswith("clusters") and narrow["resampled"] == "256 inputs"
    assert np.diff(wide["mean_ci95"])[0] > 2 * np.diff(narrow["mean_ci95"])[0]
