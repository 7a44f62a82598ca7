"""Step 2: one patient: read its series, match and register the slices (paper Eq. 1 and 2),
compute the metal mask (Eq. 8), and cache the rows in ``OUT/.work/patients``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..dicom import Series, pseudonym, read_series
from ..fileio import atomic_path, write_text_atomic
from ..register import register_series
from ..schema import LABEL_NAMES, PatientRecord, metal_mask
from .common import BuildError, BuildSettings
from .raw_manifest import RawPatient


def inputs_fingerprint(folder: Path) -> str:
    """Hash of the patient's input files (relative names, sizes, mtimes): cache validity."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                     .encode())
    return h.hexdigest()


def read_on_gsi_grid(path: Path, gsi: Series, what: str) -> np.ndarray:
    """A NIfTI volume that must lie on the GSI grid -> ``(S_g, H, W)`` array."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise BuildError(f"{path}: unreadable {what} volume "
                         f"({str(err).strip().splitlines()[-1]})") from None
    arr = sitk.GetArrayFromImage(img)
    if arr.shape != gsi.volume_hu.shape:
        raise BuildError(f"{path}: {what} has shape {arr.shape} (slices, rows, columns), the "
                         f"GSI series {gsi.volume_hu.shape}")
    x0, y0 = gsi.grid.origin_mm()
    step = float(np.median(np.diff(gsi.z_mm))) if len(gsi.z_mm) > 1 else img.GetSpacing()[2]
    exp_origin = (x0, y0, float(gsi.z_mm[0]))
    exp_spacing = (gsi.grid.pixel_mm, gsi.grid.pixel_mm, step)

    def mm(values) -> str:
        return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ") mm"

    if not np.allclose(img.GetOrigin(), exp_origin, atol=0.01):
        raise BuildError(f"{path}: {what} origin {mm(img.GetOrigin())} is not the GSI grid's "
                         f"{mm(exp_origin)}")
    if not np.allclose(img.GetSpacing(), exp_spacing, rtol=1e-3, atol=1e-4):
        raise BuildError(f"{path}: {what} spacing {mm(img.GetSpacing())} is not the GSI grid's "
                         f"{mm(exp_spacing)}")
    if not np.allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-4):
        raise BuildError(f"{path}: {what} direction "
                         f"({', '.join(f'{float(v):g}' for v in img.GetDirection())}) is not "
                         "axial identity")
    return arr


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _series_meta(s: Series) -> dict:
    return {"pixel_spacing_mm": float(s.pixel_spacing_mm),
            "slice_thickness_mm": float(s.slice_thickness_mm),
            "kvp": float(s.kvp) if s.kvp is not None else None,
            "manufacturer": s.manufacturer, "model": s.model}


def _write_record(cache: Path, rec: PatientRecord) -> None:
    write_text_atomic(cache / f"{rec.pseudonym}.json", json.dumps(rec.to_dict(), sort_keys=True))


def load_cached(work: Path, pid: str) -> PatientRecord | None:
    """The cached record of pseudonym ``pid`` in ``work/patients``, or ``None``."""
    path = Path(work) / "patients" / f"{pid}.json"
    if not path.is_file():
        return None
    try:
        return PatientRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError):  # another format: process the patient again
        return None


def process_patient(patient: RawPatient, key: bytes, cfg: BuildSettings, work: Path
                    ) -> PatientRecord:
    """Read, match and register one patient; cache its rows in ``work/patients``.

    Returns the patient's record (also written as ``<pseudonym>.json`` beside the arrays,
    last, so a present JSON means a complete cache). A patient that cannot be used is
    returned with ``skipped`` (the reason) and no arrays.
    """
    pid = pseudonym(key, patient.patient_id)
    cache = Path(work) / "patients"
    cache.mkdir(parents=True, exist_ok=True)
    ordinary = read_series(patient.folder / "ordinary", key)
    rec = PatientRecord(pseudonym=pid, role=patient.role, implant_type=patient.implant_type,
                        body_region=patient.body_region,
                        inputs=inputs_fingerprint(patient.folder), **_series_meta(ordinary),
                        n_ordinary=len(ordinary.z_mm))
    thr = cfg.metal_threshold_hu
    if patient.role in ("clean", "generalization"):
        n = len(ordinary.z_mm)
        arrays = {"ordinary": ordinary.volume_hu, "slice_index": np.arange(n, dtype=np.int32),
                  "z_mm": ordinary.z_mm}
        if patient.role == "generalization":
            arrays["metal_mask"] = metal_mask(ordinary.volume_hu, thr).astype(np.uint8)
        rec.rows, rec.shape = n, list(ordinary.volume_hu.shape[1:])
    else:
        gsi_dir = patient.folder / "gsi"
        if not gsi_dir.is_dir():
            rec.skipped = "no GSI series (gsi/ missing)"
            _write_record(cache, rec)
            return rec
        gsi = read_series(gsi_dir, key)
        same_frame = (ordinary.frame_of_reference is None or gsi.frame_of_reference is None
                      or ordinary.frame_of_reference == gsi.frame_of_reference)
        if not same_frame:
            rec.warnings.append("ordinary and GSI series have different frames of "
                                "reference: slices matched by image content only")
        reg = register_series(ordinary.volume_hu, ordinary.grid, ordinary.z_mm, gsi.volume_hu,
                              gsi.grid, gsi.z_mm, cfg.registration, same_frame,
                              where=f"patient {patient.patient_id} ({patient.folder})")
        kept = [p for p in reg.pairs if p.ok]
        ideal = labels = None
        if (patient.folder / "ideal.nii.gz").is_file():
            ideal = read_on_gsi_grid(patient.folder / "ideal.nii.gz", gsi, "ideal")
            if ideal.min() < -32768 or ideal.max() > 32767:
                raise BuildError(f"{patient.folder / 'ideal.nii.gz'}: HU "
                                 f"{float(ideal.min()):.0f}..{float(ideal.max()):.0f} outside "
                                 "int16")
            ideal = np.rint(ideal).astype(np.int16)
        lab_path = patient.folder / "labels.nii.gz"
        if lab_path.is_file():
            labels = read_on_gsi_grid(lab_path, gsi, "labels")
            if labels.min() < 0 or labels.max() >= len(LABEL_NAMES):
                raise BuildError(f"{lab_path}: label values {int(labels.min())}.."
                                 f"{int(labels.max())} outside 0..{len(LABEL_NAMES) - 1} "
                                 f"({', '.join(LABEL_NAMES)})")
            labels = labels.astype(np.uint8)
        elif patient.has_labels:
            raise BuildError(f"{lab_path}: missing, but manifest.csv line {patient.line} says "
                             "has_labels=1")
        gi = np.array([p.gsi_index for p in kept], np.int64)
        ordinary_reg = np.stack([np.clip(np.rint(p.image), -32768, 32767).astype(np.int16)
                                 for p in kept]) if kept else np.zeros((0, *gsi.grid.shape),
                                                                        np.int16)
        arrays = {
            "ordinary": ordinary_reg,
            "gsi": gsi.volume_hu[gi],
            "metal_mask": metal_mask(ordinary_reg, thr).astype(np.uint8),
            "slice_index": gi.astype(np.int32),
            "z_mm": gsi.z_mm[gi],
            "ordinary_slice_index": np.array([p.ordinary_index for p in kept], np.int32),
            "match_score": np.array([p.match_score for p in kept], np.float32),
            "affine": np.array([p.affine for p in kept], np.float64).reshape(-1, 6),
            "registration_ncc": np.array([p.registration_ncc for p in kept], np.float32),
        }
        if ideal is not None:
            arrays["ideal"] = ideal[gi]
        if labels is not None:
            arrays["labels"] = labels[gi]
        rec.rows, rec.shape, rec.gsi_kev = len(kept), list(gsi.grid.shape), gsi.kev
        rec.pixel_spacing_mm = float(gsi.pixel_spacing_mm)
        rec.slice_thickness_mm = float(gsi.slice_thickness_mm)
        rec.n_gsi, rec.unmatched_ordinary = len(gsi.z_mm), len(reg.unmatched_ordinary)
        rec.z_offset_mm = reg.match.z_offset_mm
        rec.flagged = [{"slice_index": p.gsi_index, "ordinary_slice_index": p.ordinary_index,
                        "reasons": p.flags} for p in reg.pairs if not p.ok]
        rec.match_score = [p.match_score for p in reg.pairs]
        rec.ncc_before = [p.ncc_before for p in reg.pairs]
        rec.registration_ncc = [p.registration_ncc for p in reg.pairs]
        rec.has_ideal, rec.has_labels = ideal is not None, labels is not None
    _save_npz_atomic(cache / f"{pid}.npz", arrays)
    _write_record(cache, rec)
    return rec


def process_in_worker(args: tuple[RawPatient, bytes, BuildSettings, str]) -> PatientRecord:
    """:func:`process_patient` in a worker process, on one thread."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one core per worker process
    patient, key, cfg, work = args
    return process_patient(patient, key, cfg, Path(work))
