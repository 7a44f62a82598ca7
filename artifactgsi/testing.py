"""Test data made by the library itself.

* :func:`tiny_built_dataset`: simulate a few tiny patients (32-64 px) with the real simulator
  and build them with the real builder, so tests see exactly the schema users get. Cached
  per folder (a pytest session fixture passes one folder for the whole run).
* :func:`series_from_testdata`: a multi-slice CT series made from one of pydicom's test files
  (``CT_small.dcm`` by default), optionally transformed per slice: DICOM that nobody in this
  project wrote, for the reader's bad-input tests.

Nothing here is imported by the library; it needs the ``dev`` extras only for pydicom's test
files (shipped with pydicom).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Settings of the tiny dataset: small enough for a test run on 2 CPU cores (about 10 s).
TINY_SIZE = 32
TINY_SLICES = 4
TINY_PATIENTS = 3
TINY_CLEAN_PATIENTS = 1
TINY_SECRET = b"artifactgsi-testing"


@dataclass(frozen=True)
class TinyBuild:
    """A tiny simulated raw tree and its build.

    Attributes:
        raw: the raw layout folder (``manifest.csv`` + patient folders).
        built: the built dataset folder (card, shards, ``manifest.json``).
        secret: the pseudonymisation key used for the build.
    """

    raw: Path
    built: Path
    secret: bytes


def tiny_built_dataset(root: Path, *, size: int = TINY_SIZE, slices: int = TINY_SLICES,
                       patients: int = TINY_PATIENTS, clean_patients: int = TINY_CLEAN_PATIENTS,
                       seed: int = 0) -> TinyBuild:
    """Simulate and build a tiny dataset under ``root`` (``root/raw``, ``root/built``).

    A finished build in ``root`` with the same settings is reused (``root/tiny.json`` records
    them, written last), so calling it again is free.
    """
    import torch

    from .build import build_dataset
    from .simulate import SimConfig, simulate_dataset

    if not 16 <= size <= 128:
        raise ValueError(f"tiny_built_dataset: size must be within 16..128 px, got {size}")
    root = Path(root)
    stamp = root / "tiny.json"
    settings = {"size": size, "slices": slices, "patients": patients,
                "clean_patients": clean_patients, "seed": seed}
    raw, built = root / "raw", root / "built"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return TinyBuild(raw, built, TINY_SECRET)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    threads = torch.get_num_threads()
    try:
        cfg = SimConfig(patients=patients, slices=slices, size=size, seed=seed,
                        clean_patients=clean_patients)
        simulate_dataset(cfg, raw, workers=1, console=_quiet_console())
        build_dataset(raw, built, secret=TINY_SECRET, test_fraction=0.34,
                      console=_quiet_console())
    finally:
        torch.set_num_threads(threads)
    tmp = stamp.with_name(f".{stamp.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(settings))
    os.replace(tmp, stamp)
    return TinyBuild(raw, built, TINY_SECRET)


def _quiet_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), stderr=False)  # noqa: SIM115 - lives with it


def series_from_testdata(out: Path, n_slices: int = 6, *, name: str = "CT_small.dcm",
                         edit: Callable[[Any, int], None] | None = None,
                         spacing_mm: float = 5.0) -> list[Path]:
    """Write ``n_slices`` copies of a pydicom test file as one axial series in ``out``.

    Each copy gets its own SOP Instance UID, Instance Number and ImagePositionPatient z
    (``spacing_mm`` apart, ascending), everything else as in the test file; ``edit(ds, i)``
    may then change dataset ``ds`` of slice ``i`` in place (e.g. set MONOCHROME1). Returns
    the paths written (``IM0001.dcm`` ...).
    """
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file(name)
    if src is None:
        raise FileNotFoundError(f"pydicom test file {name!r} not found")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_slices):
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + i * spacing_mm]
        if "SliceLocation" in ds:
            ds.SliceLocation = z + i * spacing_mm
        if edit is not None:
            edit(ds, i)
        path = out / f"IM{i + 1:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def require_tool(name: str, *, apt_package: str | None = None) -> str:
    """Path of the executable ``name`` for a test; skip without it, except under
    ``CI=true``, where the test fails: CI installs every tool its tests need, so a missing
    one must not pass unnoticed as a skip.

    Args:
        name: the executable (``dciodvfy``, ``chromium``).
        apt_package: the Debian package that provides it (default: ``name``).
    """
    import os
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (apt-get install {apt_package or name})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{msg}; CI=true, so this test must run")
        pytest.skip(msg)
    return path


# ----------------------------------------------------------------------------- hand-made pairs

#: Patients of :func:`write_tiny_pairs`' test split: (id, implant type, simulated?).
TINY_PAIRS_PATIENTS: tuple[tuple[str, str, bool], ...] = (
    ("P000", "hip_prosthesis", True), ("P001", "fracture_fixation", False))


def _tiny_slice(rng: Any, metal_radius: float, bone_x: float, size: int) -> dict[str, Any]:
    """One synthetic slice with known content: ideal (clean truth), GSI (mild residual
    streaks), ordinary (strong streaks), labels (bone 2, metal 1). Lengths are in pixels of
    a 64-pixel image, scaled to ``size``."""
    import numpy as np

    from .schema import METAL_THRESHOLD_HU

    f = size / 64.0
    yy, xx = np.mgrid[:size, :size].astype(np.float64) / f
    c = (size - 1) / 2 / f
    clean = np.full((size, size), -1000.0)
    body = ((yy - c) / 26.0) ** 2 + ((xx - c) / 29.0) ** 2 <= 1.0
    clean[body] = 40.0
    clean[body & (((yy - c) / 26.0) ** 2 + ((xx - c) / 29.0) ** 2 > 0.8)] = -100.0  # fat
    bone = (yy - c) ** 2 + (xx - bone_x) ** 2 <= 6.0**2
    clean[bone] = 700.0
    my, mx = c + 2.0, c + 9.0
    metal = (yy - my) ** 2 + (xx - mx) ** 2 <= metal_radius**2
    clean[metal] = 3000.0
    r = np.hypot(yy - my, xx - mx)
    theta = np.arctan2(yy - my, xx - mx)
    streaks = (np.cos(12 * theta) - 0.6 * np.cos(2 * theta)) * np.exp(-r / 14.0) * body
    gsi = clean + 40.0 * streaks + rng.normal(0.0, 8.0, clean.shape)
    ordinary = clean + 450.0 * streaks + rng.normal(0.0, 15.0, clean.shape)
    ordinary[metal] = 3071.0
    labels = np.zeros((size, size), np.uint8)
    labels[bone] = 2
    labels[metal] = 1
    as_i16 = {k: np.rint(v).astype(np.int16) for k, v in
              {"ideal": clean, "gsi": gsi, "ordinary": ordinary}.items()}
    return {**as_i16, "metal_mask": (as_i16["ordinary"] > METAL_THRESHOLD_HU).astype(np.uint8),
            "labels": labels}


def write_tiny_pairs(folder: Path, seed: int = 0, ideal: bool | None = None, size: int = 64,
                     slices: int = 3) -> Path:
    """A hand-made ``pairs`` dataset with exactly known content, in the builder's layout and
    with the schema's own columns and types (:func:`artifactgsi.schema.features_for`): card,
    ``pairs/{train,test}`` Parquet, ``manifest.json``.

    Test split: the two :data:`TINY_PAIRS_PATIENTS` x ``slices`` slices of ``size`` x
    ``size``, stored out of slice order; train split: one patient. ``ideal``: ``None`` gives
    P000 (simulated) an ideal image and P001 none (null); ``True`` / ``False`` gives every /
    no row one. For tests that need numbers known in advance; :func:`tiny_built_dataset` is
    the simulator and builder end to end.
    """
    import numpy as np
    import pyarrow.parquet as pq
    from datasets import Dataset

    from .fileio import sha256_file, write_text_atomic
    from .schema import BODY_REGIONS, IMPLANT_TYPES, columns_for, features_for

    features = features_for("pairs", (size, size))
    rng = np.random.default_rng(seed)
    (folder / "pairs").mkdir(parents=True, exist_ok=True)
    for split, patients in (("test", TINY_PAIRS_PATIENTS),
                            (("train", (("P900", "spinal_fixation", True),)))):
        rows: dict[str, list[Any]] = {k: [] for k in columns_for("pairs")}
        for p, (pid, implant, simulated) in enumerate(patients):
            for s in range(slices):
                si = (s + slices - 1) % slices  # out of order: readers must sort
                img = _tiny_slice(rng, metal_radius=2.0 + (si % 3) + 2 * p,
                                  bone_x=14.0 + 2 * (si % 3), size=size)
                has_ideal = simulated if ideal is None else ideal
                values = {
                    "patient_id": pid, "slice_index": si, "z_mm": 2.5 * si,
                    "ideal": img["ideal"] if has_ideal else None,
                    "implant_type": IMPLANT_TYPES.index(implant),
                    "body_region": BODY_REGIONS.index("hip"),
                    "pixel_spacing_mm": 448.0 / size,  # a 448 mm field of view
                    "slice_thickness_mm": 2.5, "kvp": 120.0, "gsi_kev": 70.0,
                    "manufacturer": "GE", "model": "Discovery CT750 HD",
                    "ordinary_slice_index": si, "match_score": 0.99,
                    "affine": [1.0, 0.0, 0.5, 0.0, 1.0, -0.5], "registration_ncc": 0.97,
                    **{k: img[k] for k in ("ordinary", "gsi", "metal_mask", "labels")}}
                for k in rows:
                    if k not in values:
                        raise KeyError(f"write_tiny_pairs has no value for the schema's new "
                                       f"column {k!r}; add one here")
                    rows[k].append(values[k])
        Dataset.from_dict(rows, features=features).to_parquet(
            folder / "pairs" / f"{split}-00000-of-00001.parquet")
    write_text_atomic(folder / "README.md", (
        "---\nlicense: cc-by-nc-4.0\nconfigs:\n- config_name: pairs\n  data_files:\n"
        "  - split: train\n    path: pairs/train-*.parquet\n  - split: test\n"
        "    path: pairs/test-*.parquet\n---\n# Tiny ArtifactGSI (test fixture)\n"))
    files = []
    for rel in ("README.md", "pairs/test-00000-of-00001.parquet",
                "pairs/train-00000-of-00001.parquet"):
        p = folder / rel
        entry: dict[str, Any] = {"path": rel, "sha256": sha256_file(p),
                                 "bytes": p.stat().st_size}
        if rel.endswith(".parquet"):
            entry["rows"] = pq.read_metadata(p).num_rows
        files.append(entry)
    write_text_atomic(folder / "manifest.json", json.dumps(
        {"format": "artifactgsi-manifest/1", "files": files}, indent=1))
    return folder
