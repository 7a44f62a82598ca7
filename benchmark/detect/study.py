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

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from artifactgsi.lesion_study import SCANS, LesionStudy
from artifactgsi.phantoms.lesions import Lesion, LesionType

# The calibration, the records and the statistics are re-exported (``X as X``): they lived in
# this module, and callers import them from here.
from .calibration import CALIBRATION_BIN_HU as CALIBRATION_BIN_HU
from .calibration import CALIBRATION_MIN_DISTANCE_MM, hu_calibration
from .calibration import CALIBRATION_MIN_PIXELS as CALIBRATION_MIN_PIXELS
from .channels import channelize, make_channels
from .cho import cross_validate, patient_folds
from .hallucination import hallucination_map, ideal_operating_point
from .records import DetectError, DetectRow, DetectSettings, Key
from .statistics import SUMMARY_METRICS as SUMMARY_METRICS
from .statistics import StudyStatistics
from .statistics import weighted_auc as weighted_auc

#: Names of the rows that come from the study's own images (no method).
REFERENCE_ROWS = ("ideal", "gsi", "input")
_REFERENCE_IMAGE = {"ideal": "ideal", "gsi": "gsi", "input": "ordinary"}


def _odd(x: float) -> int:
    n = max(3, int(round(x)))
    return n if n % 2 else n + 1


class DetectionStudy(StudyStatistics):
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
