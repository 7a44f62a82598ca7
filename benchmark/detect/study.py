"""The detectability study: every method's images of a lesion study -> ROIs -> channelized
Hotelling observer -> AUC and d' per lesion type and distance band, the hallucination scores,
bootstrap intervals and paired tests between methods.

    study = DetectionStudy("data/lesions")                    # artifactgsi.lesion_study folder
    rows = [study.score_reference("ideal"), study.score_reference("gsi"),
            study.score_method("identity"), study.score_method("li")]
    report = study.report(rows, reference="identity")          # JSON-able dict

Definitions (docs/detect.md):

- **Background known exactly**: the observer knows the lesion-free truth. Each ROI (a
  ``roi_px`` square centred on the lesion's pixel on its slice, in the lesion-present image and
  at the same place in the lesion-absent image) has the ideal lesion-absent image, on the row's
  HU scale (:func:`hu_calibration`), subtracted, and then the mean of its outer ring (pixels
  farther than ``ring_factor`` lesion diameters from the centre). Anatomy, identical in every
  row, then does not limit detection; noise, streaks and a method's own errors do.
- **Observer**: a CHO (:mod:`benchmark.detect.cho`) with Laguerre-Gauss channels of width
  ``width_factor`` lesion diameters, one per lesion type and distance band, trained and tested
  on different patients (``folds``-fold cross-validation by patient); the test statistics of
  all folds are pooled (each standardized by its training fold).
- **AUC**: empirical (Mann-Whitney) AUC of the pooled test statistics; **d'** from the test
  statistics' means and variances in each implant cell (weighted mean over the cells), and
  ``AUC(d') = Phi(d'/sqrt 2)``.
- **Hallucination**: :mod:`benchmark.detect.hallucination` (the false-positive fraction at the
  operating point set on the ideal images; the band-pass difference map).
- **Intervals and tests**: patients are resampled with replacement (``bootstrap`` times, one
  seeded set of resamples shared by every row, so differences are paired); intervals are the
  2.5 / 97.5 percentiles; a paired test of a row against the reference reports the interval of
  the difference and the one-tailed p-value ``(1 + #{delta* <= 0}) / (B + 1)`` for "better
  than the reference" (IEC 60601-2-44 Annex GG tests MAR against plain FBP one-tailed). The
  templates are kept fixed in the resamples: the intervals describe the test patients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artifactgsi.lesion_study import SCANS, LesionStudy
from artifactgsi.phantoms.lesions import Lesion, LesionType

from ..errors import MARBenchError
from ..metrics.registry import metrics_in_group
from .channels import channelize, make_channels
from .cho import (
    auc_empirical,
    auc_from_dprime,
    cross_validate,
    dprime_from_statistics,
    patient_folds,
)
from .hallucination import hallucination_map, ideal_operating_point

#: Names of the rows that come from the study's own images (no method).
REFERENCE_ROWS = ("ideal", "gsi", "input")
_REFERENCE_IMAGE = {"ideal": "ideal", "gsi": "gsi", "input": "ordinary"}

#: Body pixels at least this far from the metal fit a row's HU scale (:func:`hu_calibration`).
CALIBRATION_MIN_DISTANCE_MM = 30.0
#: Width of the ideal-HU bins of the calibration.
CALIBRATION_BIN_HU = 20.0
#: Pixels a calibration bin needs (fewer: the bin is interpolated from its neighbours).
CALIBRATION_MIN_PIXELS = 30

#: The study's headline values: the metric registry's ``detect`` group, name ->
#: higher_is_better (:meth:`DetectionStudy._values` computes each of them).
SUMMARY_METRICS: dict[str, bool] = {k: s.higher_is_better
                                    for k, s in metrics_in_group("detect").items()}


class DetectError(MARBenchError, ValueError):
    """A detectability study that cannot run as asked (names the setting or file)."""


@dataclass(frozen=True)
class DetectSettings:
    """Settings of the observer and the statistics (recorded with the results)."""

    channels: str = "lg"  # "lg" (Laguerre-Gauss) or "gabor"
    n_channels: int = 4  # Laguerre-Gauss channels (few: templates are trained on tens of ROIs)
    width_factor: float = 1.0  # channel width (LG "a") in lesion diameters
    ring_factor: float = 1.5  # ROI background: pixels beyond this many diameters
    folds: int = 2  # cross-validation folds over patients (2 = train on half, test on half)
    calibrate: bool = True  # put the ideal background on each row's HU scale
    bootstrap: int = 2000
    seed: int = 0
    min_lesions: int = 8  # a (type, band, implant) cell with fewer lesions is not scored
    halluc_threshold_hu: float | None = None  # None: the study's faintest |contrast|

    def validate(self) -> None:
        checks = [
            (self.channels in ("lg", "gabor"), f"channels must be 'lg' or 'gabor', got "
                                               f"{self.channels!r}"),
            (self.n_channels >= 1, f"n_channels must be >= 1, got {self.n_channels}"),
            (self.width_factor > 0, f"width_factor must be > 0, got {self.width_factor}"),
            (self.ring_factor > 0, f"ring_factor must be > 0, got {self.ring_factor}"),
            (self.folds >= 2, f"--folds must be >= 2, got {self.folds}"),
            (self.bootstrap >= 0, f"--bootstrap must be >= 0, got {self.bootstrap}"),
            (self.min_lesions >= 4, f"min_lesions must be >= 4, got {self.min_lesions}"),
            (self.halluc_threshold_hu is None or self.halluc_threshold_hu > 0,
             f"halluc_threshold_hu must be > 0, got {self.halluc_threshold_hu}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise DetectError(msg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Key = tuple[str, str, int]  # (patient_id, scan, slice index)


@dataclass
class DetectRow:
    """One row's raw scores: per lesion statistics and per patient map counts.

    Attributes:
        name: row name (a method, ``ideal``, ``gsi``, ``input``).
        t_present, t_absent: ``(N,)`` cross-validated CHO statistics per lesion.
        false_positive: ``(N,)`` 1 where the observer reports a lesion in the absent ROI at
            the ideal operating point, 0 where not, NaN where the group is not scored.
        map_counts: ``(P, n_bands, 2)`` flagged and total pixels of the hallucination map.
        info: what produced the row (method identity, options, timing).
    """

    name: str
    t_present: np.ndarray
    t_absent: np.ndarray
    false_positive: np.ndarray
    map_counts: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _odd(x: float) -> int:
    n = max(3, int(round(x)))
    return n if n % 2 else n + 1


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


class DetectionStudy:
    """A lesion study prepared for scoring: lesions, folds, channels, ideal observer.

    Args:
        study: a :class:`artifactgsi.lesion_study.LesionStudy` or its folder.
        settings: the observer and statistics settings.
    """

    def __init__(self, study: LesionStudy | Path | str, settings: DetectSettings | None = None
                 ) -> None:
        self.settings = settings or DetectSettings()
        self.settings.validate()
        self.study = study if isinstance(study, LesionStudy) else LesionStudy(study)
        st = self.study
        self.types: dict[str, LesionType] = {t.name: t for t in st.lesion_types}
        self.bands: tuple[str, ...] = st.bands
        self.patients: list[str] = [p.patient_id for p in st.patients]
        self.lesions: list[Lesion] = st.lesions
        if not self.lesions:
            raise DetectError(f"{st.path}: the study has no lesions")
        self.patient_index = {pid: i for i, pid in enumerate(self.patients)}
        # A lesion belongs to the patient whose record lists it (ids are only a convention).
        owner = [i for i, p in enumerate(st.patients) for _ in p.lesions]
        self.lesion_patient = np.asarray(owner)
        self.slices: dict[str, list[int]] = {
            p.patient_id: sorted({les.slice_index for les in p.lesions}) for p in st.patients}
        self.implant_of_patient = {p.patient_id: p.implant_type for p in st.patients}
        try:
            fold_of = patient_folds(self.patients, self.settings.folds, self.settings.seed,
                                    strata=self.implant_of_patient)
        except ValueError as e:
            raise DetectError(f"{st.path}: {e}") from None
        self.folds = np.array([fold_of[self.patients[i]] for i in self.lesion_patient])
        self.pixel_mm = float(np.median([p.pixel_mm for p in st.patients]))
        self.roi_px = _odd(st.roi_mm / self.pixel_mm)
        self.type_of = np.array([les.type for les in self.lesions])
        self.band_of = np.array([les.band for les in self.lesions])
        self.groups: list[tuple[str, str]] = [(t, b) for t in self.types for b in self.bands]
        self.group_index = {g: np.flatnonzero((self.type_of == g[0]) & (self.band_of == g[1]))
                            for g in self.groups}
        # The observer is trained per cell: lesion type, band and implant type (the noise and
        # streaks of a hip prosthesis and of pedicle screws differ by orders of magnitude, and
        # one linear template over both would be set by the noisiest).
        self.implant_of = np.array([self.implant_of_patient[self.patients[i]]
                                    for i in self.lesion_patient])
        self.cells: dict[tuple[str, str, str], np.ndarray] = {}
        for (t, b), idx in self.group_index.items():
            for imp in sorted(set(self.implant_of[idx])):
                cell = idx[self.implant_of[idx] == imp]
                if (len(cell) >= self.settings.min_lesions
                        and len(set(self.folds[cell])) == self.settings.folds):
                    self.cells[(t, b, imp)] = cell
        self.scored_groups = [g for g in self.groups
                              if any(c[:2] == g for c in self.cells)]
        s = self.settings
        self.channels: dict[str, np.ndarray] = {}
        self.rings: dict[str, np.ndarray] = {}
        c = self.roi_px // 2
        yy, xx = np.mgrid[0:self.roi_px, 0:self.roi_px] - c
        r_mm = np.hypot(yy, xx) * self.pixel_mm
        for name, t in self.types.items():
            width = max(2.0, s.width_factor * t.diameter_mm / self.pixel_mm)
            self.channels[name] = make_channels(s.channels, self.roi_px, width, s.n_channels)
            ring = r_mm > s.ring_factor * t.diameter_mm
            if ring.sum() < 4:  # a ROI too small for its ring: use its border
                ring = np.zeros_like(ring)
                ring[[0, -1], :] = ring[:, [0, -1]] = True
            self.rings[name] = ring
        self.radii_px = sorted({t.radius_mm / self.pixel_mm for t in self.types.values()})
        self.halluc_threshold_hu = (s.halluc_threshold_hu if s.halluc_threshold_hu is not None
                                    else min(abs(t.contrast_hu) for t in self.types.values()))
        self._load_references()
        ideal = self.reference["ideal"]
        self.ideal_present, self.ideal_absent = self._rois(ideal, self._backgrounds(ideal))
        self._input_backgrounds = self._backgrounds(self.reference["input"])
        # Patient resamples, drawn within each implant type (the study's design is kept).
        rng = np.random.default_rng([s.seed, 99])
        p = len(self.patients)
        strata = [np.flatnonzero(np.array([self.implant_of_patient[q] == imp
                                           for q in self.patients]))
                  for imp in sorted(set(self.implant_of_patient.values()))]
        self.resamples = np.zeros((s.bootstrap, p), np.int64)
        for k in range(s.bootstrap):
            for members in strata:
                pick = members[rng.integers(0, len(members), len(members))]
                np.add.at(self.resamples[k], pick, 1)

    # ------------------------------------------------------------------ reference images
    def _load_references(self) -> None:
        """Keep the evaluated slices' reference images, the map regions and the calibration
        pixels in memory."""
        from scipy import ndimage

        self.reference: dict[str, dict[Key, np.ndarray]] = {k: {} for k in _REFERENCE_IMAGE}
        self.map_regions: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self.calibration_pixels: dict[tuple[str, int], np.ndarray] = {}
        self.implant: dict[str, str] = {}
        edges = self.study.bands_mm
        for scans in self.study:
            p = scans.patient
            self.implant[p.patient_id] = p.implant_type
            for s in self.slices[p.patient_id]:
                for row, image in _REFERENCE_IMAGE.items():
                    for scan in SCANS:
                        self.reference[row][(p.patient_id, scan, s)] = \
                            scans.images[image][scan][s]
                label_metal = scans.labels[s] == 1
                metal = label_metal | scans.metal_mask["absent"][s]
                exclude = ndimage.binary_dilation(metal, iterations=1)
                if metal.any():
                    dist = ndimage.distance_transform_edt(
                        ~(label_metal if label_metal.any() else metal)) * p.pixel_mm
                else:
                    dist = np.full(metal.shape, np.inf)
                body = (scans.images["ideal"]["absent"][s] > -500) & ~exclude
                bands = np.stack([body & (dist >= lo) & (dist < hi) for lo, hi in edges])
                self.map_regions[(p.patient_id, s)] = (exclude, bands)
                self.calibration_pixels[(p.patient_id, s)] = \
                    ~exclude & (dist >= CALIBRATION_MIN_DISTANCE_MM)

    def hu_calibration(self, images: dict[Key, np.ndarray]) -> Callable[[np.ndarray],
                                                                        np.ndarray]:
        """The row's HU scale as a function of the ideal image's HU (see
        :func:`hu_calibration`), fitted on the lesion-absent slices away from the metal."""
        ideal = self.reference["ideal"]
        xs, ys = [], []
        for (pid, s), sel in self.calibration_pixels.items():
            key = (pid, "absent", s)
            xs.append(ideal[key][sel])
            ys.append(np.asarray(images[key], np.float64)[sel])
        return hu_calibration(np.concatenate(xs), np.concatenate(ys))

    def _backgrounds(self, images: dict[Key, np.ndarray]) -> dict[Key, np.ndarray]:
        """The ideal lesion-absent image on the row's HU scale, for both scans' keys."""
        ideal = self.reference["ideal"]
        same = images is ideal or not self.settings.calibrate
        f = None if same else self.hu_calibration(images)
        out = {}
        for pid, slices in self.slices.items():
            for s in slices:
                bg = ideal[(pid, "absent", s)]
                bg = bg if f is None else f(bg)
                for scan in SCANS:
                    out[(pid, scan, s)] = bg
        return out

    def _rois(self, images: dict[Key, np.ndarray], backgrounds: dict[Key, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
        """Channel outputs ``(N, C)`` of every lesion's present and absent ROI (background
        subtracted, ring referenced)."""
        h = self.roi_px // 2
        out = {}
        for scan in SCANS:
            rows = []
            for les, pi in zip(self.lesions, self.lesion_patient, strict=True):
                key = (self.patients[pi], scan, les.slice_index)
                if key not in images:
                    raise DetectError(f"no {scan} image of patient {key[0]} slice {key[2]}")
                diff = np.asarray(images[key], np.float64) - backgrounds[key]
                img = np.pad(diff, h, mode="edge")
                roi = img[les.row:les.row + 2 * h + 1, les.col:les.col + 2 * h + 1]
                roi = roi - roi[self.rings[les.type]].mean()
                rows.append(channelize(roi[None], self.channels[les.type])[0])
            out[scan] = np.stack(rows)
        return out["present"], out["absent"]

    # ------------------------------------------------------------------ rows
    def score_images(self, name: str, images: dict[Key, np.ndarray],
                     info: dict[str, Any] | None = None) -> DetectRow:
        """Score one row from its images ``{(patient, scan, slice): (H, W) HU}`` (every
        evaluated slice of both scans)."""
        backgrounds = self._backgrounds(images)
        vp, va = self._rois(images, backgrounds)
        n = len(self.lesions)
        tp, ta, fp = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        for idx in self.cells.values():
            cv = cross_validate(vp[idx], va[idx], self.folds[idx], self.settings.folds)
            tp[idx], ta[idx] = cv.t_present, cv.t_absent
            # The operating point on the ideal images, with each fold's template and the
            # ideal ROIs of its training patients.
            for f, tpl in enumerate(cv.templates):
                test = idx[self.folds[idx] == f]
                train = idx[self.folds[idx] != f]
                if tpl is None or not len(test):
                    continue
                thr = ideal_operating_point(tpl.w, self.ideal_present[train].mean(0),
                                            self.ideal_absent[train].mean(0))
                fp[test] = (tpl.statistic(va[test]) > thr).astype(np.float64)
        counts = np.zeros((len(self.patients), len(self.bands), 2))
        ordinary = self.reference["input"]
        bg_input = self._input_backgrounds
        for pid, slices in self.slices.items():
            pi = self.patient_index[pid]
            for s in slices:
                key = (pid, "absent", s)
                exclude, regions = self.map_regions[(pid, s)]
                flagged = hallucination_map(images[key], ordinary[key], backgrounds[key],
                                            bg_input[key], exclude, self.radii_px,
                                            self.halluc_threshold_hu)
                counts[pi, :, 0] += (flagged[None] & regions).sum((1, 2))
                counts[pi, :, 1] += regions.sum((1, 2))
        return DetectRow(name=name, t_present=tp, t_absent=ta, false_positive=fp,
                         map_counts=counts, info=dict(info or {}))

    def score_reference(self, name: str) -> DetectRow:
        """A row from the study's own images: ``ideal``, ``gsi`` or ``input`` (ordinary)."""
        if name not in _REFERENCE_IMAGE:
            raise DetectError(f"unknown reference row {name!r}; expected one of "
                              f"{', '.join(_REFERENCE_IMAGE)}")
        t0 = time.perf_counter()
        row = self.score_images(name, self.reference[name])
        row.info = {"kind": "reference", "image": _REFERENCE_IMAGE[name],
                    "seconds": round(time.perf_counter() - t0, 2)}
        return row

    def method_images(self, mar: Any, name: str, device: str = "cpu", batch_size: int = 4,
                      progress: Callable[[int], None] | None = None
                      ) -> tuple[dict[Key, np.ndarray], float]:
        """Run a prepared :class:`~benchmark.method.MARMethod` on every evaluated slice of both
        scans (with its neighbour slices when it asks for them) -> (images, reduce seconds).
        Outputs are rounded to integer HU as ``marbench run`` rounds them."""
        import torch

        from ..method import MARInput
        from ..run.calls import reduce_batch as _reduce
        from ..run.calls import resolve_device as _resolve_device

        dev = _resolve_device(device)
        k = int(getattr(mar, "neighbour_slices", 0) or 0)
        out: dict[Key, np.ndarray] = {}
        seconds = 0.0
        for scans in self.study:
            p = scans.patient
            wanted = self.slices[p.patient_id]
            for scan in SCANS:
                ords = scans.images["ordinary"][scan]
                mask = scans.metal_mask[scan]
                n_s = len(ords)
                for i in range(0, len(wanted), batch_size):
                    sl = wanted[i:i + batch_size]
                    b = len(sl)
                    nb = None
                    if k > 0:
                        nb = torch.from_numpy(np.stack([
                            ords[[min(max(s + d, 0), n_s - 1) for d in range(-k, k + 1)]]
                            for s in sl]))
                    inp = MARInput(
                        ordinary=torch.from_numpy(ords[sl]).unsqueeze(1),
                        metal_mask=torch.from_numpy(mask[sl]).unsqueeze(1),
                        pixel_spacing_mm=torch.full((b,), float(p.pixel_mm)),
                        implant_type=[p.implant_type] * b,
                        patient_id=[f"{p.patient_id}-{scan}"] * b, slice_index=list(sl),
                        neighbours=nb)
                    img, dt = _reduce(mar, name, inp, dev)
                    seconds += dt
                    for j, s in enumerate(sl):
                        out[(p.patient_id, scan, s)] = img[j, 0].numpy()
                    if progress:
                        progress(b)
        return out, seconds

    def n_method_slices(self) -> int:
        """Slices a method is run on (both scans)."""
        return 2 * sum(len(v) for v in self.slices.values())

    def score_method(self, method: Any, options: dict[str, Any] | None = None,
                     device: str = "cpu", batch_size: int = 4, seed: int = 0,
                     progress: Callable[[int], None] | None = None,
                     label: str | None = None, prepared: bool = False) -> DetectRow:
        """Create (a registered name or ``"pkg.module:Class"``, through the registry; or an
        instance), prepare (unless ``prepared``: an instance whose ``prepare`` was called) and
        run a method, and score its images; the row is named ``label`` or the method's name.
        """
        import torch

        from ..method import MARMethod, PrepareContext
        from ..registry import create_method
        from ..run.calls import MethodRunError
        from ..run.calls import method_cache_dir as _method_cache_dir
        from ..run.calls import resolve_device as _resolve_device

        t0 = time.perf_counter()
        if isinstance(method, MARMethod):
            if options:
                raise DetectError("options are given with a method instance; pass the name "
                                  "or build the instance with them")
            mar, requested = method, f"{type(method).__module__}:{type(method).__qualname__}"
        else:
            mar, requested = create_method(str(method), **(options or {})), str(method)
        name = mar.name or requested
        if not prepared:
            torch.manual_seed(seed)
            ctx = PrepareContext(device=_resolve_device(device),
                                 cache_dir=_method_cache_dir(name), seed=seed)
            try:
                mar.prepare(ctx)
            except (Exception, SystemExit) as e:
                raise MethodRunError(f"method {name!r}: prepare() raised "
                                     f"{type(e).__name__}: {e}") from e
        images, reduce_s = self.method_images(mar, name, device, batch_size, progress)
        row = self.score_images(label or name, images)
        row.info = {"kind": "method", "requested": requested,
                    "target": f"{type(mar).__module__}:{type(mar).__qualname__}",
                    "version": str(getattr(mar, "version", "0")),
                    "weights_sha256": getattr(mar, "weights_sha256", None),
                    "options": mar.effective_options(), "reduce_s": round(reduce_s, 2),
                    "seconds": round(time.perf_counter() - t0, 2)}
        return row

    # ------------------------------------------------------------------ statistics
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

    def describe(self) -> dict[str, Any]:
        """The study's identity and the observer's geometry, for results files."""
        st = self.study
        return {"path": str(st.path), "study_sha256": st.sha256,
                "config_fingerprint": st.record.get("config_fingerprint"),
                "n_patients": len(self.patients), "n_lesions": len(self.lesions),
                "implants": {t: sum(1 for v in self.implant.values() if v == t)
                             for t in sorted(set(self.implant.values()))},
                "lesion_types": [asdict(t) for t in st.lesion_types], "bands": list(self.bands),
                "roi_px": self.roi_px, "pixel_mm": self.pixel_mm,
                "halluc_threshold_hu": self.halluc_threshold_hu,
                "scored_groups": [f"{t}/{b}" for t, b in self.scored_groups],
                "counts": {t: {b: int(len(self.group_index[(t, b)])) for b in self.bands}
                           for t in self.types}}

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


def hu_calibration(ideal_hu: np.ndarray, row_hu: np.ndarray,
                   bin_hu: float = CALIBRATION_BIN_HU, min_pixels: int = CALIBRATION_MIN_PIXELS
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """The HU a row shows for a given ideal HU: the median row HU of the pixels in each bin
    of ideal HU, interpolated linearly between bins (and shifted by the nearest bin's offset
    outside them).

    The ideal image is a monochromatic image at the GSI keV; the ordinary image and the
    methods that keep its look show tissues at the 120 kVp scale (fat darker, bone brighter).
    Subtracting the ideal background on the row's own scale keeps that difference, which is
    the same with and without a lesion, out of the observer's way. Medians ignore zero-mean
    noise.
    """
    x = np.asarray(ideal_hu, np.float64).ravel()
    y = np.asarray(row_hu, np.float64).ravel()
    if len(x) == 0:
        return lambda a: np.asarray(a, np.float64)
    idx = np.floor(x / bin_hu).astype(np.int64)
    order = np.argsort(idx, kind="stable")
    idx, xs, ys = idx[order], x[order], y[order]
    _, start, count = np.unique(idx, return_index=True, return_counts=True)
    cx, cy = [], []
    for s0, n in zip(start, count, strict=True):
        if n >= min_pixels:
            cx.append(float(np.median(xs[s0:s0 + n])))
            cy.append(float(np.median(ys[s0:s0 + n])))
    if not cx:
        off = float(np.median(y - x))
        return lambda a: np.asarray(a, np.float64) + off
    cx_a, cy_a = np.asarray(cx), np.asarray(cy)
    lo_off, hi_off = cy_a[0] - cx_a[0], cy_a[-1] - cx_a[-1]

    def f(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        out = np.interp(a, cx_a, cy_a)
        out = np.where(a < cx_a[0], a + lo_off, out)
        return np.where(a > cx_a[-1], a + hi_off, out)

    return f


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


def run_study(study: LesionStudy | Path | str, methods: Sequence[tuple[Any, dict[str, Any]]],
              out: Path | str | None = None, settings: DetectSettings | None = None, *,
              references: Sequence[str] = ("ideal", "gsi"), reference: str | None = None,
              device: str = "cpu", batch_size: int = 4,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Score the reference rows and every method on a lesion study; write ``out/detect.json``,
    ``out/detect.md`` and ``out/detect.png`` when ``out`` is given; return the report.

    Args:
        methods: ``(name or "pkg.module:Class" or instance, options)`` pairs.
        references: rows from the study's own images (``ideal``, ``gsi``, ``input``).
        reference: the row every other is tested against (default: the first method, else
            ``input``, else the first row).
        progress: called ``(row, done, total)`` as a method's slices are run.
    """
    import json

    from artifactgsi.fileio import write_text_atomic

    from .report import markdown_report, plot_report

    t0 = time.perf_counter()
    ds = DetectionStudy(study, settings)
    rows = [ds.score_reference(r) for r in references]
    total = ds.n_method_slices()
    for spec, options in methods:
        label = spec if isinstance(spec, str) else type(spec).__name__
        done = [0]

        def step(n: int, label: str = label, done: list[int] = done) -> None:
            done[0] += n
            if progress:
                progress(label, done[0], total)

        row = ds.score_method(spec, options, device=device, batch_size=batch_size,
                              seed=ds.settings.seed, progress=step)
        taken = {r.name for r in rows}
        if row.name in taken:  # the same method twice (other options): number the rows
            row.name = next(f"{row.name}[{k}]" for k in range(2, 10**6)
                            if f"{row.name}[{k}]" not in taken)
        rows.append(row)
    names = [r.name for r in rows]
    if reference is None:
        method_rows = [r.name for r in rows[len(references):]]
        reference = method_rows[0] if method_rows else ("input" if "input" in names
                                                        else names[0])
    report = ds.report(rows, reference=reference)
    report["timing"] = {"total_s": round(time.perf_counter() - t0, 1),
                        "rows": {r.name: r.info.get("seconds") for r in rows}}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "detect.json", json.dumps(report, indent=1) + "\n")
        write_text_atomic(out / "detect.md", markdown_report(report))
        plot_report(report, out / "detect.png")
    return report


def detect_record(study: LesionStudy | Path | str, method: Any,
                  options: dict[str, Any] | None = None, settings: DetectSettings | None = None,
                  device: str = "cpu", batch_size: int = 4, prepared: bool = False
                  ) -> dict[str, Any]:
    """One method's detectability block for its ``results.json``: the study's identity, the
    settings, the summary metrics with intervals, per band and group values, and the per
    lesion statistics (so that runs can be compared lesion by lesion)."""
    ds = DetectionStudy(study, settings)
    row = ds.score_method(method, options, device=device, batch_size=batch_size,
                          seed=ds.settings.seed, prepared=prepared)
    block = ds.summarize(row)
    return {"available": True, "study": ds.describe(), "settings": ds.settings.to_dict(),
            **{k: block[k] for k in ("summary", "intervals", "bands", "groups", "lesions",
                                     "map_counts")}}
