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
