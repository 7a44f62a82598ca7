"""Patient-level statistics for comparing methods: the unit of every test and interval is the
patient, because the slices of one patient are not independent.

For one metric of M methods scored on the same slices:

- **per-patient means** (M, P): each method's mean over each patient's slices;
- **paired bootstrap** of the difference between two methods: patients resampled with
  replacement (the same draw for both), the statistic is the mean over drawn patients of the
  per-patient differences; percentile 95 % interval;
- **Wilcoxon signed-rank** (two-sided, scipy) on the per-patient differences of methods adjacent
  in the ranking, **Holm**-corrected over those pairs (statsmodels);
- **Friedman** over all methods with patients as blocks (scipy);
- **power** (:func:`power_table`): from the spread of the observed per-patient differences,
  the smallest difference each comparison could detect at 80 % power, and how many test
  patients a given difference (0.5 dB by default) would need. The Wilcoxon test is treated as a
  paired t-test with its asymptotic relative efficiency 3/pi under normality (Lehmann, 1975), and
  with P patients no two-sided Wilcoxon p-value below 2 / 2^P exists, so with fewer than 6
  patients no difference can reach p < 0.05 at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairComparison", "PowerRow", "compare_adjacent", "friedman", "min_wilcoxon_p",
           "paired_bootstrap_ci", "patient_means", "power_row", "power_table"]

#: Wilcoxon signed-rank against the paired t-test: asymptotic relative efficiency under
#: normal differences (3 / pi).
WILCOXON_ARE = 3.0 / math.pi


def patient_means(scores: np.ndarray, groups: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(M, P) mean of each method over each patient's slices, and the patients (sorted).

    Args:
        scores: (M, S) per-slice values, the same slices (columns) for every method.
        groups: (S,) patient id of each slice.
    """
    x = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    if x.ndim != 2 or x.shape[1] != len(g):
        raise ValueError(f"scores must be (methods, slices={len(g)}), got {x.shape}")
    patients, inverse = np.unique(g, return_inverse=True)
    out = np.zeros((x.shape[0], len(patients)))
    for k in range(len(patients)):
        out[:, k] = x[:, inverse == k].mean(axis=1)
    return out, [str(p) for p in patients]


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p-value with ``n`` pairs: 2 / 2^n."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


def paired_bootstrap_ci(diffs: np.ndarray, n_resamples: int = 10000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of per-patient differences, patients resampled.

    The differences are sorted first, so the interval depends on their values only, not on
    the patients' order: each build draws new pseudonymous patient ids, which reorder the
    patients, and the same images must give the same interval.
    """
    d = np.sort(np.asarray(diffs, dtype=np.float64))
    if d.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    boot = d[idx].mean(axis=1)
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [a, 100 - a])
    return float(lo), float(hi)


@dataclass
class PairComparison:
    """Two methods adjacent in the ranking of one metric, at the patient level."""

    better: str
    worse: str
    n_patients: int
    mean_diff: float          # mean over patients of (better - worse), in the metric's unit
    ci: tuple[float, float]   # paired bootstrap 95 % interval of mean_diff
    sd_diff: float            # SD of the per-patient differences (ddof 1)
    statistic: float
    p: float
    p_holm: float
    significant: bool


def _wilcoxon(d: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if d.size == 0 or np.all(d == 0):
        return 0.0, 1.0  # identical per-patient means: no evidence of a difference
    r = stats.wilcoxon(d, alternative="two-sided")
    return float(r.statistic), float(r.pvalue)


def compare_adjacent(pm: np.ndarray, methods: Sequence[str], higher_is_better: bool,
                     alpha: float = 0.05, n_resamples: int = 10000, seed: int = 0
                     ) -> list[PairComparison]:
    """Wilcoxon + Holm between methods adjacent in the ranking of their patient-level means.

    Args:
        pm: (M, P) per-patient means (:func:`patient_means`); NaN patients of a pair are
            dropped for that pair.
    """
    from statsmodels.stats.multitest import multipletests

    means = np.nanmean(pm, axis=1)
    order = sorted(range(len(methods)), key=lambda i: (-means[i] if higher_is_better
                                                         else means[i], methods[i]))
    rows: list[tuple] = []
    for a, b in zip(order[:-1], order[1:], strict=False):
        ok = np.isfinite(pm[a]) & np.isfinite(pm[b])
        d = pm[a][ok] - pm[b][ok]
        stat, p = _wilcoxon(d)
        sd = float(np.std(d, ddof=1)) if d.size > 1 else math.nan
        rows.append((a, b, d, stat, p, sd))
    if not rows:
        return []
    reject, p_holm, _, _ = multipletests([r[4] for r in rows], alpha=alpha, method="holm")
    return [PairComparison(better=methods[a], worse=methods[b], n_patients=int(d.size),
                           mean_diff=float(d.mean()) if d.size else math.nan,
                           ci=paired_bootstrap_ci(d, n_resamples, seed), sd_diff=sd,
                           statistic=stat, p=p, p_holm=float(ph), significant=bool(rj))
            for (a, b, d, stat, p, sd), ph, rj in zip(rows, p_holm, reject, strict=True)]


def friedman(pm: np.ndarray) -> tuple[float, float] | None:
    """(statistic, p) of the Friedman test over methods with patients as blocks; ``None`` with
    fewer than 3 methods or 2 complete patients."""
    from scipy import stats

    ok = np.all(np.isfinite(pm), axis=0)
    if pm.shape[0] < 3 or ok.sum() < 2:
        return None
    r = stats.friedmanchisquare(*pm[:, ok])
    return float(r.statistic), float(r.pvalue)


@dataclass
class PowerRow:
    """What one comparison could detect."""

    better: str
    worse: str
    n_patients: int
    sd_diff: float
    observed_diff: float
    min_p: float                    # smallest Wilcoxon p that n_patients allow
    detectable_diff: float          # smallest |difference| found at the given power (NaN: none)
    target_diff: float
    patients_needed: int | None     # patients to find target_diff at the given power


def _t_effect(n_eff: float, alpha: float, power: float) -> float:
    """Standardised effect (mean / SD of differences) a two-sided paired t-test with
    ``n_eff`` pairs detects with ``power`` (statsmodels)."""
    from statsmodels.stats.power import TTestPower

    if n_eff < 2:
        return math.nan
    e = TTestPower().solve_power(effect_size=None, nobs=n_eff, alpha=alpha, power=power,
                                 alternative="two-sided")
    return float(np.ravel(e)[0])


def _t_nobs(effect: float, alpha: float, power: float) -> float:
    """Pairs a two-sided paired t-test needs to detect a standardised ``effect``."""
    from statsmodels.stats.power import TTestPower

    n = TTestPower().solve_power(effect_size=effect, nobs=None, alpha=alpha, power=power,
                                 alternative="two-sided")
    return float(np.ravel(n)[0])


def power_row(diffs: np.ndarray, better: str, worse: str, *, alpha: float = 0.05,
              power: float = 0.8, target: float = 0.5) -> PowerRow:
    """Power of the patient-level Wilcoxon test for one pair from its per-patient differences.

    ``detectable_diff`` = (the paired t-test's detectable effect at n x 3/pi pairs) x SD;
    NaN when n patients cannot reach ``alpha`` at all. ``patients_needed``: the smallest n
    (at least the n where 2 / 2^n < alpha) whose detectable difference is <= ``target``.
    """
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    sd = float(np.std(d, ddof=1)) if n > 1 else math.nan
    minp = min_wilcoxon_p(n)
    det = math.nan
    if n > 1 and minp < alpha and math.isfinite(sd):
        det = _t_effect(n * WILCOXON_ARE, alpha, power) * sd
    needed: int | None = None
    n_min = next(k for k in range(1, 64) if min_wilcoxon_p(k) < alpha)
    if math.isfinite(sd) and sd > 0 and target > 0:
        n_t = _t_nobs(target / sd, alpha, power)
        if math.isfinite(n_t):
            needed = max(n_min, 2, math.ceil(n_t / WILCOXON_ARE))
    elif math.isfinite(sd) and sd == 0:
        needed = n_min
    return PowerRow(better=better, worse=worse, n_patients=n, sd_diff=sd,
                    observed_diff=float(d.mean()) if n else math.nan, min_p=minp,
                    detectable_diff=det, target_diff=target, patients_needed=needed)


def power_table(pm: np.ndarray, methods: Sequence[str], higher_is_better: bool, *,
                alpha: float = 0.05, power: float = 0.8, target: float = 0.5
                ) -> list[PowerRow]:
    """:func:`power_row` for every pair adjacent in the ranking (same order as
    :func:`compare_adjacent`)."""
    means = np.nanmean(pm, axis=1)
    order = sorted(range(len(methods)), key=lambda i: (-means[i] if higher_is_better
                                                         else means[i], methods[i]))
    return [power_row(pm[a] - pm[b], methods[a], methods[b], alpha=alpha, power=power,
                      target=target)
            for a, b in zip(order[:-1], order[1:], strict=False)]


# ----------------------------------------------------------------------------- from results


def aligned_scores(runs: Sequence[tuple[str, object]], comparison: str, metric: str
                   ) -> tuple[np.ndarray, list[str], list[str]]:
    """(M, S) per-slice values of ``comparison.metric`` on the slices every run scored with a
    finite value, their patients (S,), and the run names (M,).

    Args:
        runs: (name, :class:`benchmark.results.Results`) pairs.
    """
    keyed = []
    for _, r in runs:
        vals = {}
        for s in r.per_slice:  # type: ignore[attr-defined]
            v = s.scores.get(comparison, {}).get(metric)
            if v is not None and math.isfinite(v):
                vals[(s.patient_id, s.slice_index)] = float(v)
        keyed.append(vals)
    common = sorted(set.intersection(*(set(k) for k in keyed))) if keyed else []
    x = np.array([[k[c] for c in common] for k in keyed], dtype=np.float64)
    return x.reshape(len(runs), len(common)), [c[0] for c in common], [n for n, _ in runs]


def significance_markdown(runs: Sequence[tuple[str, object]], comparison: str, metric: str,
                          higher_is_better: bool, unit: str = "", alpha: float = 0.05,
                          target: float = 0.5) -> str:
    """A markdown section: adjacent pairs with the patient-level paired difference, its 95 %
    interval, Wilcoxon and Holm p, whether it is significant, what the pair could detect at
    80 % power and the patients needed for ``target``; then Friedman over all."""
    x, groups, names = aligned_scores(runs, comparison, metric)
    if x.shape[1] == 0 or len(names) < 2:
        return ""
    pm, patients = patient_means(x, groups)
    pairs = compare_adjacent(pm, names, higher_is_better, alpha=alpha)
    powers = power_table(pm, names, higher_is_better, alpha=alpha, target=target)
    u = f" {unit}" if unit else ""
    lines = [f"**{metric} ({comparison.replace('_', ' ')})**: {len(patients)} patients, "
             f"{x.shape[1]} slices; pairs adjacent in the ranking, patient-level "
             f"Wilcoxon signed-rank with Holm over the pairs (alpha {alpha:g}).", "",
             f"| better | worse | difference{u} | 95 % CI | p | p (Holm) | significant | "
             f"detectable at 80 % power{u} | patients for {target:g}{u} |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(v: float) -> str:
        return "n/a" if not math.isfinite(v) else f"{v:.3g}" if abs(v) < 0.1 else f"{v:.2f}"

    for c, pw in zip(pairs, powers, strict=True):
        det = f(pw.detectable_diff) if math.isfinite(pw.detectable_diff) else \
            f"none (min p {pw.min_p:.3g})"
        need = str(pw.patients_needed) if pw.patients_needed is not None else "n/a"
        lines.append(f"| {_md(c.better)} | {_md(c.worse)} | {f(c.mean_diff)} | "
                     f"[{f(c.ci[0])}, {f(c.ci[1])}] | {c.p:.3g} | {c.p_holm:.3g} | "
                     f"{'**yes**' if c.significant else 'no'} | {det} | {need} |")
    fr = friedman(pm)
    if fr is not None:
        lines += ["", f"Friedman over all {len(names)}: chi2 = {fr[0]:.2f}, p = {fr[1]:.3g}."]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
