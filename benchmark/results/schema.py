"""The results schema's models (see :mod:`benchmark.results`), the atomic write every results
file goes through, and the columns of tables across runs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A stdlib-only leaf of the dataset package: one implementation of atomic writes and hashes.
# (sha256_file and temporary_sibling are re-exported for the runner and the leaderboard.)
from artifactgsi.fileio import sha256_file as sha256_file
from artifactgsi.fileio import temporary_sibling as temporary_sibling
from artifactgsi.fileio import write_text_atomic

# The metric declarations (torch-free): tables and defaults read them, never a hand list.
from ..metrics.registry import METRICS, SEG_CLASSES, MetricSpec

#: Format tag of results files written by this module.
RESULTS_FORMAT = "marbench-results/1"

#: Comparison keys: ``<scored>_vs_<reference>``.
METHOD_VS_GSI = "method_vs_gsi"
METHOD_VS_IDEAL = "method_vs_ideal"
GSI_VS_IDEAL = "gsi_vs_ideal"
#: The method against the image without metal (the ``aapm`` config's reference).
METHOD_VS_REFERENCE = "method_vs_reference"
COMPARISONS: dict[str, tuple[str, str]] = {
    METHOD_VS_GSI: ("method", "gsi"),
    METHOD_VS_IDEAL: ("method", "ideal"),
    GSI_VS_IDEAL: ("gsi", "ideal"),
    METHOD_VS_REFERENCE: ("method", "reference"),
}
#: Scoring protocols a results file may record (``benchmark.protocol`` defines them).
PROTOCOL_VERSIONS: tuple[str, ...] = ("marbench-v1", "aapm-ctmar-2024")


class _Model(BaseModel):
    # Unknown keys are errors, so a results file from a newer schema is refused loudly.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class ProtocolRecord(_Model):
    """The scoring protocol: version, every setting (``Protocol.to_dict()``) and the
    fingerprint of the LPIPS backbone used (``None`` when LPIPS was not computed)."""

    version: str
    settings: dict[str, Any]
    lpips_weights_fingerprint: str | None = None


class DataFileRecord(_Model):
    """One Parquet file of the scored split, as its ``manifest.json`` lists it."""

    path: str
    sha256: str | None
    bytes: int
    rows: int | None = None


class DatasetRecord(_Model):
    """Which data was scored.

    Attributes:
        source: what the user passed (a folder or a Hub repo id).
        repo_id: the Hub dataset repo, when the data came from the Hub.
        revision: the Hub commit sha (also for a folder inside the Hub cache), else ``None``.
        path: the local folder that was read.
        manifest_sha256: sha256 of the folder's ``manifest.json`` (``None`` if it has none).
        n_slices_split: rows in the split; ``n_slices_scored`` may be fewer (``limit``).
    """

    source: str
    repo_id: str | None = None
    revision: str | None = None
    path: str
    config: str
    split: str
    manifest_sha256: str | None
    files: list[DataFileRecord]
    n_slices_split: int
    n_slices_scored: int
    limit: int | None = None
    has_ideal: bool


class MethodRecord(_Model):
    """The method that was run: ``requested`` is what the user typed, ``target`` its class."""

    name: str
    requested: str
    target: str
    version: str
    weights_sha256: str | None = None
    neighbour_slices: int = 0
    options: dict[str, Any] = Field(default_factory=dict)


class CodeRecord(_Model):
    """The harness code: distribution version and git commit of the checkout, if any."""

    package: str
    version: str
    git_commit: str | None = None
    git_dirty: bool | None = None


class HardwareRecord(_Model):
    """Where the run happened."""

    cpu: str
    cpu_count: int
    platform: str
    python: str
    torch: str
    torch_threads: int
    device: str
    cuda_device: str | None = None
    cuda_version: str | None = None


class TimingRecord(_Model):
    """Wall-clock seconds. ``reduce_s`` is time inside ``MARMethod.reduce`` only."""

    prepare_s: float
    reduce_s: float
    score_s: float
    total_s: float
    reduce_ms_per_slice: float
    # reference-side states (benchmark.refcache) served from the cache / computed in this run
    reference_states_reused: int = 0
    reference_states_computed: int = 0


class MetricDefinition(_Model):
    """What a metric's numbers mean: its declaration (:class:`MetricSpec`) as recorded.

    ``group``, ``label`` and ``table`` are ``None`` in files written before they were
    recorded; :meth:`resolved` fills them from the registry (or from the name)."""

    unit: str
    higher_is_better: bool
    description: str
    group: str | None = None
    label: str | None = None
    table: bool | None = None

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> MetricDefinition:
        return cls(unit=spec.unit, higher_is_better=spec.higher_is_better,
                   description=spec.description, group=spec.group, label=spec.title,
                   table=spec.table)

    def resolved(self, name: str) -> MetricDefinition:
        """A copy with ``group`` / ``label`` / ``table`` filled."""
        spec = METRICS.get(name)
        return self.model_copy(update={
            "group": self.group or (spec.group if spec else "image"),
            "label": self.label or (spec.title if spec else name),
            "table": self.table if self.table is not None else (spec.table if spec else True),
        })


class MetricSummary(_Model):
    """Aggregate of one metric over slices (:func:`summarize`): ``mean`` / ``std`` /
    ``median`` over finite values; infinities (PSNR of identical images) and NaN (a metric
    undefined on a slice, e.g. no bone) are counted, not averaged. When no value is finite
    but some are infinite, ``mean`` is that infinity."""

    mean: float
    std: float
    median: float
    n: int
    n_finite: int
    n_inf: int
    n_nan: int
    higher_is_better: bool


def summarize(values: Iterable[float], higher_is_better: bool) -> MetricSummary:
    """Aggregate per-slice values into a :class:`MetricSummary` (the only place summaries
    are computed: the runner, ``marbench compare`` and the leaderboard all call it)."""
    vals = [float(v) for v in values]
    finite = sorted(v for v in vals if math.isfinite(v))
    infs = [v for v in vals if math.isinf(v)]
    nan = float("nan")
    if finite:
        mean = math.fsum(finite) / len(finite)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite))
        k = len(finite)
        median = finite[k // 2] if k % 2 else 0.5 * (finite[k // 2 - 1] + finite[k // 2])
    elif infs and len(set(infs)) == 1:
        mean = median = infs[0]
        std = nan
    else:
        mean = median = std = nan
    return MetricSummary(mean=mean, std=std, median=median, n=len(vals),
                         n_finite=len(finite), n_inf=len(infs),
                         n_nan=len(vals) - len(finite) - len(infs),
                         higher_is_better=higher_is_better)


class ComparisonRecord(_Model):
    """One scored image against one reference, over the scored slices.

    ``available`` is false (with ``reason``) when the reference does not exist, e.g. no
    ``ideal`` images in real data; ``missing`` maps a metric that could not be computed at all
    (LPIPS without its weights) to the reason.
    """

    scored: Literal["method", "gsi"]
    reference: Literal["gsi", "ideal", "reference"]
    available: bool
    reason: str | None = None
    n_slices: int
    summary: dict[str, MetricSummary] = Field(default_factory=dict)
    missing: dict[str, str] = Field(default_factory=dict)


class SliceRecord(_Model):
    """One slice: identity, context and ``scores[comparison][metric]``; with a segmenter,
    ``segmentation[image]`` holds the per-class intersection / union pixel counts
    (``seg_inter.<class>``, ``seg_union.<class>``) of the segmenter on ``image``
    (``method``, ``gsi``, ``ideal``) against the labels."""

    patient_id: str
    slice_index: int
    z_mm: float | None = None
    implant_type: str
    metal_pixels: int
    scores: dict[str, dict[str, float]]
    segmentation: dict[str, dict[str, float]] | None = None


# ----------------------------------------------------------------------------- segmentation

#: Images a frozen segmenter is applied to: the method's output, and the references.
SEG_IMAGES: tuple[str, ...] = ("method", "gsi", "ideal")
SEG_INTER = "seg_inter."
SEG_UNION = "seg_union."
#: Summary keys: ``iou.<class>`` then ``miou``.
SEG_SUMMARY_KEYS: tuple[str, ...] = (*(f"iou.{k}" for k in SEG_CLASSES), "miou")


def seg_summary(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Dataset-level IoU per class and mIoU from per-slice count rows.

    Per class: the sum of intersections over the sum of unions across ``rows`` (NaN when the
    class never occurs, in prediction or reference); a class absent from both on a slice has
    union 0 there and contributes nothing. ``miou``: the mean of the defined class IoUs
    (NaN only when no foreground class occurs).

    Raises:
        KeyError: a row lacks a count (names the row and the key).
    """
    inter = dict.fromkeys(SEG_CLASSES, 0.0)
    union = dict.fromkeys(SEG_CLASSES, 0.0)
    for i, row in enumerate(rows):
        for k in SEG_CLASSES:
            try:
                inter[k] += float(row[f"{SEG_INTER}{k}"])
                union[k] += float(row[f"{SEG_UNION}{k}"])
            except KeyError:
                raise KeyError(f"seg_summary: row {i} has no {SEG_INTER}{k} / {SEG_UNION}{k} "
                               "count; per-slice rows must come from the segmentation "
                               "scorer") from None
    out = {f"iou.{k}": (inter[k] / union[k] if union[k] > 0 else math.nan) for k in SEG_CLASSES}
    defined = [out[f"iou.{k}"] for k in SEG_CLASSES if not math.isnan(out[f"iou.{k}"])]
    out["miou"] = math.fsum(defined) / len(defined) if defined else math.nan
    return out


def seg_summary_by(rows: list[dict[str, Any]], groups: list[str]) -> dict[str, dict[str, float]]:
    """:func:`seg_summary` per group label (patient id, implant type), groups sorted."""
    if len(rows) != len(groups):
        raise ValueError(f"seg_summary_by: {len(rows)} rows but {len(groups)} group labels")
    by: dict[str, list[dict[str, Any]]] = {}
    for r, g in zip(rows, groups, strict=True):
        by.setdefault(str(g), []).append(r)
    return {g: seg_summary(by[g]) for g in sorted(by)}


class SegmentationRecord(_Model):
    """Downstream segmentation: a frozen GSI-trained segmenter applied to each image.

    Attributes:
        available: whether it was computed; else ``reason`` says why (no segmenter given,
            no labels in the data).
        segmenter: its identity (weights sha256, training input, classes, HU window, ...).
        summary: ``{image: {"iou.<class>": ..., "miou": ...}}`` over the scored slices
            (:func:`seg_summary` of the per-slice counts).
        by_implant: the same per implant type; per_patient: per patient id.
        n_slices: slices with labels that were segmented.
        note: a caveat about the scores (the segmenter was trained on another dataset).
    """

    available: bool
    reason: str | None = None
    note: str | None = None
    segmenter: dict[str, Any] = Field(default_factory=dict)
    classes: list[str] = Field(default_factory=lambda: list(SEG_CLASSES))
    summary: dict[str, dict[str, float]] = Field(default_factory=dict)
    by_implant: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    per_patient: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    n_slices: int = 0


def segmentation_summaries(per_slice: list[SliceRecord]) -> tuple[
        dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]],
        dict[str, dict[str, dict[str, float]]]]:
    """(summary, by_implant, per_patient) recomputed from the slices' segmentation counts."""
    summary: dict[str, dict[str, float]] = {}
    by_implant: dict[str, dict[str, dict[str, float]]] = {}
    per_patient: dict[str, dict[str, dict[str, float]]] = {}
    for image in SEG_IMAGES:
        have = [s for s in per_slice if s.segmentation and image in s.segmentation]
        if not have:
            continue
        rows = [s.segmentation[image] for s in have]  # type: ignore[index]
        summary[image] = seg_summary(rows)
        by_implant[image] = seg_summary_by(rows, [s.implant_type for s in have])
        per_patient[image] = seg_summary_by(rows, [s.patient_id for s in have])
    return summary, by_implant, per_patient


class PredictionsRecord(_Model):
    """The method's output as written: int16 HU Parquet (columns ``patient_id``,
    ``slice_index``, ``prediction``), path relative to the results file."""

    path: str
    sha256: str
    bytes: int
    rows: int
    dtype: Literal["int16"] = "int16"


class DetectRecord(_Model):
    """Task-based evaluation on a lesion study (``marbench run --lesions DIR``; the study and
    its definitions: docs/detect.md).

    Attributes:
        available: whether it was computed; else ``reason`` says why.
        study: the lesion study's identity (folder, ``study.json`` sha256, counts, types,
            bands) and the observer's geometry.
        settings: the observer and statistics settings.
        summary: the registry's ``detect`` metrics (name -> value; ``None``: not defined).
        intervals: their 95 % bootstrap intervals over patients (``None``: none).
        bands, groups: values per distance band and per (lesion type, band).
        lesions: per lesion: id, patient, type, band, the cross-validated observer's
            statistics on the present and absent ROI, and its false-positive flag (so runs can
            be compared lesion by lesion).
        map_counts: per patient and band, flagged and total pixels of the hallucination map.
        seconds: time the study took (the method's runs included).
    """

    available: bool
    reason: str | None = None
    study: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    summary: dict[str, float | None] = Field(default_factory=dict)
    intervals: dict[str, list[float] | None] = Field(default_factory=dict)
    bands: dict[str, dict[str, Any]] = Field(default_factory=dict)
    groups: list[dict[str, Any]] = Field(default_factory=list)
    lesions: list[dict[str, Any]] = Field(default_factory=list)
    map_counts: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float | None = None


class Results(_Model):
    """Everything one benchmark run records (see the module docstring)."""

    format: Literal["marbench-results/1"] = RESULTS_FORMAT
    created_utc: datetime
    protocol: ProtocolRecord
    dataset: DatasetRecord
    method: MethodRecord
    code: CodeRecord
    hardware: HardwareRecord
    timing: TimingRecord
    metrics: dict[str, MetricDefinition]
    comparisons: dict[str, ComparisonRecord]
    per_slice: list[SliceRecord]
    predictions: PredictionsRecord | None = None
    figure: str | None = None
    segmentation: SegmentationRecord | None = None
    detect: DetectRecord | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Results:
        """Cross-field checks, so a hand-edited or truncated file is refused."""
        if self.detect is not None and self.detect.available:
            unknown = set(self.detect.summary) - set(self.metrics)
            if unknown:
                raise ValueError(f"detect.summary: metrics {sorted(unknown)} are not defined "
                                 "in 'metrics'")
        for key, comp in self.comparisons.items():
            if key not in COMPARISONS:
                raise ValueError(f"comparisons: unknown key {key!r}; expected one of "
                                 f"{sorted(COMPARISONS)}")
            if (comp.scored, comp.reference) != COMPARISONS[key]:
                raise ValueError(f"comparisons[{key!r}]: scored/reference are "
                                 f"{comp.scored}/{comp.reference}, expected "
                                 f"{'/'.join(COMPARISONS[key])}")
            unknown = set(comp.summary) - set(self.metrics)
            if unknown:
                raise ValueError(f"comparisons[{key!r}]: metrics {sorted(unknown)} are not "
                                 "defined in 'metrics'")
            n = sum(1 for s in self.per_slice if key in s.scores)
            if n != comp.n_slices:
                raise ValueError(f"comparisons[{key!r}]: n_slices is {comp.n_slices} but "
                                 f"{n} per-slice rows have it")
            if comp.available != (n > 0):
                state = "available" if comp.available else "not available"
                raise ValueError(f"comparisons[{key!r}] is {state} but {n} slices have it")
            if not comp.available and not comp.reason:
                raise ValueError(f"comparisons[{key!r}] is not available: give the reason")
        if self.dataset.n_slices_scored != len(self.per_slice):
            raise ValueError(f"dataset.n_slices_scored is {self.dataset.n_slices_scored} but "
                             f"per_slice has {len(self.per_slice)} rows")
        for s in self.per_slice:
            extra = set(s.scores) - set(self.comparisons)
            if extra:
                raise ValueError(f"per_slice patient {s.patient_id!r} slice {s.slice_index}: "
                                 f"comparisons {sorted(extra)} are not in 'comparisons'")
        return self

    # -- I/O
    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: Path | str) -> Path:
        """Write atomically (a temporary name in the same folder, then rename)."""
        return atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path | str) -> Results:
        """Read and validate ``path`` (a ``results.json``, or a run folder holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "results.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such results file (run `marbench run` first)")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: not a results file (not UTF-8 text: {e.reason} at byte "
                             f"{e.start}); give a results.json written by `marbench run`") \
                from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from e
        if not isinstance(raw, dict) or raw.get("format") != RESULTS_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"{p}: format is {found!r}, expected {RESULTS_FORMAT!r}")
        try:
            return cls.model_validate(raw)
        except ValueError as e:
            raise ValueError(f"{p}: not a valid results file:\n{e}") from e


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary sibling, then rename); make parents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


# ----------------------------------------------------------------------------- comparison


def study_scores(results: Results) -> dict[str, tuple[float | None, list[float] | None]]:
    """``{metric: (value, 95 % interval)}`` of the metrics the run reduced over a whole study
    rather than per slice (today the lesion study's ``detect`` block); empty without one."""
    det = results.detect
    if det is None or not det.available:
        return {}
    return {m: (v, det.intervals.get(m)) for m, v in det.summary.items()}


def study_columns(runs: Iterable[Results]) -> list[tuple[str, MetricDefinition]]:
    """The study-level metrics (:func:`study_scores`) any of ``runs`` has, with their recorded
    declarations, in recorded order: the columns of a board's task-based table."""
    out: dict[str, MetricDefinition] = {}
    for r in runs:
        scores = study_scores(r)
        for name, d in r.metrics.items():
            if name in scores and name not in out:
                out[name] = d.resolved(name)
    return list(out.items())
