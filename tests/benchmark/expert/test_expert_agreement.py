"""Agreement statistics against published worked examples and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.expert.agreement import icc, krippendorff_alpha, self_agreement

# Shrout & Fleiss (1979), Table 2: 6 targets (rows) x 4 judges (columns).
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                          [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float)
# Their Table 4 (published to two decimals).
SHROUT_FLEISS_ICC = {"ICC(1,1)": 0.17, "ICC(2,1)": 0.29, "ICC(3,1)": 0.71,
                     "ICC(1,k)": 0.44, "ICC(2,k)": 0.62, "ICC(3,k)": 0.91}

n = math.nan
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders x 12 units.
KRIPPENDORFF = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
    [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
])


def test_icc_reproduces_shrout_fleiss_all_six_forms():
    got = icc(SHROUT_FLEISS)
    assert {k: round(v.icc, 2) for k, v in got.items()} == SHROUT_FLEISS_ICC
    for v in got.values():
        assert v.ci_low <= v.icc <= v.ci_high


def test_icc_2_1_equals_the_two_way_anova_formula():
    """ICC(2,1) and ICC(2,k) from the mean squares, written out (Shrout & Fleiss eq. 2)."""
    x = np.random.default_rng(4).integers(1, 6, size=(15, 3)).astype(float)
    x[:, 1] += 1  # a reader bias, which ICC(2,.) (absolute agreement) penalises
    nt, k = x.shape
    grand = x.mean()
    bms = k * ((x.mean(axis=1) - grand) ** 2).sum() / (nt - 1)
    jms = nt * ((x.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    ss_e = ((x - x.mean(axis=1, keepdims=True) - x.mean(axis=0) + grand) ** 2).sum()
    ems = ss_e / ((nt - 1) * (k - 1))
    icc21 = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / nt)
    icc2k = (bms - ems) / (bms + (jms - ems) / nt)
    got = icc(x)
    assert got["ICC(2,1)"].icc == pytest.approx(icc21, abs=1e-9)
    assert got["ICC(2,k)"].icc == pytest.approx(icc2k, abs=1e-9)


def test_icc_refuses_incomplete_or_tiny_matrices():
    with pytest.raises(ValueError, match="missing values"):
        icc(np.array([[1, 2], [3, np.nan], [2, 2]]))
    with pytest.raises(ValueError, match="at least 2"):
        icc(np.array([[1.0, 2.0]]))


def test_krippendorff_nominal_reproduces_the_published_0743():
    assert round(krippendorff_alpha(KRIPPENDORFF, "nominal"), 3) == 0.743


def test_krippendorff_ordinal_matches_a_hand_computation(alpha_by_hand):
    """The ordinal value of the same example: our call of the package equals the
    coincidence-matrix computation written out in the test (0.815)."""
    ordinal = krippendorff_alpha(KRIPPENDORFF, "ordinal")
    assert ordinal == pytest.approx(alpha_by_hand(KRIPPENDORFF, "ordinal"), abs=1e-9)
    assert round(ordinal, 3) == 0.815
    assert alpha_by_hand(KRIPPENDORFF, "nominal") == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_is_undefined_without_variation():
    assert math.isnan(krippendorff_alpha(np.full((2, 5), 3.0), "ordinal", range(1, 6)))


def test_self_agreement_perfect_poor_and_undefined():
    good = self_agreement([1, 2, 3, 4, 5, 2], [1, 2, 3, 4, 5, 2])
    assert good.alpha == pytest.approx(1.0) and good.exact == 1.0 and not good.poor
    bad = self_agreement([1, 5, 2, 4, 1, 5], [5, 1, 4, 2, 5, 1])
    assert bad.alpha < 0 and bad.poor and "alpha" in bad.reason
    same = self_agreement([3, 3, 3], [3, 3, 3])
    assert math.isnan(same.alpha) and not same.poor and "only 3" in same.reason
    spread = self_agreement([3, 3, 3], [1, 1, 5])  # alpha defined, far apart
    assert spread.poor
    none = self_agreement([], [])
    assert none.n_pairs == 0 and not none.poor
