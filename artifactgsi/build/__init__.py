"""Build the Hugging Face dataset from a raw DICOM tree.

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

The columns of each config are defined in :mod:`artifactgsi.schema`. The steps, one module
each: :mod:`~artifactgsi.build.raw_manifest` (read and split the raw manifest),
:mod:`~artifactgsi.build.patient` (read, match and register one patient),
:mod:`~artifactgsi.build.shards` (Parquet shards), :mod:`~artifactgsi.build.merge` (card,
``manifest.json``, commit) and :mod:`~artifactgsi.build.pipeline` (the driver). The read side
of a built dataset is :mod:`artifactgsi.dataset`.

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

from ..dataset import info, neighbour_stack, print_info
from ..dicom import DicomError
from ..register import RegistrationError
from ..schema import (
    BODY_REGIONS,
    CONFIG_SPLITS,
    IMPLANT_TYPES,
    LABEL_NAMES,
    MANIFEST_COLUMNS,
    METAL_THRESHOLD_HU,
    SPLIT_HINTS,
    PatientRecord,
    features_for,
)
from .common import KEY_BYTES, WORK_DIR, WORK_FORMAT, BuildError, BuildReport, BuildSettings
from .merge import registration_stats
from .patient import process_patient
from .pipeline import build_dataset
from .raw_manifest import RawPatient, assign_splits, read_raw_manifest, unlisted_folders
from .shards import write_shards

__all__ = [
    "BODY_REGIONS", "CONFIG_SPLITS", "IMPLANT_TYPES", "KEY_BYTES", "LABEL_NAMES",
    "MANIFEST_COLUMNS", "METAL_THRESHOLD_HU", "SPLIT_HINTS", "WORK_DIR", "WORK_FORMAT",
    "BuildError", "BuildReport", "BuildSettings", "DicomError", "PatientRecord", "RawPatient",
    "RegistrationError", "assign_splits", "build_dataset", "features_for", "info",
    "neighbour_stack", "print_info", "process_patient", "read_raw_manifest",
    "registration_stats", "unlisted_folders", "write_shards",
]
