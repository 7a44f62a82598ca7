"""Settings, report and error shared by the build steps."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactGSIError
from ..register import RegistrationConfig
from ..schema import METAL_THRESHOLD_HU

WORK_DIR = ".work"
WORK_FORMAT = "artifactgsi-build-work/1"
KEY_BYTES = 32


class BuildError(ArtifactGSIError, ValueError):
    """The raw tree or the output folder cannot be built as asked (names the file and why)."""


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
        """sha256 of these settings and the raw manifest's bytes (cache validity)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode() + manifest_bytes
        return hashlib.sha256(blob).hexdigest()


@dataclass
class BuildReport:
    """What a build produced.

    Attributes:
        out: the dataset folder.
        rows / patients: ``{config: {split: count}}``.
        skipped: ``[{"patient": pseudonym, "raw_id": raw id, "reason": ...}]`` (the raw id is
            for the operator's console; it is written nowhere in ``out``).
        flagged_slices: matched slices left out for low registration quality.
        registration: quality statistics (:func:`artifactgsi.build.registration_stats`).
        seconds, slices_per_s: wall time; ordinary slices processed (read, matched,
            registered) per second by this run, excluding resumed patients.
        resumed_patients: patients taken from the ``.work`` cache.
        files: manifest entries.
        warnings: messages for the operator (may name raw paths; not written to ``out``);
            already printed once by the builder.
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


def version() -> str:
    """Installed version of the ``artifactgsi`` distribution ("unknown" from a source tree)."""
    try:
        from importlib.metadata import version as _version

        return _version("artifactgsi")
    except Exception:  # noqa: BLE001 - not installed: running from a source tree
        return "unknown"
