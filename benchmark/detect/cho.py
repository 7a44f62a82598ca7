"""The channelized Hotelling observer (CHO) and the figures of merit of a two-class task.

With channel outputs ``v`` (one row per ROI) of lesion-present and lesion-absent ROIs:

- ``S = (S_present + S_absent) / 2``, the mean of the two classes' sample covariances;
- ``delta = mean(v_present) - mean(v_absent)``;
- template ``w = S^-1 delta``; test statistic ``t = w . v``;
- ``d'^2 = delta^T S^-1 delta`` on the training ROIs;
- on test ROIs: the empirical AUC (Mann-Whitney: the probability that a present ROI scores
  above an absent one, ties counting one half), ``d' = (mean t_p - mean t_a) /
  sqrt((var t_p + var t_a) / 2)`` and the AUC it implies, ``Phi(d' / sqrt 2)``.

Written in numpy because the maths is a few lines; its results are checked in the tests
against the closed-form ideal observer of a known signal in white Gaussian noise, against
``scipy.stats.mannwhitneyu`` and against the ``mar-eval`` package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Relative ridge added to the covariance before solving (times trace(S) / C): keeps the
#: template finite when a channel has no variance in the training ROIs (noise-free images).
RIDGE = 1e-6


@dataclass(frozen=True)
class CHOTemplate:
    """A trained observer.

    Attributes:
        w: ``(C,)`` template; mean_absent: ``(C,)`` mean absent channel output.
        dprime: training ``sqrt(delta^T S^-1 delta)``.
        n_present, n_absent: training ROIs.
    """

    w: np.ndarray
    mean_absent: np.ndarray
    dprime: float
    n_present: int
    n_absent: int

    def statistic(self, v: np.ndarray) -> np.ndarray:
        """Raw test statistic ``w . v`` of channel outputs ``(N, C)`` -> ``(N,)``."""
        return np.asarray(v, np.float64) @ self.w

    def standardized(self, v: np.ndarray) -> np.ndarray:
        """``(w . v - w . mean_absent) / sqrt(w^T S w)``: in units of the training absent
        class's standard deviation (then absent ~ N(0, 1), present ~ N(d', 1) under the
        model), so statistics of templates trained on different folds can be pooled."""
        sd = self.dprime if self.dprime > 0 else 1.0  # w^T S w = d'^2 for w = S^-1 delta
        return (self.statistic(v) - float(self.mean_absent @ self.w)) / sd


def fit_cho(v_present: np.ndarray, v_absent: np.ndarray, ridge: float = RIDGE) -> CHOTemplate:
    """Train the CHO on channel outputs ``(Np, C)`` and ``(Na, C)``.

    Raises:
        ValueError: fewer than 2 ROIs in a class, or mismatched channel counts.
    """
    vp = np.asarray(v_present, np.float64)
    va = np.asarray(v_absent, np.float64)
    if vp.ndim != 2 or va.ndim != 2 or vp.shape[1] != va.shape[1]:
        raise ValueError(f"channel outputs must be (N, C) with the same C, got {vp.shape} and "
                         f"{va.shape}")
    if len(vp) < 2 or len(va) < 2:
        raise ValueError(f"the CHO needs at least 2 ROIs per class, got {len(vp)} present and "
                         f"{len(va)} absent")
    c = vp.shape[1]
    s = 0.5 * (np.cov(vp, rowvar=False).reshape(c, c) + np.cov(va, rowvar=False).reshape(c, c))
    delta = vp.mean(0) - va.mean(0)
    scale = float(np.trace(s)) / c
    s_reg = s + (ridge * scale if scale > 0 else ridge) * np.eye(c)
    w = np.linalg.solve(s_reg, delta)
    d2 = float(delta @ w)
    return CHOTemplate(w=w, mean_absent=va.mean(0), dprime=math.sqrt(max(d2, 0.0)),
                       n_present=len(vp), n_absent=len(va))


def auc_empirical(t_present: np.ndarray, t_absent: np.ndarray) -> float:
    """Mann-Whitney AUC: P(t_present > t_absent) + P(equal) / 2 over all pairs; NaN when a
    class is empty."""
    tp = np.asarray(t_present, np.float64).ravel()
    ta = np.sort(np.asarray(t_absent, np.float64).ravel())
    if len(tp) == 0 or len(ta) == 0:
        return math.nan
    below = np.searchsorted(ta, tp, side="left")
    not_above = np.searchsorted(ta, tp, side="right")
    return float((below.sum() + 0.5 * (not_above - below).sum()) / (len(tp) * len(ta)))


def dprime_from_statistics(t_present: np.ndarray, t_absent: np.ndarray) -> float:
    """``(mean t_p - mean t_a) / sqrt((var t_p + var t_a) / 2)`` (sample variances); NaN when
    a class has fewer than 2 values or both variances are 0."""
    tp = np.asarray(t_present, np.float64)
    ta = np.asarray(t_absent, np.float64)
    if len(tp) < 2 or len(ta) < 2:
        return math.nan
    var = 0.5 * (tp.var(ddof=1) + ta.var(ddof=1))
    if var <= 0:
        return math.nan
    return float((tp.mean() - ta.mean()) / math.sqrt(var))


def auc_from_dprime(dprime: float) -> float:
    """AUC of two equal-variance normal classes ``d'`` apart: ``Phi(d' / sqrt 2)``."""
    if not math.isfinite(dprime):
        return math.nan if math.isnan(dprime) else (1.0 if dprime > 0 else 0.0)
    return 0.5 * (1.0 + math.erf(dprime / 2.0))


def patient_folds(patients: list[str], k: int, seed: int = 0,
                  strata: dict[str, str] | None = None) -> dict[str, int]:
    """Assign each distinct patient to one of ``k`` folds, so that a patient's ROIs are never
    in training and test at once: a seeded shuffle, then round robin, within each stratum
    (``strata`` maps a patient to e.g. its implant type; every stratum is spread over the
    folds as evenly as it can be)."""
    uniq = sorted(set(patients))
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    if len(uniq) < k:
        raise ValueError(f"{len(uniq)} patient(s) cannot fill {k} folds; lower --folds or add "
                         "patients")
    rng = np.random.default_rng(seed)
    by: dict[str, list[str]] = {}
    for p in uniq:
        by.setdefault(strata.get(p, "") if strata else "", []).append(p)
    out: dict[str, int] = {}
    start = 0
    for key in sorted(by):
        members = by[key]
        for i, j in enumerate(rng.permutation(len(members))):
            out[members[int(j)]] = (start + i) % k
        start += len(members)  # the next stratum continues the round robin
    return out


@dataclass(frozen=True)
class CrossValidated:
    """Test statistics of every ROI, each from the template trained without its patient's
    fold (standardized, see :meth:`CHOTemplate.standardized`).

    Attributes:
        t_present, t_absent: ``(N,)`` statistics of the paired present / absent ROIs.
        templates: one per fold (``None`` where the fold could not be trained).
        train_dprime: mean training d' over the trained folds.
        tested: ``(N,)`` bool, ROIs whose fold had a template.
    """

    t_present: np.ndarray
    t_absent: np.ndarray
    templates: list[CHOTemplate | None]
    train_dprime: float
    tested: np.ndarray


def cross_validate(v_present: np.ndarray, v_absent: np.ndarray, folds: np.ndarray,
                   n_folds: int, min_train: int = 2) -> CrossValidated:
    """Train on all folds but one, test on that one, for each fold.

    ``v_present[i]`` and ``v_absent[i]`` are the channel outputs of lesion ``i``'s present and
    absent ROIs, ``folds[i]`` its patient's fold. A fold whose training set has fewer than
    ``min_train`` lesions is not tested (its ROIs get NaN, ``tested`` false).
    """
    vp = np.asarray(v_present, np.float64)
    va = np.asarray(v_absent, np.float64)
    folds = np.asarray(folds)
    tp = np.full(len(vp), np.nan)
    ta = np.full(len(va), np.nan)
    templates: list[CHOTemplate | None] = []
    for f in range(n_folds):
        test = folds == f
        train = ~test
        if train.sum() < max(min_train, 2) or not test.any():
            templates.append(None)
            continue
        tpl = fit_cho(vp[train], va[train])
        templates.append(tpl)
        tp[test] = tpl.standardized(vp[test])
        ta[test] = tpl.standardized(va[test])
    trained = [t.dprime for t in templates if t is not None]
    return CrossValidated(t_present=tp, t_absent=ta, templates=templates,
                          train_dprime=float(np.mean(trained)) if trained else math.nan,
                          tested=np.isfinite(tp) & np.isfinite(ta))
