"""Whether a results file is consistent: its summaries against its per-slice values, its
record against the files of its run folder (the predictions' sha256, size and row count).
The leaderboard's validation and ``marbench verify`` call :func:`verify_results`."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel

from artifactgsi.fileio import sha256_file

from .schema import MetricSummary, Results, segmentation_summaries, summarize


def _same(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def recompute_summaries(results: Results) -> dict[str, dict[str, MetricSummary]]:
    """``{comparison: {metric: summary}}`` recomputed from ``results.per_slice``."""
    out: dict[str, dict[str, MetricSummary]] = {}
    for key, comp in results.comparisons.items():
        out[key] = {}
        for metric in comp.summary:
            vals = [s.scores[key][metric] for s in results.per_slice
                    if key in s.scores and metric in s.scores[key]]
            hib = results.metrics[metric].higher_is_better
            out[key][metric] = summarize(vals, hib)
    return out


class Verification(BaseModel):
    """What :func:`verify_results` found.

    ``problems``: every inconsistency, each naming the field; empty when consistent.
    ``predictions_checked``: the predictions file was present and its sha256, size and row
    count match the record. Per-slice values cannot be proven genuine without the
    predictions, so a results file is *verified* only when both hold.
    """

    problems: list[str]
    predictions_checked: bool
    note: str = ""

    @property
    def verified(self) -> bool:
        return not self.problems and self.predictions_checked


def verify_results(results: Results, run_dir: Path | str | None = None, *,
                   tol: float = 1e-6) -> Verification:
    """Check a results file against itself and its predictions.

    - every summary equals the one recomputed from the per-slice values (relative ``tol``),
      and higher-is-better flags agree with the metric definitions;
    - every per-slice value is a number the protocol can produce (no NaN where the summary
      says none, same slice never twice);
    - when ``run_dir`` holds the predictions file: its sha256, size and rows match.

    Shared by ``marbench compare`` and the leaderboard.
    """
    problems: list[str] = []
    seen: set[tuple[str, int]] = set()
    for s in results.per_slice:
        key = (s.patient_id, s.slice_index)
        if key in seen:
            problems.append(f"per_slice: patient {s.patient_id!r} slice {s.slice_index} "
                            "appears more than once")
        seen.add(key)
    recomputed = recompute_summaries(results)
    for key, comp in results.comparisons.items():
        for metric, stored in comp.summary.items():
            if stored.higher_is_better != results.metrics[metric].higher_is_better:
                problems.append(f"comparisons[{key!r}].summary[{metric!r}]: "
                                f"higher_is_better disagrees with metrics[{metric!r}]")
            fresh = recomputed[key][metric]
            for field in ("mean", "std", "median"):
                a, b = getattr(stored, field), getattr(fresh, field)
                if not _same(a, b, tol):
                    problems.append(f"comparisons[{key!r}].summary[{metric!r}].{field} is "
                                    f"{a!r} but the per-slice values give {b!r}")
            for field in ("n", "n_finite", "n_inf", "n_nan"):
                a, b = getattr(stored, field), getattr(fresh, field)
                if a != b:
                    problems.append(f"comparisons[{key!r}].summary[{metric!r}].{field} is "
                                    f"{a} but the per-slice values give {b}")
    seg = results.segmentation
    if seg is not None and seg.available:
        summary, by_implant, per_patient = segmentation_summaries(results.per_slice)
        for what, stored, fresh in (("summary", seg.summary, summary),
                                    ("by_implant", seg.by_implant, by_implant),
                                    ("per_patient", seg.per_patient, per_patient)):
            if set(stored) != set(fresh):
                problems.append(f"segmentation.{what} covers images {sorted(stored)} but the "
                                f"per-slice counts give {sorted(fresh)}")
                continue
            for image, block in fresh.items():
                flat_fresh = block if what == "summary" else {
                    f"{g}.{k}": v for g, d in block.items() for k, v in d.items()}
                st = stored[image]
                flat_stored = st if what == "summary" else {
                    f"{g}.{k}": v for g, d in st.items() for k, v in d.items()}  # type: ignore[union-attr]
                for key, b in flat_fresh.items():
                    a = flat_stored.get(key)
                    if a is None or not _same(float(a), b, tol):
                        problems.append(f"segmentation.{what}[{image!r}][{key!r}] is {a!r} "
                                        f"but the per-slice counts give {b!r}")
        n = sum(1 for s in results.per_slice if s.segmentation)
        if n != seg.n_slices:
            problems.append(f"segmentation.n_slices is {seg.n_slices} but {n} slices have "
                            "counts")
    checked = False
    note = ""
    pred = results.predictions
    if pred is None:
        note = "no predictions recorded"
    elif run_dir is None:
        note = "predictions not checked (no run folder given)"
    else:
        path = Path(run_dir) / pred.path
        if not path.is_file():
            note = f"predictions file {path} is not present"
        else:
            size = path.stat().st_size
            digest = sha256_file(path)
            if digest != pred.sha256:
                problems.append(f"{path}: sha256 {digest} differs from the recorded "
                                f"{pred.sha256}; the predictions are not the ones scored")
            elif size != pred.bytes:
                problems.append(f"{path}: {size} bytes, recorded {pred.bytes}")
            else:
                checked = True
            if pred.rows != len(results.per_slice):
                problems.append(f"predictions.rows is {pred.rows} but per_slice has "
                                f"{len(results.per_slice)} rows")
    return Verification(problems=problems, predictions_checked=checked, note=note)
