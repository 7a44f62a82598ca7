"""The channelized Hotelling observer against closed forms and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmark.detect.channels import channelize, gabor, laguerre_gauss
from benchmark.detect.cho import (
    auc_empirical,
    auc_from_dprime,
    cross_validate,
    dprime_from_statistics,
    fit_cho,
    patient_folds,
)

SIZE = 21
SIGMA_NOISE = 10.0


def gaussian_signal(size: int, amplitude: float, sigma_px: float) -> np.ndarray:
    c = size // 2
    y, x = np.mgrid[0:size, 0:size] - c
    return amplitude * np.exp(-(x * x + y * y) / (2 * sigma_px ** 2))


def white_noise_rois(rng, n: int, signal: np.ndarray | None) -> np.ndarray:
    rois = rng.normal(0.0, SIGMA_NOISE, (n, SIZE, SIZE))
    return rois + (signal if signal is not None else 0.0)


def test_laguerre_gauss_channels_are_orthonormal():
    # The continuous LG functions are orthonormal; on a pixel grid with a >= 4 px the sums
    # reproduce that to a fraction of a percent.
    u = laguerre_gauss(41, 6.0, 6).reshape(6, -1)
    np.testing.assert_allclose(u @ u.T, np.eye(6), atol=5e-3)


def test_gaussian_signal_is_channel_zero():
    sigma = 2.5
    u = laguerre_gauss(SIZE, sigma * math.sqrt(2 * math.pi), 1)[0]
    s = gaussian_signal(SIZE, 1.0, sigma)
    np.testing.assert_allclose(u / u.max(), s / s.max(), atol=1e-12)


def test_cho_dprime_equals_the_ideal_observer_for_a_signal_in_the_channels():
    """Known signal in white Gaussian noise: the ideal observer has d' = ||s|| / sigma. With
    the population covariance (sigma^2 U U^T in channel space) the CHO reaches it exactly
    when s lies in the channels' span, and stays below it otherwise."""
    sigma_s = 2.0
    s = gaussian_signal(SIZE, 8.0, sigma_s)
    ideal = np.linalg.norm(s) / SIGMA_NOISE
    for width, n, in_span in ((sigma_s * math.sqrt(2 * math.pi), 5, True), (12.0, 2, False)):
        u = laguerre_gauss(SIZE, width, n).reshape(n, -1)
        delta = u @ s.ravel()
        cov = SIGMA_NOISE ** 2 * (u @ u.T)
        d_cho = math.sqrt(delta @ np.linalg.solve(cov, delta))
        assert d_cho <= ideal * (1 + 1e-9)
        if in_span:
            assert d_cho == pytest.approx(ideal, rel=1e-9)
        else:
            assert d_cho < 0.95 * ideal


def test_cho_on_samples_matches_the_closed_form_and_mann_whitney():
    rng = np.random.default_rng(0)
    sigma_s = 2.0
    s = gaussian_signal(SIZE, 4.0, sigma_s)
    ideal = np.linalg.norm(s) / SIGMA_NOISE  # about 1.8
    ch = laguerre_gauss(SIZE, sigma_s * math.sqrt(2 * math.pi), 5)
    n = 1500
    vp_train = channelize(white_noise_rois(rng, n, s), ch)
    va_train = channelize(white_noise_rois(rng, n, None), ch)
    vp_test = channelize(white_noise_rois(rng, n, s), ch)
    va_test = channelize(white_noise_rois(rng, n, None), ch)
    tpl = fit_cho(vp_train, va_train)
    tp, ta = tpl.statistic(vp_test), tpl.statistic(va_test)
    d_test = dprime_from_statistics(tp, ta)
    # Test-set d' estimates the CHO's d' (= the ideal d' here) within sampling error
    # (sd of d' ~ sqrt(2/n + d'^2/(4n)) ~ 0.04).
    assert d_test == pytest.approx(ideal, abs=0.15)
    auc = auc_empirical(tp, ta)
    u = stats.mannwhitneyu(tp, ta, alternative="two-sided").statistic
    assert auc == pytest.approx(u / (n * n), abs=1e-12)
    # Gaussian statistics: the empirical AUC agrees with Phi(d' / sqrt 2).
    assert auc == pytest.approx(auc_from_dprime(ideal), abs=0.02)
    assert auc_from_dprime(d_test) == pytest.approx(auc, abs=0.02)


def test_auc_counts_ties_as_one_half_like_mann_whitney():
    rng = np.random.default_rng(1)
    tp = rng.integers(0, 5, 40).astype(float)
    ta = rng.integers(0, 4, 30).astype(float)
    u = stats.mannwhitneyu(tp, ta, alternative="two-sided").statistic
    assert auc_empirical(tp, ta) == pytest.approx(u / (40 * 30), abs=1e-12)
    assert auc_empirical([1.0], [1.0]) == 0.5
    assert auc_empirical([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert math.isnan(auc_empirical([], [1.0]))


def test_auc_from_dprime_closed_form():
    assert auc_from_dprime(0.0) == 0.5
    assert auc_from_dprime(math.sqrt(2) * 1.0) == pytest.approx(stats.norm.cdf(1.0))
    assert auc_from_dprime(math.inf) == 1.0


def test_cho_against_mar_eval():
    """The same channel outputs through mar-eval's Annex GG observer (pooled covariance,
    sklearn's AUC): the same template direction and the same AUC."""
    mareval = pytest.importorskip("mareval")
    rng = np.random.default_rng(2)
    s = gaussian_signal(SIZE, 3.0, 2.0)
    ch = laguerre_gauss(SIZE, 5.0, 5)
    vp = channelize(white_noise_rois(rng, 400, s), ch)
    va = channelize(white_noise_rois(rng, 400, None), ch)
    ours = fit_cho(vp, va).w
    theirs = mareval.cho_template(vp, va, lambda_reg=0.0)
    cos = ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs))
    assert cos == pytest.approx(1.0, abs=1e-9)
    vpt = channelize(white_noise_rois(rng, 400, s), ch)
    vat = channelize(white_noise_rois(rng, 400, None), ch)
    t_p = mareval.cho_decision_values(vpt, theirs)
    t_a = mareval.cho_decision_values(vat, theirs)
    labels = np.r_[np.ones(400), np.zeros(400)]
    assert mareval.compute_auc(np.r_[t_p, t_a], labels) == pytest.approx(
        auc_empirical(vpt @ ours, vat @ ours), abs=1e-12)


def test_gabor_channels_shape_and_phase():
    g = gabor(15, 6.0, frequencies=(0.1,), orientations=2, phases=(0.0, math.pi / 2))
    assert g.shape == (4, 15, 15)
    assert g[0, 7, 7] == pytest.approx(1.0)  # cosine phase peaks at the centre
    assert g[1, 7, 7] == pytest.approx(0.0, abs=1e-12)


def test_folds_keep_patients_apart_and_spread_strata():
    patients = [f"P{i}" for i in range(9)]
    strata = {p: ("hip" if i < 4 else "spine") for i, p in enumerate(patients)}
    folds = patient_folds(patients, 2, seed=3, strata=strata)
    assert set(folds) == set(patients)
    for key in ("hip", "spine"):
        members = [folds[p] for p in patients if strata[p] == key]
        assert abs(members.count(0) - members.count(1)) <= 1
    with pytest.raises(ValueError, match="cannot fill"):
        patient_folds(["A"], 2)


def test_cross_validation_tests_each_fold_with_the_template_of_the_others():
    rng = np.random.default_rng(4)
    n, c = 60, 3
    vp = rng.normal(1.0, 1.0, (n, c))
    va = rng.normal(0.0, 1.0, (n, c))
    folds = np.arange(n) % 2
    cv = cross_validate(vp, va, folds, 2)
    for f in (0, 1):
        tpl = fit_cho(vp[folds != f], va[folds != f])
        np.testing.assert_allclose(cv.t_present[folds == f], tpl.standardized(vp[folds == f]))
        np.testing.assert_allclose(cv.t_absent[folds == f], tpl.standardized(va[folds == f]))
    assert cv.tested.all()
    # Standardized: the training absent class has mean 0 and unit sd under its template.
    tpl = cv.templates[0]
    t = tpl.standardized(va[folds != 0])
    assert abs(t.mean()) < 1e-9
