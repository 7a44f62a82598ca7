"""Patient-level statistics against hand-computed cases, scipy / statsmodels directly, and a
Monte-Carlo check of the power analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.stats import (
    compare_adjacent,
    friedman,
    min_wilcoxon_p,
    paired_bootstrap_ci,
    patient_means,
    power_row,
)


def test_patient_means_by_hand():
    scores = np.array([[1.0, 3.0, 10.0], [2.0, 2.0, 4.0]])
    pm, patients = patient_means(scores, ["b", "b", "a"])
    assert patients == ["a", "b"]
    assert pm.tolist() == [[10.0, 2.0], [4.0, 2.0]]


def test_four_patients_can_never_reach_significance():
    assert min_wilcoxon_p(4) == 0.125
    assert min_wilcoxon_p(23) == pytest.approx(2 / 2**23)
    # method A beats B by 5 dB on every one of 4 patients: still p = 0.125
    pm = np.array([[40.0, 41.0, 42.0, 43.0], [35.0, 36.2, 37.1, 38.3]])
    (c,) = compare_adjacent(pm, ["A", "B"], higher_is_better=True)
    assert c.better == "A" and c.p == pytest.approx(0.125) and not c.significant
    row = power_row(pm[0] - pm[1], "A", "B")
    assert math.isnan(row.detectable_diff) and row.min_p == 0.125


def test_adjacent_pairs_match_scipy_and_holm_by_hand():
    rng = np.random.default_rng(0)
    base = rng.normal(35, 2, 23)
    pm = np.stack([base + 2.0 + rng.normal(0, 0.5, 23), base + 0.1 + rng.normal(0, 0.5, 23),
                   base])
    pairs = compare_adjacent(pm, ["lga", "li", "identity"], higher_is_better=True)
    assert [(c.better, c.worse) for c in pairs] == [("lga", "li"), ("li", "identity")]
    p1 = sps.wilcoxon(pm[0] - pm[1]).pvalue
    p2 = sps.wilcoxon(pm[1] - pm[2]).pvalue
    assert pairs[0].p == pytest.approx(p1) and pairs[1].p == pytest.approx(p2)
    # Holm for two tests: the smaller p times 2, the larger at least that, both capped at 1
    lo, hi = sorted([p1, p2])
    want = {lo: min(1, 2 * lo), hi: min(1, max(2 * lo, hi))}
    assert pairs[0].p_holm == pytest.approx(want[p1])
    assert pairs[1].p_holm == pytest.approx(want[p2])
    assert pairs[0].significant  # a consistent 1.9 dB lead over 23 patients
    assert pairs[0].ci[0] < pairs[0].mean_diff < pairs[0].ci[1]
    fr = friedman(pm)
    want_fr = sps.friedmanchisquare(*pm)
    assert fr == pytest.approx((want_fr.statistic, want_fr.pvalue))


def test_bootstrap_interval_of_constant_differences_is_a_point():
    assert paired_bootstrap_ci(np.full(10, 0.7)) == pytest.approx((0.7, 0.7))


def test_detectable_difference_has_the_stated_power_monte_carlo():
    """Draw per-patient differences of the detectable size from a normal with the observed SD
    and run the Wilcoxon test: it rejects in about 80 % of the draws."""
    rng = np.random.default_rng(1)
    observed = rng.normal(0.3, 1.2, 23)
    row = power_row(observed, "a", "b", alpha=0.05, power=0.8)
    assert math.isfinite(row.detectable_diff)
    sd = np.std(observed, ddof=1)
    trials = 1500
    hits = sum(sps.wilcoxon(rng.normal(row.detectable_diff, sd, 23)).pvalue < 0.05
               for _ in range(trials))
    assert abs(hits / trials - 0.8) < 0.05
    # and the patients needed for 0.5 dB: at that n the test has about 80 % power
    n = row.patients_needed
    assert n is not None and n >= 6
    hits = sum(sps.wilcoxon(rng.normal(0.5, sd, n)).pvalue < 0.05 for _ in range(trials))
    assert abs(hits / trials - 0.8) < 0.05


def test_bootstrap_interval_does_not_depend_on_the_patients_order() -> None:
    # Each build pseudonymises patients anew, which reorders them: the same per-patient
    # differences in another order must give the same interval.
    d = np.random.default_rng(3).normal(1.0, 0.8, size=23)
    ref = paired_bootstrap_ci(d)
    for k in range(3):
        assert paired_bootstrap_ci(np.random.default_rng(k).permutation(d)) == ref
    assert ref[0] < d.mean() < ref[1]
