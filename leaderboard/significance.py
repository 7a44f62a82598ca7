"""Uncertainty of a ranking: paired bootstrap, Wilcoxon + Holm, Friedman + Nemenyi.

Input is one metric's per-slice values of M methods on the same S slices, ``scores`` (M, S),
and each slice's patient, ``groups`` (S,). Slices of one patient are correlated, so:

- **Bootstrap** (paired: every method gets the same resample). ``unit="patient"`` resamples
  patients with replacement and keeps all their slices (cluster bootstrap, the default);
  ``"slice"`` resamples slices; ``"two-stage"`` resamples patients, then slices within each
  drawn patient. Each replicate gives every method's mean over the drawn slices, their
  pairwise differences and the ranking; percentile intervals give the 95 % CIs of the means
  and of the differences, and each method's rank range. A method against itself has a
  difference of exactly 0 in every replicate, hence the CI [0, 0].
- **Wilcoxon signed-rank** tests (two-sided, scipy) between methods adjacent in the ranking,
  on per-patient means (independent units), Holm-corrected over the adjacent pairs
  (statsmodels).
- **Friedman** test over all methods with patients as blocks (scipy), and the Nemenyi
  post-hoc p-values and critical-difference diagram of scikit-posthocs.

Ranks are 1 = best (``higher_is_better`` says the direction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

BootstrapUnit = Literal["patient", "slice", "two-stage"]


@dataclass
class PairTest:
    """Wilcoxon signed-rank test between two methods (adjacent in the ranking)."""

    better: str
    worse: str
    statistic: float
    p: float
    p_holm: float
    significant: bool


@dataclass
class MetricStats:
    """Everything the board shows for one metric (arrays are in ``methods`` order)."""

    methods: list[str]
    higher_is_better: bool
    n_slices: int
    n_patients: int
    means: np.ndarray            # (M,)
    ci: np.ndarray               # (M, 2) percentile CI of the mean
    rank: np.ndarray             # (M,) rank of the mean, 1 = best (ties share the lower rank)
    rank_range: np.ndarray       # (M, 2) bootstrap rank interval (same level as ci)
    diff_ci: np.ndarray          # (M, M, 2) CI of mean_i - mean_j
    boot_means: np.ndarray = field(repr=False)  # (B, M)
    adjacent: list[PairTest] = field(default_factory=list)
    friedman_statistic: float | None = None
    friedman_p: float | None = None
    avg_ranks: np.ndarray | None = None          # (M,) Friedman average rank over patients
    nemenyi_p: np.ndarray | None = None          # (M, M)

    def order(self) -> list[int]:
        """Method indices, best mean first."""
        return sorted(range(len(self.methods)), key=lambda i: (self.rank[i], self.methods[i]))


def bootstrap_weights(groups: np.ndarray, n_resamples: int, rng: np.random.Generator,
                      unit: BootstrapUnit = "patient") -> np.ndarray:
    """(B, S) multiplicity of each slice in each bootstrap replicate."""
    groups = np.asarray(groups)
    s = len(groups)
    if unit == "slice":
        draws = rng.integers(0, s, size=(n_resamples, s))
        return _counts(draws, s)
    patients, inverse = np.unique(groups, return_inverse=True)
    p = len(patients)
    pdraws = rng.integers(0, p, size=(n_resamples, p))
    if unit == "patient":
        pcount = _counts(pdraws, p)                  # (B, P)
        return pcount[:, inverse].astype(np.float64)  # each slice weighs as its patient
    if unit != "two-stage":
        raise ValueError(f"unknown bootstrap unit {unit!r}; use patient, slice or two-stage")
    members = [np.flatnonzero(inverse == k) for k in range(p)]
    w = np.zeros((n_resamples, s))
    rows = np.arange(n_resamples)
    for j in range(p):                      # j-th patient drawn in each replicate
        for k in range(p):
            sel = rows[pdraws[:, j] == k]
            if sel.size == 0:
                continue
            idx = members[k][rng.integers(0, len(members[k]), size=(sel.size, len(members[k])))]
            np.add.at(w, (np.repeat(sel, idx.shape[1]), idx.ravel()), 1.0)
    return w


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    b = draws.shape[0]
    out = np.zeros((b, n))
    np.add.at(out, (np.repeat(np.arange(b), draws.shape[1]), draws.ravel()), 1.0)
    return out


def _ranks(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Rank along the last axis, 1 = best, ties get their minimum rank."""
    from scipy.stats import rankdata

    keyed = -values if higher_is_better else values
    return rankdata(keyed, method="min", axis=-1).astype(int)


def patient_means(scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, P) mean of each method over each patient's slices, and the patient ids (P,)."""
    patients, inverse = np.unique(np.asarray(groups), return_inverse=True)
    out = np.zeros((scores.shape[0], len(patients)))
    for k in range(len(patients)):
        out[:, k] = scores[:, inverse == k].mean(axis=1)
    return out, patients


def compare_methods(scores: np.ndarray, groups: np.ndarray, methods: list[str],
                    higher_is_better: bool, n_resamples: int = 2000, seed: int = 0,
                    unit: BootstrapUnit = "patient", alpha: float = 0.05) -> MetricStats:
    """Bootstrap CIs, rank ranges and tests for one metric (see the module docstring).

    Args:
        scores: (M, S) finite per-slice values, the same slices (columns) for every method.
        groups: (S,) patient id of each slice.
        methods: M names.
    """
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(methods) or x.shape[1] != len(groups):
        raise ValueError(f"scores must be (methods={len(methods)}, slices={len(groups)}), "
                         f"got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores must be finite (the board refuses NaN / inf when validating)")
    m = x.shape[0]
    rng = np.random.default_rng(seed)
    w = bootstrap_weights(np.asarray(groups), n_resamples, rng, unit)   # (B, S)
    boot = (w @ x.T) / w.sum(axis=1, keepdims=True)                      # (B, M)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    means = x.mean(axis=1)
    ci = np.percentile(boot, q, axis=0).T
    diffs = boot[:, :, None] - boot[:, None, :]                          # (B, M, M)
    diff_ci = np.moveaxis(np.percentile(diffs, q, axis=0), 0, -1)
    boot_ranks = _ranks(boot, higher_is_better)                          # (B, M)
    rank_range = np.stack([np.percentile(boot_ranks, q[0], axis=0, method="lower"),
                           np.percentile(boot_ranks, q[1], axis=0, method="higher")],
                          axis=1).astype(int)
    rank = _ranks(means, higher_is_better)
    res = MetricStats(methods=list(methods), higher_is_better=higher_is_better,
                      n_slices=x.shape[1], n_patients=len(np.unique(groups)), means=means,
                      ci=ci, rank=rank, rank_range=rank_range, diff_ci=diff_ci,
                      boot_means=boot)
    pm, _ = patient_means(x, np.asarray(groups))
    order = res.order()
    pairs, pvals, statistics = [], [], []
    for a, b in zip(order[:-1], order[1:], strict=True):
        d = pm[a] - pm[b]
        if np.all(d == 0):  # identical per-patient means: no evidence of a difference
            stat, p = 0.0, 1.0
        else:
            r = stats.wilcoxon(pm[a], pm[b], alternative="two-sided")
            stat, p = float(r.statistic), float(r.pvalue)
        pairs.append((a, b))
        pvals.append(p)
        statistics.append(stat)
    if pvals:
        reject, p_holm, _, _ = multipletests(pvals, alpha=alpha, method="holm")
        res.adjacent = [PairTest(methods[a], methods[b], s, p, float(ph), bool(rj))
                        for (a, b), s, p, ph, rj in zip(pairs, statistics, pvals, p_holm,
                                                        reject, strict=True)]
    if m >= 3 and pm.shape[1] >= 2:
        import scikit_posthocs as sp

        fr = stats.friedmanchisquare(*pm)
        res.friedman_statistic, res.friedman_p = float(fr.statistic), float(fr.pvalue)
        res.avg_ranks = _avg_ranks(pm, higher_is_better)
        res.nemenyi_p = sp.posthoc_nemenyi_friedman(pm.T).to_numpy()
    return res


def _avg_ranks(pm: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """(M,) mean over patients of each method's rank within the patient (ties averaged)."""
    from scipy.stats import rankdata

    keyed = -pm if higher_is_better else pm
    return rankdata(keyed, method="average", axis=0).mean(axis=1)


def cd_diagram(stats_: MetricStats, path: str, title: str = "", alpha: float = 0.05) -> str | None:
    """Write the Friedman / Nemenyi critical-difference diagram (scikit-posthocs) as SVG;
    ``None`` when there are fewer than 3 methods."""
    if stats_.avg_ranks is None or stats_.nemenyi_p is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scikit_posthocs as sp

    ranks = pd.Series(stats_.avg_ranks, index=stats_.methods)
    sig = pd.DataFrame(stats_.nemenyi_p, index=stats_.methods, columns=stats_.methods)
    fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.32 * len(stats_.methods)))
    try:
        sp.critical_difference_diagram(ranks, sig, ax=ax, alpha=alpha)
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, format="svg")
    finally:
        plt.close(fig)
    return path
