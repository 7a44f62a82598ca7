"""Significance code against scipy / statsmodels and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from leaderboard.significance import bootstrap_weights, compare_methods, patient_means

# 3 methods x 8 patients, one slice each: hand-checkable paired data.
A = np.array([31.0, 29.5, 33.2, 30.1, 28.7, 32.4, 30.9, 29.8])
B = A - np.array([0.9, 1.4, 0.2, 1.1, 0.6, 1.7, 0.3, 0.8])   # B < A on every patient
C = A - np.array([2.1, 1.3, 2.6, 0.5, 3.2, 1.9, 2.4, 1.2])
GROUPS = np.array([f"P{i}" for i in range(8)])


def test_adjacent_wilcoxon_and_holm_match_scipy_and_hand():
    s = compare_methods(np.stack([C, A, B]), GROUPS, ["c", "a", "b"], higher_is_better=True,
                        n_resamples=500)
    assert [s.methods[i] for i in s.order()] == ["a", "b", "c"]
    assert list(s.rank) == [3, 1, 2]
    ab, bc = s.adjacent
    assert (ab.better, ab.worse, bc.better, bc.worse) == ("a", "b", "b", "c")
    ref_ab, ref_bc = stats.wilcoxon(A, B), stats.wilcoxon(B, C)
    assert ab.p == pytest.approx(ref_ab.pvalue, rel=1e-12)
    assert bc.p == pytest.approx(ref_bc.pvalue, rel=1e-12)
    assert ab.statistic == ref_ab.statistic
    # All 8 differences A - B are positive: exact two-sided p = 2 / 2^8.
    assert ab.p == pytest.approx(2 / 256)
    # Holm over 2 tests: the smaller p times 2, the larger times 1 (but not below the first).
    p1, p2 = sorted([ab.p, bc.p])
    holm = {p1: min(1, 2 * p1), p2: min(1, max(2 * p1, p2))}
    assert ab.p_holm == pytest.approx(holm[ab.p])
    assert bc.p_holm == pytest.approx(holm[bc.p])


def test_friedman_matches_scipy_and_the_textbook_formula():
    x = np.stack([A, B, C])
    s = compare_methods(x, GROUPS, ["a", "b", "c"], higher_is_better=True, n_resamples=200)
    ref = stats.friedmanchisquare(A, B, C)
    assert s.friedman_statistic == pytest.approx(ref.statistic)
    assert s.friedman_p == pytest.approx(ref.pvalue)
    # Per patient the order is a > b > c except patients 1 and 3, where c loses less than b
    # (1.3 < 1.4, 0.5 < 1.1): rank sums R_a = 8, R_b = 8*2 + 2 = 18, R_c = 8*3 - 2 = 22,
    # chi2 = 12 / (8*3*4) * (64 + 324 + 484) - 3*8*4 = 13.
    n, k = 8, 3
    r = np.array([8, 18, 22])
    chi2 = 12 / (n * k * (k + 1)) * (r ** 2).sum() - 3 * n * (k + 1)
    assert s.friedman_statistic == pytest.approx(chi2) == 13.0
    assert s.avg_ranks == pytest.approx(r / n)
    assert s.nemenyi_p.shape == (3, 3)
    assert np.allclose(s.nemenyi_p, s.nemenyi_p.T)


def test_lower_is_better_reverses_ranks():
    s = compare_methods(np.stack([A, B, C]), GROUPS, ["a", "b", "c"], higher_is_better=False,
                        n_resamples=200)
    assert list(s.rank) == [3, 2, 1]
    assert s.avg_ranks[2] < s.avg_ranks[0]


def test_ci_of_a_method_against_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(30, 2, size=(1, 40))
    groups = np.repeat([f"P{i}" for i in range(10)], 4)
    for unit in ("patient", "slice", "two-stage"):
        s = compare_methods(np.concatenate([x, x, x + 1]), groups, ["m", "m-copy", "m+1"],
                            higher_is_better=True, n_resamples=300, unit=unit)
        assert np.array_equal(s.diff_ci[0, 1], [0.0, 0.0])
        assert np.array_equal(s.diff_ci[0, 0], [0.0, 0.0])
        # A constant shift of 1 on every slice: the difference is 1 in every replicate.
        assert s.diff_ci[2, 0] == pytest.approx([1.0, 1.0], abs=1e-9)
        assert s.adjacent[-1].p == 1.0 or s.adjacent[0].p == 1.0  # identical pair


def test_slice_bootstrap_ci_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 1.5, size=60)
    groups = np.arange(60).astype(str)
    s = compare_methods(x[None], groups, ["m"], higher_is_better=True, n_resamples=20000,
                        unit="slice", seed=3)
    ref = stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                          random_state=np.random.default_rng(4)).confidence_interval
    # Two independent Monte Carlo estimates of the same percentiles.
    assert s.ci[0, 0] == pytest.approx(ref.low, abs=0.05)
    assert s.ci[0, 1] == pytest.approx(ref.high, abs=0.05)
    assert s.ci[0, 0] < x.mean() < s.ci[0, 1]


def test_patient_bootstrap_keeps_patients_together():
    groups = np.array(["a", "a", "a", "b", "b", "c"])
    w = bootstrap_weights(groups, 500, np.random.default_rng(0), "patient")
    assert w.shape == (500, 6)
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 1] == w[:, 2])
    assert np.all(w[:, 3] == w[:, 4])
    # 3 patients drawn per replicate: total patient draws = 3.
    assert np.all(w[:, [0, 3, 5]].sum(axis=1) == 3)
    w2 = bootstrap_weights(groups, 500, np.random.default_rng(0), "two-stage")
    # Each drawn patient contributes as many slice draws as it has slices.
    drawn = w[:, [0, 3, 5]]  # same seed: same patient draws
    assert np.all(w2.sum(axis=1) == drawn @ np.array([3, 2, 1]))


def test_rank_ranges_and_cis_reflect_separation():
    groups = np.repeat([f"P{i}" for i in range(6)], 3)
    rng = np.random.default_rng(2)
    base = rng.normal(30, 1, 18)
    x = np.stack([base + 5, base, base + 0.01 * rng.normal(size=18)])
    s = compare_methods(x, groups, ["far", "b", "b2"], higher_is_better=True, n_resamples=1000)
    assert list(s.rank_range[0]) == [1, 1]            # always first
    assert s.rank_range[1, 0] == 2 and s.rank_range[1, 1] == 3   # b and b2 swap places
    assert s.ci[0, 0] > s.ci[1, 1]
    for i in range(3):
        assert s.ci[i, 0] <= s.means[i] <= s.ci[i, 1]
    pm, patients = patient_means(x, groups)
    assert pm.shape == (3, 6) and list(patients) == [f"P{i}" for i in range(6)]
    assert pm[1, 0] == pytest.approx(base[:3].mean())


def test_refuses_non_finite_and_misshaped_input():
    with pytest.raises(ValueError, match="finite"):
        compare_methods(np.array([[1.0, np.nan]]), np.array(["a", "b"]), ["m"], True)
    with pytest.raises(ValueError, match="slices=3"):
        compare_methods(np.ones((1, 2)), np.array(["a", "b", "c"]), ["m"], True)
