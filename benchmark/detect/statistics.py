"""The statistics of a detectability study's rows: per group and band AUC, false-positive
fraction and hallucinated area under patient weights, bootstrap intervals over the shared
patient resamples, paired tests against a reference row, and the JSON report (docs/detect.md,
"Intervals and tests")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from artifactgsi.phantoms.lesions import Lesion, LesionType

from ..metrics.registry import metrics_in_group
from .cho import auc_empirical, auc_from_dprime, dprime_from_statistics
from .records import DetectError, DetectRow, DetectSettings

#: The study's headline values: the metric registry's ``detect`` group, name ->
#: higher_is_better (:meth:`StudyStatistics._values` computes each of them).
SUMMARY_METRICS: dict[str, bool] = {k: s.higher_is_better
                                    for k, s in metrics_in_group("detect").items()}


def weighted_auc(tp: np.ndarray, ta: np.ndarray, wp: np.ndarray, wa: np.ndarray) -> float:
    """Mann-Whitney AUC with case weights (bootstrap multiplicities); NaN if a class weighs 0.
    """
    sp, sa = float(wp.sum()), float(wa.sum())
    if sp <= 0 or sa <= 0:
        return math.nan
    order = np.argsort(ta, kind="stable")
    ta_s, cw = ta[order], np.concatenate([[0.0], np.cumsum(wa[order])])
    lo = np.searchsorted(ta_s, tp, side="left")
    hi = np.searchsorted(ta_s, tp, side="right")
    return float((wp * (cw[lo] + 0.5 * (cw[hi] - cw[lo]))).sum() / (sp * sa))


def _weighted_rate(flags: np.ndarray, w: np.ndarray) -> float:
    """Weighted mean of 0/1 ``flags`` ignoring NaN (NaN when nothing is left)."""
    ok = np.isfinite(flags)
    den = float(w[ok].sum())
    return float((w[ok] * flags[ok]).sum() / den) if den > 0 else math.nan


def _nanmean(values: Sequence[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(sum(v) / len(v)) if v else math.nan


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class StudyStatistics:
    """The statistics half of :class:`benchmark.detect.study.DetectionStudy`: what it computes
    from the rows once the study is prepared (the attributes below are set by the study)."""

    settings: DetectSettings
    patients: list[str]
    lesions: list[Lesion]
    lesion_patient: np.ndarray
    types: dict[str, LesionType]
    bands: tuple[str, ...]
    groups: list[tuple[str, str]]
    group_index: dict[tuple[str, str], np.ndarray]
    cells: dict[tuple[str, str, str], np.ndarray]
    scored_groups: list[tuple[str, str]]
    resamples: np.ndarray

    def describe(self) -> dict[str, Any]:  # the study's identity, given by the study
        raise NotImplementedError

    def _values(self, row: DetectRow, w: np.ndarray) -> dict[str, float]:
        """Every number of a row under patient weights ``w`` ``(P,)`` (all 1: the estimate;
        bootstrap multiplicities: a resample)."""
        lw = w[self.lesion_patient].astype(np.float64)
        out: dict[str, float] = {}
        near = self.bands[0]
        for g in self.scored_groups:
            idx = self.group_index[g]
            ok = idx[np.isfinite(row.t_present[idx]) & np.isfinite(row.t_absent[idx])]
            out[f"auc/{g[0]}/{g[1]}"] = weighted_auc(row.t_present[ok], row.t_absent[ok],
                                                     lw[ok], lw[ok])
            out[f"fpf/{g[0]}/{g[1]}"] = _weighted_rate(row.false_positive[idx], lw[idx])
        for b in self.bands:
            aucs = [out[f"auc/{t}/{b}"] for t in self.types if (t, b) in self.scored_groups]
            out[f"auc/all/{b}"] = _nanmean(aucs)
            idx = np.concatenate([self.group_index[(t, b)] for t in self.types
                                  if (t, b) in self.scored_groups] or [np.zeros(0, int)])
            out[f"fpf/all/{b}"] = _weighted_rate(row.false_positive[idx], lw[idx])
            j = self.bands.index(b)
            flagged = float((w * row.map_counts[:, j, 0]).sum())
            total = float((w * row.map_counts[:, j, 1]).sum())
            out[f"area/all/{b}"] = flagged / total if total > 0 else math.nan
        out["detect_auc"] = _nanmean([out[f"auc/{t}/{b}"] for t, b in self.scored_groups])
        out["detect_auc_near"] = out[f"auc/all/{near}"]
        out["halluc_fpf_near"] = out[f"fpf/all/{near}"]
        out["halluc_area_near"] = out[f"area/all/{near}"]
        return out

    def estimates(self, row: DetectRow) -> dict[str, float]:
        return self._values(row, np.ones(len(self.patients)))

    def bootstrap(self, row: DetectRow) -> dict[str, np.ndarray]:
        """``{value: (B,)}`` over the shared patient resamples."""
        draws = [self._values(row, w) for w in self.resamples]
        keys = draws[0].keys() if draws else self.estimates(row).keys()
        return {k: np.array([d[k] for d in draws]) for k in keys}

    def summarize(self, row: DetectRow, boot: dict[str, np.ndarray] | None = None
                  ) -> dict[str, Any]:
        """JSON-able block of one row: summary metrics with intervals, per group and per band
        values, per lesion statistics (for paired tests and re-computation)."""
        est = self.estimates(row)
        boot = self.bootstrap(row) if boot is None else boot

        def ci(key: str) -> list[float] | None:
            b = boot.get(key)
            if b is None or len(b) == 0 or not np.isfinite(b).any():
                return None
            lo, hi = np.nanpercentile(b, [2.5, 97.5])
            return [float(lo), float(hi)]

        groups = []
        for t, b in self.groups:
            idx = self.group_index[(t, b)]
            entry: dict[str, Any] = {"type": t, "band": b, "n_lesions": int(len(idx)),
                                     "n_patients": int(len(set(self.lesion_patient[idx])))}
            if (t, b) not in self.scored_groups:
                entry["reason"] = (f"no implant type has {self.settings.min_lesions} lesions "
                                   f"of this type and band in every fold")
                groups.append(entry)
                continue
            ok = idx[np.isfinite(row.t_present[idx]) & np.isfinite(row.t_absent[idx])]
            # d' per implant cell (each has its own template and scale), weighted by size.
            cells = [cell for c, cell in self.cells.items() if c[:2] == (t, b)]
            dps = [(dprime_from_statistics(row.t_present[cell], row.t_absent[cell]), len(cell))
                   for cell in cells]
            dps = [(d, n) for d, n in dps if math.isfinite(d)]
            dp = (sum(d * n for d, n in dps) / sum(n for _, n in dps)) if dps else math.nan
            entry.update({
                "auc": est[f"auc/{t}/{b}"], "auc_ci": ci(f"auc/{t}/{b}"),
                "auc_check": auc_empirical(row.t_present[ok], row.t_absent[ok]),
                "dprime": dp, "auc_dprime": auc_from_dprime(dp),
                "fpf": est[f"fpf/{t}/{b}"], "fpf_ci": ci(f"fpf/{t}/{b}"),
                "by_implant": {c[2]: {"n_lesions": int(len(cell)),
                                      "auc": _num(auc_empirical(row.t_present[cell],
                                                                row.t_absent[cell]))}
                               for c, cell in self.cells.items() if c[:2] == (t, b)}})
            groups.append(entry)
        bands = {b: {"auc": est[f"auc/all/{b}"], "auc_ci": ci(f"auc/all/{b}"),
                     "fpf": est[f"fpf/all/{b}"], "fpf_ci": ci(f"fpf/all/{b}"),
                     "area": est[f"area/all/{b}"], "area_ci": ci(f"area/all/{b}")}
                 for b in self.bands}
        summary = {m: est[m] for m in SUMMARY_METRICS}
        intervals = {m: ci(m) for m in SUMMARY_METRICS}
        lesions = [{"lesion_id": les.lesion_id, "patient_id": self.patients[pi],
                    "type": les.type, "band": les.band, "t_present": _num(row.t_present[i]),
                    "t_absent": _num(row.t_absent[i]),
                    "false_positive": _num(row.false_positive[i])}
                   for i, (les, pi) in enumerate(zip(self.lesions, self.lesion_patient,
                                                     strict=True))]
        counts = [{"patient_id": pid, "band": b, "flagged": int(row.map_counts[pi, j, 0]),
                   "pixels": int(row.map_counts[pi, j, 1])}
                  for pi, pid in enumerate(self.patients) for j, b in enumerate(self.bands)]
        return {"name": row.name, "info": row.info, "summary": summary,
                "intervals": intervals, "bands": bands, "groups": groups, "lesions": lesions,
                "map_counts": counts}

    def paired(self, rows: Sequence[DetectRow], boots: dict[str, dict[str, np.ndarray]],
               reference: str) -> dict[str, Any]:
        """Every row against ``reference`` on the summary metrics and per band AUC: the
        difference, its interval and the one-tailed p-value for "better"."""
        by = {r.name: r for r in rows}
        if reference not in by:
            raise DetectError(f"the reference row {reference!r} is not in the study (rows: "
                              f"{', '.join(by)})")
        ref_est = self.estimates(by[reference])
        out: dict[str, Any] = {}
        keys = [*SUMMARY_METRICS, *(f"auc/all/{b}" for b in self.bands)]
        for r in rows:
            if r.name == reference:
                continue
            est = self.estimates(r)
            entry = {}
            for k in keys:
                higher = SUMMARY_METRICS.get(k, True)
                delta = est[k] - ref_est[k]
                d = boots[r.name][k] - boots[reference][k] if len(self.resamples) else \
                    np.zeros(0)
                d = d[np.isfinite(d)]
                if len(d):
                    better = d > 0 if higher else d < 0
                    p = float((1 + (~better).sum()) / (len(d) + 1))
                    lo, hi = np.percentile(d, [2.5, 97.5])
                    entry[k] = {"delta": _num(delta), "ci": [float(lo), float(hi)], "p": p,
                                "n_boot": int(len(d))}
                else:
                    entry[k] = {"delta": _num(delta), "ci": None, "p": None, "n_boot": 0}
            out[r.name] = entry
        return out

    def report(self, rows: Sequence[DetectRow], reference: str | None = None
               ) -> dict[str, Any]:
        """The whole study as one JSON-able dict (``detect.json``)."""
        boots = {r.name: self.bootstrap(r) for r in rows}
        names = [r.name for r in rows]
        if len(set(names)) != len(names):
            raise DetectError(f"row names must be unique, got {names}")
        out = {"format": "marbench-detect/1", "study": self.describe(),
               "settings": self.settings.to_dict(),
               "rows": [self.summarize(r, boots[r.name]) for r in rows]}
        if reference is not None:
            out["reference"] = reference
            out["paired"] = self.paired(rows, boots, reference)
        return out
