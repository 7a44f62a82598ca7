"""The statistics of an expert study (step 3 of :mod:`benchmark.expert.score`): mean score
per method and criterion with a two-way bootstrap CI (cases and readers), paired Wilcoxon
tests with Holm's correction, inter- and intra-reader agreement, in one :class:`Report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from benchmark.expert.ratings import SCORE_MAX, SCORE_MIN, MissingRatingsError, Pack, RatingRow

#: The paper's Table 4 (mean scores of its readers, 1-5) for comparison, not for ranking:
#: other data, other readers.
PAPER_TABLE4: dict[str, dict[str, float]] = {
    "LI": {"readability": 1.58, "correctness": 2.87},
    "DuDoDp": {"readability": 1.55, "correctness": 2.59},
    "OSCNet": {"readability": 2.21, "correctness": 3.58},
    "OSCNet+": {"readability": 2.15, "correctness": 3.90},
    "LGA": {"readability": 4.47, "correctness": 4.23},
}


@dataclass
class Report:
    """The study's result (what ``table4.json`` holds)."""

    pack_id: str
    criteria: list[str]
    methods: list[str]
    n_cases: int
    readers: list[dict[str, Any]]
    table: dict[str, dict[str, dict[str, float]]]
    paired: dict[str, list[dict[str, Any]]]
    inter: dict[str, dict[str, Any]]
    intra: dict[str, dict[str, Any]]
    paper: dict[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)
    bootstrap: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "marbench-expert-scores/1", "pack_id": self.pack_id,
                "criteria": self.criteria, "methods": self.methods, "n_cases": self.n_cases,
                "n_readers": len(self.readers), "readers": self.readers,
                "bootstrap": self.bootstrap, "table": self.table, "paired": self.paired,
                "inter_reader": self.inter, "intra_reader": self.intra,
                "paper_table4": self.paper, "notes": self.notes}


def bootstrap_mean_ci(scores: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> np.ndarray:
    """Percentile CIs of the mean, resampling cases and readers (two-way bootstrap).

    Args:
        scores: (n_methods, n_cases, n_readers) scores.

    Returns:
        (n_methods, 2) lower / upper bounds.
    """
    rng = np.random.default_rng(seed)
    m, n, r = scores.shape
    boots = np.empty((n_boot, m))
    for b in range(n_boot):
        ci = rng.integers(0, n, n)
        ri = rng.integers(0, r, r)
        boots[b] = scores[:, ci][:, :, ri].mean(axis=(1, 2))
    alpha = (1.0 - level) / 2.0
    return np.quantile(boots, [alpha, 1.0 - alpha], axis=0).T


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given).

    The i-th smallest p (0-based) is multiplied by ``m - i``, then a running maximum keeps
    the order, capped at 1. This equals ``statsmodels.stats.multitest.multipletests(p,
    method="holm")[1]`` (the tests check it); that call runs a full garbage collection each
    time, which costs about a second in a process holding torch and datasets.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adj
    return out


def paired_tests(per_case: dict[str, np.ndarray], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank between every pair of methods (paired by case), Holm-corrected.

    Args:
        per_case: method -> (n_cases,) mean score over readers.
    """
    from scipy.stats import wilcoxon

    out: list[dict[str, Any]] = []
    for a, b in combinations(per_case, 2):
        x, y = per_case[a], per_case[b]
        d = x - y
        if np.all(d == 0):
            stat, p = math.nan, 1.0  # identical scores: no evidence of a difference
        else:
            res = wilcoxon(x, y)
            stat, p = float(res.statistic), float(res.pvalue)
        out.append({"a": a, "b": b, "n": int(d.size), "mean_diff": float(d.mean()),
                    "median_diff": float(np.median(d)), "statistic": stat, "p": p})
    if out:
        for o, ph in zip(out, holm([o["p"] for o in out]), strict=True):
            o["p_holm"] = float(ph)
            o["significant"] = bool(ph < alpha)
    return out


def analyse(pack: Pack, rows: Sequence[RatingRow], *, n_boot: int = 2000, seed: int = 0,
            min_self_alpha: float = 0.667, paper: bool = False) -> Report:
    """Unblind validated ratings and compute the report (see the module docstring)."""
    from benchmark.expert.agreement import icc, krippendorff_alpha, self_agreement

    criteria = list(pack.manifest["criteria"])
    methods = pack.methods
    images = pack.key["images"]
    cases = [c["case"] for c in pack.key["cases"]]
    case_ix = {c: i for i, c in enumerate(cases)}
    repeat_of = {it["item"]: it["repeat_of"] for rl in pack.key["reading_lists"]
                 for it in rl["items"]}
    readers = sorted({r.reader_id for r in rows})
    rd_ix = {r: i for i, r in enumerate(readers)}
    by = {(r.reader_id, r.item): r for r in rows}
    m_ix = {m: i for i, m in enumerate(methods)}
    scores = {c: np.full((len(methods), len(cases), len(readers)), np.nan) for c in criteria}
    reader_info: dict[str, dict[str, Any]] = {}
    for r in rows:
        info = reader_info.setdefault(r.reader_id, {"reader_id": r.reader_id,
                                                    "reading_list": r.reading_list,
                                                    "experience_years": r.experience,
                                                    "seconds": []})
        if r.seconds is not None:
            info["seconds"].append(r.seconds)
        if repeat_of[r.item] is not None:
            continue
        meta = images[r.image]
        for c in criteria:
            scores[c][m_ix[meta["method"]], case_ix[meta["case"]], rd_ix[r.reader_id]] = \
                r.scores[c]
    for c in criteria:
        if np.isnan(scores[c]).any():  # validate() guarantees this; guard against misuse
            raise MissingRatingsError([f"criterion {c}: some first showings have no score"])
    notes: list[str] = []
    table: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    paired: dict[str, list[dict[str, Any]]] = {}
    inter: dict[str, dict[str, Any]] = {}
    for k, c in enumerate(criteria):
        s = scores[c]
        ci = bootstrap_mean_ci(s, n_boot, seed + k)
        for i, m in enumerate(methods):
            table[m][c] = {"mean": float(s[i].mean()), "ci_low": float(ci[i, 0]),
                           "ci_high": float(ci[i, 1]), "sd": float(s[i].std(ddof=1))
                           if s[i].size > 1 else math.nan, "n": int(s[i].size)}
        paired[c] = paired_tests({m: s[i].mean(axis=1) for i, m in enumerate(methods)})
        # Inter-reader: every rated image is a target.
        mat = s.reshape(len(methods) * len(cases), len(readers))
        if len(readers) >= 2:
            try:
                forms = icc(mat)
                inter[c] = {"ICC(2,1)": forms["ICC(2,1)"].to_dict(),
                            "ICC(2,k)": forms["ICC(2,k)"].to_dict(), "k": len(readers)}
            except Exception as e:  # e.g. no variance at all: report why, keep the rest
                inter[c] = {"ICC(2,1)": None, "ICC(2,k)": None, "k": len(readers),
                            "icc_error": f"{type(e).__name__}: {e}"}
            inter[c]["alpha_ordinal"] = krippendorff_alpha(mat.T, "ordinal",
                                                           range(SCORE_MIN, SCORE_MAX + 1))
        else:
            inter[c] = {"ICC(2,1)": None, "ICC(2,k)": None, "alpha_ordinal": None,
                        "k": len(readers)}
    if len(readers) < 2:
        notes.append("one reader only: inter-reader agreement needs at least two")
    # Intra-reader from repeats.
    intra: dict[str, dict[str, Any]] = {}
    for reader in readers:
        pairs = [(by[(reader, repeat_of[r.item])], r) for r in rows
                 if r.reader_id == reader and repeat_of[r.item] is not None]
        entry: dict[str, Any] = {"n_repeats": len(pairs)}
        poor = []
        for c in criteria:
            sa = self_agreement([a.scores[c] for a, _ in pairs], [b.scores[c] for _, b in pairs],
                                min_alpha=min_self_alpha)
            entry[c] = sa.to_dict()
            if sa.poor:
                poor.append(c)
        entry["poor"] = bool(poor)
        entry["poor_criteria"] = poor
        intra[reader] = entry
        if poor:
            notes.append(f"reader {reader!r}: poor self-agreement on {', '.join(poor)} "
                         "(repeated images scored differently); consider their scores with care")
        if not pairs:
            notes.append(f"reader {reader!r}: no repeated images, self-agreement unknown")
    rinfo = []
    for reader in readers:
        info = reader_info[reader]
        secs = info.pop("seconds")
        info["median_seconds_per_image"] = float(np.median(secs)) if secs else None
        info["total_minutes"] = float(np.sum(secs) / 60.0) if secs else None
        rinfo.append(info)
    return Report(pack_id=pack.pack_id, criteria=criteria, methods=methods,
                  n_cases=len(cases), readers=rinfo, table=table, paired=paired, inter=inter,
                  intra=intra, paper=PAPER_TABLE4 if paper else None, notes=notes,
                  bootstrap={"n": n_boot, "seed": seed, "level": 0.95,
                             "resampled": ["cases", "readers"]})
