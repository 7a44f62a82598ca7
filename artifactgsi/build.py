"""Build the Hugging Face dataset (DESIGN 3.2) from a raw DICOM tree (DESIGN 3.1).

``RAW/manifest.csv`` lists the patients. Each one becomes rows of one config:

* ``pairs`` (an implant and a GSI series): every ordinary slice is matched to a GSI slice
  (paper Eq. 1) and registered onto the GSI grid (Eq. 2, :mod:`artifactgsi.register`); rows
  hold both images, the metal mask (Eq. 8: registered ordinary HU > ``metal_threshold_hu``),
  and ``ideal`` / ``labels`` when the patient has ``ideal.nii.gz`` / ``labels.nii.gz``.
  Patients are split 80/20 into ``train`` / ``test`` by patient, stratified by implant type,
  from a seed (independent of the pseudonymisation key).
* ``clean`` (no implant): ordinary slices on their own grid (``train``).
* ``generalization`` (``split_hint=generalization``): ordinary slices and their metal mask,
  no ground truth (``test``).

Nothing identifying is written (:mod:`artifactgsi.dicom`): patient ids become
``HMAC-SHA256(secret, id)`` pseudonyms, and only allow-listed technical values leave the DICOM
headers. The secret is the caller's, or random per build; a random one is kept only in
``OUT/.work/secret`` while a build is unfinished (so ``resume`` reproduces it) and deleted
with ``OUT/.work`` when the build completes.

The build is resumable: each patient's result is cached in ``OUT/.work/patients`` (atomic
writes) and a rerun with ``resume=True`` skips cached patients; shards are written to
``OUT/.work/stage`` and moved into place only when all are complete, so ``OUT`` never holds a
partial build. Results are deterministic (single-threaded registration, fixed order), so an
interrupted and resumed build gives byte-identical shards.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import settings as _settings
from .dicom import DicomError, Series, pseudonym, read_series
from .register import RegistrationConfig, RegistrationError, register_series

IMPLANT_TYPES = ("none", "hip_prosthesis", "fracture_fixation", "spinal_fixation")
BODY_REGIONS = ("thoracic_spine", "lumbar_spine", "pelvis", "hip", "femur", "knee")
SPLIT_HINTS = ("", "train", "test", "generalization", "clean")
LABEL_NAMES = ("background", "metal", "left_pelvis", "right_pelvis", "left_femur",
               "right_femur")
MANIFEST_COLUMNS = ("patient_id", "implant_type", "body_region", "scanner", "has_labels",
                    "split_hint")
#: Paper Eq. 8 threshold on the registered ordinary image. Cortical bone stays below ~2000 HU
#: at 120 kVp; titanium (the least dense implant metal) reaches ~3000 HU in ordinary CT even
#: with partial volume at 3.5 mm pixels (ArtifactGSI-Sim, 128 px: 2500 HU gives the best Dice
#: against the true metal label for Ti pedicle screws, 0.80).
METAL_THRESHOLD_HU = 2500.0
CONFIG_SPLITS = {"pairs": ("train", "test"), "clean": ("train",), "generalization": ("test",)}
WORK_DIR = ".work"
WORK_FORMAT = "artifactgsi-build-work/1"
KEY_BYTES = 32


class BuildError(ValueError):
    """The raw tree or the output folder cannot be built as asked (names the file and why)."""


# ---------------------------------------------------------------------------------------------
# Raw manifest
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawPatient:
    """One row of ``RAW/manifest.csv`` (``line``: its line number, for messages)."""

    patient_id: str
    implant_type: str
    body_region: str
    scanner: str
    has_labels: bool
    split_hint: str
    line: int
    folder: Path

    @property
    def role(self) -> str:
        """The config the patient goes to: ``pairs``, ``clean`` or ``generalization``."""
        if self.split_hint == "generalization":
            return "generalization"
        return "clean" if self.implant_type == "none" else "pairs"


def _parse_bool(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "y"):
        return True
    if v in ("0", "false", "no", "n", ""):
        return False
    raise BuildError(f"{where}: has_labels {value!r} is not 0/1/true/false")


def read_raw_manifest(raw: Path) -> list[RawPatient]:
    """Read and check ``RAW/manifest.csv``; raises :class:`BuildError` naming the line."""
    raw = Path(raw)
    path = raw / "manifest.csv"
    if not path.is_file():
        raise BuildError(f"{path}: missing (the raw layout needs manifest.csv with columns "
                         f"{', '.join(MANIFEST_COLUMNS)})")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in MANIFEST_COLUMNS if c not in cols]
        if missing:
            raise BuildError(f"{path}: missing column(s) {', '.join(missing)} (has "
                             f"{', '.join(cols) or 'none'})")
        rows = list(reader)
    if not rows:
        raise BuildError(f"{path}: no patients listed")
    out, seen = [], {}
    for n, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        where = f"{path} line {n}"
        pid = row["patient_id"]
        if not pid or pid in (".", "..") or "/" in pid or "\\" in pid:
            raise BuildError(f"{where}: patient_id {pid!r} is not a folder name")
        if pid in seen:
            raise BuildError(f"{where}: patient_id {pid!r} already on line {seen[pid]}")
        seen[pid] = n
        if row["implant_type"] not in IMPLANT_TYPES:
            raise BuildError(f"{where}: unknown implant_type {row['implant_type']!r}; expected "
                             f"one of {', '.join(IMPLANT_TYPES)}")
        if row["body_region"] not in BODY_REGIONS:
            raise BuildError(f"{where}: unknown body_region {row['body_region']!r}; expected "
                             f"one of {', '.join(BODY_REGIONS)}")
        hint = row["split_hint"]
        if hint not in SPLIT_HINTS:
            raise BuildError(f"{where}: split_hint {hint!r} is not one of "
                             f"{', '.join(repr(h) for h in SPLIT_HINTS)}")
        if hint == "clean" and row["implant_type"] != "none":
            raise BuildError(f"{where}: split_hint 'clean' needs implant_type 'none', got "
                             f"{row['implant_type']!r}")
        if hint in ("train", "test") and row["implant_type"] == "none":
            raise BuildError(f"{where}: split_hint {hint!r} is for implant patients (pairs); "
                             "a patient without implant goes to the clean config")
        folder = raw / pid
        if not (folder / "ordinary").is_dir():
            raise BuildError(f"{folder / 'ordinary'}: missing (patient {pid}, {where})")
        out.append(RawPatient(pid, row["implant_type"], row["body_region"], row["scanner"],
                              _parse_bool(row["has_labels"], where), hint, n, folder))
    return out


def assign_splits(patients: list[RawPatient], seed: int = 0, test_fraction: float = 0.2
                  ) -> dict[str, str]:
    """``{patient_id: "train" | "test"}`` for ``pairs`` patients: by patient, stratified.

    Patients with a ``train`` / ``test`` hint keep it. Of the others, ``round(test_fraction *
    N)`` (at least 1 when N >= 2) go to test, shared among implant types by largest
    remainder, chosen within each type by a permutation seeded by ``seed`` of the sorted ids:
    the split depends on the seed and the ids only, not on the pseudonymisation key.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out = {p.patient_id: p.split_hint for p in patients
           if p.role == "pairs" and p.split_hint in ("train", "test")}
    free = sorted((p for p in patients if p.role == "pairs" and p.patient_id not in out),
                  key=lambda p: p.patient_id)
    n = len(free)
    total = int(math.floor(test_fraction * n + 0.5))
    if n >= 2 and test_fraction > 0:
        total = min(n - 1, max(1, total))
    rng = np.random.default_rng(seed)
    strata = {t: [p.patient_id for p in free if p.implant_type == t] for t in IMPLANT_TYPES}
    strata = {t: ids for t, ids in strata.items() if ids}
    # Proportional allocation of the test patients to implant types; the remainder goes to
    # the largest fractional parts (ties in a seeded random order).
    quota = {t: total * len(ids) / n for t, ids in strata.items()}
    counts = {t: int(math.floor(q)) for t, q in quota.items()}
    tie = dict(zip(strata, rng.permutation(len(strata)), strict=True))
    by_remainder = sorted(strata, key=lambda t: (counts[t] - quota[t], tie[t]))
    for t in by_remainder[:total - sum(counts.values())]:
        counts[t] += 1
    for t, ids in strata.items():
        perm = rng.permutation(len(ids))
        test = {ids[k] for k in perm[:counts[t]]}
        for pid in ids:
            out[pid] = "test" if pid in test else "train"
    return out


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------
def features_for(config: str, shape: tuple[int, int]):
    """The ``datasets.Features`` of a config for images of ``shape`` ``(H, W)``."""
    from datasets import Array2D, ClassLabel, Features, List, Value

    common = {
        "patient_id": Value("string"),
        "slice_index": Value("int32"),
        "z_mm": Value("float64"),
        "ordinary": Array2D(shape, "int16"),
    }
    meta = {
        "implant_type": ClassLabel(names=list(IMPLANT_TYPES)),
        "body_region": ClassLabel(names=list(BODY_REGIONS)),
        "pixel_spacing_mm": Value("float64"),
        "slice_thickness_mm": Value("float64"),
        "kvp": Value("float32"),
        "manufacturer": Value("string"),
        "model": Value("string"),
    }
    if config == "pairs":
        return Features({
            **common,
            "gsi": Array2D(shape, "int16"),
            "metal_mask": Array2D(shape, "uint8"),
            "ideal": Array2D(shape, "int16"),
            "labels": Array2D(shape, "uint8"),
            **meta,
            "gsi_kev": Value("float32"),
            "ordinary_slice_index": Value("int32"),
            "match_score": Value("float32"),
            "affine": List(Value("float64"), length=6),
            "registration_ncc": Value("float32"),
        })
    if config == "generalization":
        return Features({**common, "metal_mask": Array2D(shape, "uint8"), **meta})
    if config == "clean":
        return Features({**common, **meta})
    raise ValueError(f"unknown config {config!r}; expected one of {', '.join(CONFIG_SPLITS)}")


# ---------------------------------------------------------------------------------------------
# Per patient
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildSettings:
    """Everything that changes the built bytes besides the raw data and the key."""

    seed: int = 0
    test_fraction: float = 0.2
    metal_threshold_hu: float = METAL_THRESHOLD_HU
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    rows_per_shard: int = 256
    rows_per_group: int = 16
    license: str = "cc-by-4.0"
    pretty_name: str = "ArtifactGSI"

    def fingerprint(self, manifest_bytes: bytes) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode() + manifest_bytes
        return hashlib.sha256(blob).hexdigest()


def _inputs_fingerprint(folder: Path) -> str:
    """Hash of the patient's input files (relative names, sizes, mtimes): cache validity."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                     .encode())
    return h.hexdigest()


def _read_on_gsi_grid(path: Path, gsi: Series, what: str) -> np.ndarray:
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
    if not np.allclose(img.GetOrigin(), exp_origin, atol=0.01):
        raise BuildError(f"{path}: {what} origin {tuple(round(v, 3) for v in img.GetOrigin())} mm"
                         f" is not the GSI grid's {tuple(round(v, 3) for v in exp_origin)}")
    if not np.allclose(img.GetSpacing(), exp_spacing, rtol=1e-3, atol=1e-4):
        raise BuildError(f"{path}: {what} spacing {img.GetSpacing()} mm is not the GSI grid's "
                         f"{exp_spacing}")
    if not np.allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-4):
        raise BuildError(f"{path}: {what} direction {img.GetDirection()} is not axial identity")
    return arr


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _series_meta(s: Series) -> dict[str, Any]:
    return {"pixel_spacing_mm": float(s.pixel_spacing_mm),
            "slice_thickness_mm": float(s.slice_thickness_mm),
            "kvp": float(s.kvp) if s.kvp is not None else None,
            "manufacturer": s.manufacturer, "model": s.model}


def process_patient(patient: RawPatient, key: bytes, cfg: BuildSettings, work: Path
                    ) -> dict[str, Any]:
    """Read, match and register one patient; cache its rows in ``work/patients``.

    Returns the patient's metadata (also written as ``<pseudonym>.json`` beside the arrays,
    last, so a present JSON means a complete cache). Patients that cannot be used are
    returned with ``"skipped"`` (the reason) and no arrays.
    """
    pid = pseudonym(key, patient.patient_id)
    cache = Path(work) / "patients"
    cache.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"pseudonym": pid, "role": patient.role,
                            "implant_type": patient.implant_type,
                            "body_region": patient.body_region,
                            "inputs": _inputs_fingerprint(patient.folder), "warnings": []}
    ordinary = read_series(patient.folder / "ordinary", key)
    meta.update(_series_meta(ordinary), n_ordinary=len(ordinary.z_mm))
    arrays: dict[str, np.ndarray] = {}
    thr = cfg.metal_threshold_hu
    if patient.role in ("clean", "generalization"):
        n = len(ordinary.z_mm)
        arrays = {"ordinary": ordinary.volume_hu, "slice_index": np.arange(n, dtype=np.int32),
                  "z_mm": ordinary.z_mm}
        if patient.role == "generalization":
            arrays["metal_mask"] = (ordinary.volume_hu > thr).astype(np.uint8)
        meta.update(rows=n, shape=list(ordinary.volume_hu.shape[1:]), gsi_kev=None)
    else:
        gsi_dir = patient.folder / "gsi"
        if not gsi_dir.is_dir():
            meta["skipped"] = "no GSI series (gsi/ missing)"
            _write_text_atomic(cache / f"{pid}.json", json.dumps(meta, sort_keys=True))
            return meta
        gsi = read_series(gsi_dir, key)
        same_frame = (ordinary.frame_of_reference is None or gsi.frame_of_reference is None
                      or ordinary.frame_of_reference == gsi.frame_of_reference)
        if not same_frame:
            meta["warnings"].append("ordinary and GSI series have different frames of "
                                    "reference: slices matched by image content only")
        reg = register_series(ordinary.volume_hu, ordinary.grid, ordinary.z_mm, gsi.volume_hu,
                              gsi.grid, gsi.z_mm, cfg.registration, same_frame,
                              where=f"patient {patient.patient_id} ({patient.folder})")
        kept = [p for p in reg.pairs if p.ok]
        ideal = labels = None
        if (patient.folder / "ideal.nii.gz").is_file():
            ideal = _read_on_gsi_grid(patient.folder / "ideal.nii.gz", gsi, "ideal")
            if ideal.min() < -32768 or ideal.max() > 32767:
                raise BuildError(f"{patient.folder / 'ideal.nii.gz'}: HU outside int16")
            ideal = np.rint(ideal).astype(np.int16)
        lab_path = patient.folder / "labels.nii.gz"
        if lab_path.is_file():
            labels = _read_on_gsi_grid(lab_path, gsi, "labels")
            if labels.min() < 0 or labels.max() >= len(LABEL_NAMES):
                raise BuildError(f"{lab_path}: label values {labels.min()}..{labels.max()} "
                                 f"outside 0..{len(LABEL_NAMES) - 1} ({', '.join(LABEL_NAMES)})")
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
            "metal_mask": (ordinary_reg > thr).astype(np.uint8),
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
        meta.update(
            rows=len(kept), shape=list(gsi.grid.shape), gsi_kev=gsi.kev,
            pixel_spacing_mm=float(gsi.pixel_spacing_mm),
            slice_thickness_mm=float(gsi.slice_thickness_mm),
            n_gsi=len(gsi.z_mm), unmatched_ordinary=len(reg.unmatched_ordinary),
            z_offset_mm=reg.match.z_offset_mm,
            flagged=[{"slice_index": p.gsi_index, "ordinary_slice_index": p.ordinary_index,
                      "reasons": p.flags} for p in reg.pairs if not p.ok],
            match_score=[p.match_score for p in reg.pairs],
            ncc_before=[p.ncc_before for p in reg.pairs],
            registration_ncc=[p.registration_ncc for p in reg.pairs],
            has_ideal=ideal is not None, has_labels=labels is not None,
        )
    _save_npz_atomic(cache / f"{pid}.npz", arrays)
    _write_text_atomic(cache / f"{pid}.json", json.dumps(meta, sort_keys=True))
    return meta


def _process_in_worker(args: tuple[RawPatient, bytes, BuildSettings, str]) -> dict[str, Any]:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one core per worker process
    patient, key, cfg, work = args
    return process_patient(patient, key, cfg, Path(work))


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------
def _iter_rows(config: str, metas: list[dict], work: Path) -> Iterator[dict[str, Any]]:
    """Rows of one config/split in order: patients by pseudonym, slices by index."""
    for meta in metas:
        with np.load(work / "patients" / f"{meta['pseudonym']}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        for r in range(meta["rows"]):
            row = {
                "patient_id": meta["pseudonym"],
                "slice_index": int(arrays["slice_index"][r]),
                "z_mm": float(arrays["z_mm"][r]),
                "ordinary": arrays["ordinary"][r],
                "implant_type": meta["implant_type"],
                "body_region": meta["body_region"],
                "pixel_spacing_mm": meta["pixel_spacing_mm"],
                "slice_thickness_mm": meta["slice_thickness_mm"],
                "kvp": meta["kvp"],
                "manufacturer": meta["manufacturer"],
                "model": meta["model"],
            }
            if config in ("pairs", "generalization"):
                row["metal_mask"] = arrays["metal_mask"][r]
            if config == "pairs":
                row.update(
                    gsi=arrays["gsi"][r],
                    ideal=arrays["ideal"][r] if "ideal" in arrays else None,
                    labels=arrays["labels"][r] if "labels" in arrays else None,
                    gsi_kev=meta["gsi_kev"],
                    ordinary_slice_index=int(arrays["ordinary_slice_index"][r]),
                    match_score=float(arrays["match_score"][r]),
                    affine=[float(v) for v in arrays["affine"][r]],
                    registration_ncc=float(arrays["registration_ncc"][r]),
                )
            yield row


def _encode(rows: list[dict[str, Any]], features) -> Any:
    """Rows -> a ``pyarrow.Table`` with the schema of ``features`` (HF metadata included)."""
    from datasets import Dataset

    columns = {name: [r[name] for r in rows] for name in features}
    return Dataset.from_dict(columns, features=features).data.table


def write_shards(config: str, split: str, metas: list[dict], work: Path, stage: Path,
                 cfg: BuildSettings, names: dict[str, str] | None = None
                 ) -> list[dict[str, Any]]:
    """Write one config/split as zstd Parquet shards under ``stage/<config>/``.

    Returns entries ``{"path", "rows", "num_bytes"}`` (``num_bytes``: Arrow bytes). Patients
    with different image shapes in one config are an error (``names`` maps pseudonyms to raw
    ids for that message).
    """
    import datasets
    import pyarrow.parquet as pq

    shapes = {tuple(m["shape"]) for m in metas}
    if len(shapes) > 1:
        by = {}
        for m in metas:
            by.setdefault(tuple(m["shape"]), (names or {}).get(m["pseudonym"], m["pseudonym"]))
        sizes = ", ".join(f"{s[0]}x{s[1]} (e.g. patient {p})" for s, p in sorted(by.items()))
        raise BuildError(f"config {config!r}: images of different sizes {sizes}; all series "
                         "of one config must share one matrix size")
    shape = shapes.pop()
    features = features_for(config, shape)
    schema = features.arrow_schema
    total = sum(m["rows"] for m in metas)
    n_shards = max(1, math.ceil(total / cfg.rows_per_shard))
    (stage / config).mkdir(parents=True, exist_ok=True)
    cdc = datasets.config.DEFAULT_CDC_OPTIONS  # what the Hub's Xet storage deduplicates on
    entries = []
    rows = _iter_rows(config, metas, work)
    for k in range(n_shards):
        rel = f"{config}/{split}-{k:05d}-of-{n_shards:05d}.parquet"
        n_rows = min(cfg.rows_per_shard, total - k * cfg.rows_per_shard)
        path = stage / rel
        nbytes = 0
        writer = pq.ParquetWriter(path, schema=schema, compression="zstd",
                                  compression_level=3, use_content_defined_chunking=cdc,
                                  write_page_index=True)
        try:
            done = 0
            while done < n_rows:
                batch = [next(rows) for _ in range(min(cfg.rows_per_group, n_rows - done))]
                table = _encode(batch, features)
                nbytes += table.nbytes
                writer.write_table(table, row_group_size=len(batch))
                done += len(batch)
            writer.add_key_value_metadata({"content_defined_chunking": json.dumps(cdc)})
        finally:
            writer.close()
        entries.append({"path": rel, "rows": n_rows, "num_bytes": nbytes})
    return entries


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
@dataclass
class BuildReport:
    """What a build produced.

    Attributes:
        out: the dataset folder.
        rows / patients: ``{config: {split: count}}``.
        skipped: ``[{"patient": pseudonym, "raw_id": raw id, "reason": ...}]`` (the raw id is
            for the operator's console; it is written nowhere in ``out``).
        flagged_slices: matched slices left out for low registration quality.
        registration: quality statistics (:func:`registration_stats`).
        seconds, slices_per_s: wall time; ordinary slices processed (read, matched,
            registered) per second by this run, excluding resumed patients.
        resumed_patients: patients taken from the ``.work`` cache.
        files: manifest entries.
        warnings: messages for the operator (may name raw paths; not written to ``out``).
    """

    out: Path
    rows: dict[str, dict[str, int]]
    patients: dict[str, dict[str, int]]
    skipped: list[dict[str, str]]
    flagged_slices: int
    registration: dict[str, Any]
    seconds: float
    slices_per_s: float
    resumed_patients: int
    files: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def _stats(values: list[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not v.size:
        return {"n": 0, "mean": None, "median": None, "p05": None, "min": None}
    return {"n": int(v.size), "mean": round(float(v.mean()), 4),
            "median": round(float(np.median(v)), 4),
            "p05": round(float(np.percentile(v, 5)), 4), "min": round(float(v.min()), 4)}


def registration_stats(metas: list[dict]) -> dict[str, Any]:
    """Summary of slice matching and registration over the ``pairs`` patients."""
    pairs = [m for m in metas if m["role"] == "pairs" and "skipped" not in m]
    cat = {k: [x for m in pairs for x in m[k]] for k in ("match_score", "ncc_before",
                                                         "registration_ncc")}
    return {
        "patients": len(pairs),
        "ordinary_slices": sum(m["n_ordinary"] for m in pairs),
        "matched_slices": sum(len(m["match_score"]) for m in pairs),
        "unmatched_ordinary_slices": sum(m["unmatched_ordinary"] for m in pairs),
        "flagged_slices": sum(len(m["flagged"]) for m in pairs),
        "kept_slices": sum(m["rows"] for m in pairs),
        "patients_with_z_shift": sum(1 for m in pairs if abs(m["z_offset_mm"]) > 1e-6),
        "match_score": _stats(cat["match_score"]),
        "ncc_before_registration": _stats(cat["ncc_before"]),
        "registration_ncc": _stats(cat["registration_ncc"]),
    }


def _load_key(work: Path, secret: bytes | None, resume: bool, fingerprint: str
              ) -> tuple[bytes, int]:
    """Prepare ``work`` and return (key, number of cached patients usable)."""
    state_path = work / "state.json"
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("format") != WORK_FORMAT or state.get("fingerprint") != fingerprint:
            raise BuildError(f"{work}: the cached build used other raw data or settings; "
                             "rerun without resume (or with the same settings)")
        if secret is None:
            if not (work / "secret").is_file():
                raise BuildError(f"{work}: the interrupted build used a secret of yours; pass "
                                 "the same secret to resume it")
            key = (work / "secret").read_bytes()
        else:
            key = secret
        check = hmac.new(key, b"artifactgsi-key-check", hashlib.sha256).hexdigest()
        if check != state.get("key_check"):
            raise BuildError(f"{work}: the secret differs from the interrupted build's; pass "
                             "the same secret or rerun without resume")
        shutil.rmtree(work / "stage", ignore_errors=True)
        return key, len(list((work / "patients").glob("*.json")))
    if work.exists():
        shutil.rmtree(work)
    (work / "patients").mkdir(parents=True)
    key = secret if secret is not None else secrets.token_bytes(KEY_BYTES)
    if secret is None:
        fd = os.open(work / "secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    state = {"format": WORK_FORMAT, "fingerprint": fingerprint,
             "key_check": hmac.new(key, b"artifactgsi-key-check", hashlib.sha256).hexdigest()}
    _write_text_atomic(state_path, json.dumps(state))
    return key, 0


def _check_out(out: Path, overwrite: bool) -> list[Path]:
    """Entries of a previous build to replace at commit; :class:`BuildError` if ``out`` holds
    anything else."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: exists and is not a folder")
    entries = [p for p in out.iterdir() if p.name != WORK_DIR] if out.exists() else []
    if not entries:
        return []
    manifest = out / _settings.MANIFEST_FILENAME
    is_build = False
    if manifest.is_file():
        try:
            is_build = json.loads(manifest.read_text()).get("format") == _settings.MANIFEST_FORMAT
        except (json.JSONDecodeError, UnicodeDecodeError):
            is_build = False
    if not overwrite or not is_build:
        what = "a previous build" if is_build else "other files"
        hint = "pass overwrite=True (--overwrite) to replace it" if is_build else \
            "choose an empty or new folder"
        raise BuildError(f"{out}: not empty ({what}: "
                         f"{', '.join(sorted(p.name for p in entries)[:5])}); {hint}")
    return entries


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("artifactgsi")
    except Exception:  # noqa: BLE001 - not installed: running from a source tree
        return "unknown"


def build_dataset(raw: Path, out: Path, workers: int = 1, resume: bool = False,
                  secret: bytes | None = None, *, seed: int = 0, test_fraction: float = 0.2,
                  metal_threshold_hu: float = METAL_THRESHOLD_HU,
                  registration: RegistrationConfig | None = None, rows_per_shard: int = 256,
                  license: str = "cc-by-4.0", pretty_name: str = "ArtifactGSI",
                  overwrite: bool = False, keep_work: bool = False, console=None
                  ) -> BuildReport:
    """Build the dataset in ``out`` from the raw tree ``raw``; see the module docstring.

    Args:
        raw: raw layout folder (``manifest.csv`` + one folder per patient).
        out: output folder; must be new or empty (or hold only an interrupted build's
            ``.work`` with ``resume``, or a previous build with ``overwrite``).
        workers: patient processes in parallel (each single-threaded).
        resume: reuse the patients cached in ``out/.work`` by an interrupted build with the
            same raw data and settings.
        secret: pseudonymisation key (bytes); default a random one for this build (then two
            builds give different pseudonyms; pass a secret for reproducible ids).
        seed, test_fraction: the patient-level train/test split.
        metal_threshold_hu: Eq. 8 threshold of ``metal_mask``.
        registration: slice matching / registration settings.
        rows_per_shard: rows per Parquet file (row groups of 16 rows).
        license, pretty_name: card metadata.
        overwrite: replace a previous build in ``out``.
        keep_work: keep ``out/.work`` (caches, and a random secret) after success.

    Raises:
        BuildError, DicomError, RegistrationError: naming the file / patient and the problem;
        ``out`` then holds no shard (only ``.work`` with finished patients, for ``resume``).
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .card import render_card

    raw, out = Path(raw), Path(out)
    console = console or Console(stderr=True)
    if workers < 1:
        raise BuildError(f"workers must be >= 1, got {workers}")
    if rows_per_shard < 1:
        raise BuildError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if secret is not None and (not isinstance(secret, bytes | bytearray) or not secret):
        raise BuildError("secret must be non-empty bytes")
    cfg = BuildSettings(seed=seed, test_fraction=test_fraction,
                        metal_threshold_hu=float(metal_threshold_hu),
                        registration=registration or RegistrationConfig(),
                        rows_per_shard=rows_per_shard, license=license,
                        pretty_name=pretty_name)
    patients = read_raw_manifest(raw)
    splits = assign_splits(patients, seed, test_fraction)
    old_entries = _check_out(out, overwrite)
    created_out = not out.exists()
    work = out / WORK_DIR
    fingerprint = cfg.fingerprint((raw / "manifest.csv").read_bytes())
    key, _ = _load_key(work, None if secret is None else bytes(secret), resume, fingerprint)
    process = process_patient

    t0 = time.perf_counter()
    metas: dict[str, dict] = {}
    todo: list[RawPatient] = []
    for p in patients:
        cached = work / "patients" / f"{pseudonym(key, p.patient_id)}.json"
        if resume and cached.is_file():
            meta = json.loads(cached.read_text())
            if meta.get("inputs") == _inputs_fingerprint(p.folder):
                metas[p.patient_id] = meta
                continue
        todo.append(p)
    resumed = len(metas)
    try:
        with Progress(TextColumn("[bold]build"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} patients"), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console,
                      transient=False) as prog:
            task = prog.add_task("", total=len(patients), completed=resumed)
            if workers == 1 or len(todo) <= 1:
                for p in todo:
                    prog.update(task, description=p.patient_id)
                    metas[p.patient_id] = process(p, key, cfg, work)
                    prog.advance(task)
            else:
                import concurrent.futures as cf
                import multiprocessing as mp

                ctx = mp.get_context("spawn")  # a clean interpreter per worker
                with cf.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
                    futures = {ex.submit(_process_in_worker, (p, key, cfg, str(work))): p
                               for p in todo}
                    try:
                        for fut in cf.as_completed(futures):
                            p = futures[fut]
                            metas[p.patient_id] = fut.result()
                            prog.update(task, description=p.patient_id)
                            prog.advance(task)
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        seconds_processing = time.perf_counter() - t0
        report = _finish(patients, metas, splits, key, cfg, raw, out, work, old_entries,
                         render_card, console)
    except BaseException:
        shutil.rmtree(work / "stage", ignore_errors=True)  # no partial shard stays behind
        cached = list((work / "patients").glob("*.json")) if work.exists() else []
        if cached:
            console.print(f"[yellow]build stopped[/]: {len(cached)} patients are cached in "
                          f"{work}; fix the problem and rerun with resume to continue")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if created_out and out.exists() and not any(out.iterdir()):
                out.rmdir()
        raise
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    n_slices = sum(metas[p.patient_id].get("n_ordinary", 0) for p in todo)
    report.seconds = time.perf_counter() - t0
    report.slices_per_s = n_slices / seconds_processing if todo and seconds_processing else 0.0
    report.resumed_patients = resumed
    return report


def _finish(patients: list[RawPatient], metas: dict[str, dict], splits: dict[str, str],
            key: bytes, cfg: BuildSettings, raw: Path, out: Path, work: Path,
            old_entries: list[Path], render_card, console) -> BuildReport:
    """Write shards, card and manifest to ``work/stage``, then move them into ``out``."""
    warnings, skipped = [], []
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in patients:
        meta = metas[p.patient_id]
        for w in meta.get("warnings", []):
            warnings.append(f"patient {p.patient_id}: {w}")
        if "skipped" in meta:
            skipped.append({"patient": meta["pseudonym"], "raw_id": p.patient_id,
                            "reason": meta["skipped"]})
            warnings.append(f"patient {p.patient_id} ({p.folder}): skipped: {meta['skipped']}")
            continue
        split = splits[p.patient_id] if p.role == "pairs" else CONFIG_SPLITS[p.role][0]
        if meta["rows"] == 0:
            warnings.append(f"patient {p.patient_id}: no slice kept")
            continue
        groups.setdefault((p.role, split), []).append(meta)
    for w in warnings:
        console.print(f"[yellow]warning[/]: {w}")
    if not groups:
        raise BuildError(f"{raw}: no patient gave any row (see the warnings above)")

    names = {metas[p.patient_id]["pseudonym"]: p.patient_id for p in patients}
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    files, summary_configs = [], {}
    for config, config_splits in CONFIG_SPLITS.items():
        for split in config_splits:
            metas_cs = sorted(groups.get((config, split), []), key=lambda m: m["pseudonym"])
            if not metas_cs:
                continue
            entries = write_shards(config, split, metas_cs, work, stage, cfg, names)
            files += entries
            implants: dict[str, int] = {}
            regions: dict[str, int] = {}
            for m in metas_cs:
                implants[m["implant_type"]] = implants.get(m["implant_type"], 0) + 1
                regions[m["body_region"]] = regions.get(m["body_region"], 0) + 1
            summary_configs.setdefault(config, {})[split] = {
                "rows": sum(e["rows"] for e in entries), "patients": len(metas_cs),
                "num_bytes": sum(e["num_bytes"] for e in entries),
                "download_bytes": sum((stage / e["path"]).stat().st_size for e in entries),
                "files": [e["path"] for e in entries], "shape": metas_cs[0]["shape"],
                "implant_types": dict(sorted(implants.items())),
                "body_regions": dict(sorted(regions.items())),
            }
    all_metas = [metas[p.patient_id] for p in patients]
    used = [m for m in all_metas if "skipped" not in m]
    summary = {
        "pretty_name": cfg.pretty_name, "license": cfg.license,
        "configs": summary_configs,
        "registration": registration_stats(all_metas),
        "registration_config": asdict(cfg.registration),
        "metal_threshold_hu": cfg.metal_threshold_hu,
        "split": {"seed": cfg.seed, "test_fraction": cfg.test_fraction,
                  "by": "patient, stratified by implant type"},
        "skipped": sorted(({"patient": s["patient"], "reason": s["reason"]} for s in skipped),
                          key=lambda s: s["patient"]),
        "scanners": sorted({f"{m['manufacturer']} {m['model']}".strip() for m in used}),
        "kvp": sorted({m["kvp"] for m in used if m.get("kvp") is not None}),
        "gsi_kev": sorted({m["gsi_kev"] for m in used if m.get("gsi_kev") is not None}),
        "has_ideal": any(m.get("has_ideal") for m in used),
        "has_labels": any(m.get("has_labels") for m in used),
        "builder": f"artifactgsi {_version()}",
    }
    card = render_card(summary)
    (stage / _settings.CARD_FILENAME).write_text(card, encoding="utf-8")
    from .hub import sha256_file

    listed = []
    for e in files:
        path = stage / e["path"]
        listed.append({"path": e["path"], "sha256": sha256_file(path),
                       "bytes": path.stat().st_size, "rows": e["rows"]})
    card_path = stage / _settings.CARD_FILENAME
    listed.append({"path": _settings.CARD_FILENAME, "sha256": sha256_file(card_path),
                   "bytes": card_path.stat().st_size, "rows": None})
    listed.sort(key=lambda e: e["path"])
    manifest = {
        "format": _settings.MANIFEST_FORMAT,
        "files": listed,
        "configs": {c: {s: {"rows": v["rows"], "patients": v["patients"], "files": v["files"]}
                        for s, v in d.items()} for c, d in summary_configs.items()},
        "metal_threshold_hu": cfg.metal_threshold_hu,
        "builder": summary["builder"],
    }
    (stage / _settings.MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=1) + "\n",
                                                     encoding="utf-8")

    # Commit: remove a replaced build, move the new files in, the manifest last.
    for entry in old_entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for e in listed:
        dst = out / e["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / e["path"], dst)
    os.replace(stage / _settings.MANIFEST_FILENAME, out / _settings.MANIFEST_FILENAME)
    shutil.rmtree(stage, ignore_errors=True)

    reg = summary["registration"]
    return BuildReport(
        out=out,
        rows={c: {s: v["rows"] for s, v in d.items()} for c, d in summary_configs.items()},
        patients={c: {s: v["patients"] for s, v in d.items()} for c, d in summary_configs.items()},
        skipped=skipped, flagged_slices=reg["flagged_slices"], registration=reg,
        seconds=0.0, slices_per_s=0.0, resumed_patients=0, files=listed, warnings=warnings,
    )


# ---------------------------------------------------------------------------------------------
# Reading a built dataset
# ---------------------------------------------------------------------------------------------
def _table_columns(data: Any, columns: list[str]) -> dict[str, list]:
    """Columns of a ``datasets.Dataset`` or a ``pyarrow.Table`` as Python lists."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return {c: data.column(c).to_pylist() for c in columns}
    table = data.data.table if hasattr(data, "data") else None
    if table is not None and getattr(data, "_indices", None) is None:
        return {c: table.column(c).to_pylist() for c in columns}
    return {c: list(data[c]) for c in columns}


def neighbour_stack(data: Any, row_index: int, k: int, column: str = "ordinary") -> np.ndarray:
    """``(2k+1, H, W)`` images around a row: the same patient's slices by ``slice_index``.

    Args:
        data: a ``datasets.Dataset`` or ``pyarrow.Table`` with ``patient_id``,
            ``slice_index`` and ``column``.
        row_index: the centre row; k: neighbours each side (``k = 0``: the slice alone).

    Edge slices are repeated where the patient has fewer than ``k`` neighbours on a side.
    Returns the column's dtype (int16 HU for images), centre at index ``k``.
    """
    import pyarrow as pa

    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    cols = _table_columns(data, ["patient_id", "slice_index"])
    n = len(cols["patient_id"])
    if not 0 <= row_index < n:
        raise IndexError(f"row_index {row_index} outside 0..{n - 1}")
    pid = cols["patient_id"][row_index]
    rows = sorted((s, r) for r, (p, s) in enumerate(zip(cols["patient_id"], cols["slice_index"],
                                                        strict=True)) if p == pid)
    order = [r for _, r in rows]
    pos = order.index(row_index)
    picks = [order[min(max(pos + d, 0), len(order) - 1)] for d in range(-k, k + 1)]
    if isinstance(data, pa.Table):
        values = data.take(picks).column(column).to_pylist()
        return np.stack([np.asarray(v) for v in values]).astype(
            np.int16 if column in ("ordinary", "gsi", "ideal") else np.uint8)
    sub = data.with_format("numpy", columns=[column], dtype=None)[picks][column]
    return np.asarray(sub)


def info(path: Path) -> dict[str, Any]:
    """Summary of a built dataset folder: rows and patients per config/split, implant types,
    registration quality (from the shards themselves, checked against the manifest)."""
    import pyarrow.parquet as pq

    from .hub import read_card_metadata, read_manifest

    path = Path(path)
    manifest = read_manifest(path)
    card = read_card_metadata(path)
    implant_names = list(IMPLANT_TYPES)
    out: dict[str, Any] = {"path": str(path), "configs": {}, "license": card.get("license"),
                           "metal_threshold_hu": manifest.get("metal_threshold_hu"),
                           "builder": manifest.get("builder"), "registration": None}
    scores: list[float] = []
    nccs: list[float] = []
    for entry in manifest["files"]:
        rel = entry["path"]
        if not rel.endswith(".parquet"):
            continue
        config, fname = rel.split("/", 1)
        split = fname.split("-", 1)[0]
        cols = ["patient_id", "implant_type"]
        schema_names = pq.read_schema(path / rel).names
        if "match_score" in schema_names:
            cols += ["match_score", "registration_ncc"]
        t = pq.read_table(path / rel, columns=cols)
        d = out["configs"].setdefault(config, {}).setdefault(
            split, {"rows": 0, "patients": set(), "implant_types": {}, "files": 0})
        d["rows"] += t.num_rows
        d["files"] += 1
        pids = t.column("patient_id").to_pylist()
        for pid, it in zip(pids, t.column("implant_type").to_pylist(), strict=True):
            if pid not in d["patients"]:
                name = implant_names[it] if isinstance(it, int) else str(it)
                d["implant_types"][name] = d["implant_types"].get(name, 0) + 1
            d["patients"].add(pid)
        if "match_score" in cols:
            scores += t.column("match_score").to_pylist()
            nccs += t.column("registration_ncc").to_pylist()
    for d in out["configs"].values():
        for s in d.values():
            s["patients"] = len(s["patients"])
    if scores:
        out["registration"] = {"match_score": _stats(scores), "registration_ncc": _stats(nccs)}
    return out


def print_info(summary: dict[str, Any], console=None) -> None:
    """Print :func:`info` as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"{summary['path']}  (license {summary.get('license')}, metal threshold "
                    f"{summary.get('metal_threshold_hu')} HU)")
    for col in ("config", "split", "rows", "patients", "files", "implant types (patients)"):
        t.add_column(col, justify="right" if col in ("rows", "patients", "files") else "left")
    for config, splits in summary["configs"].items():
        for split, d in splits.items():
            t.add_row(config, split, str(d["rows"]), str(d["patients"]), str(d["files"]),
                      ", ".join(f"{k} {v}" for k, v in sorted(d["implant_types"].items())))
    console.print(t)
    reg = summary.get("registration")
    if reg:
        r = Table(title="registration quality (pairs, kept slices)")
        for col in ("measure", "n", "mean", "median", "5th pct", "min"):
            r.add_column(col, justify="left" if col == "measure" else "right")
        for name, st in reg.items():
            r.add_row(name, *(str(st[k]) for k in ("n", "mean", "median", "p05", "min")))
        console.print(r)


__all__ = [
    "BODY_REGIONS", "IMPLANT_TYPES", "LABEL_NAMES", "METAL_THRESHOLD_HU", "BuildError",
    "BuildReport", "BuildSettings", "DicomError", "RawPatient", "RegistrationError",
    "assign_splits", "build_dataset", "features_for", "info", "neighbour_stack", "print_info",
    "process_patient", "read_raw_manifest", "write_shards",
]
