"""Step 1: read and check ``RAW/manifest.csv``; split the ``pairs`` patients by patient."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schema import BODY_REGIONS, IMPLANT_TYPES, MANIFEST_COLUMNS, SPLIT_HINTS
from .common import BuildError


@dataclass(frozen=True)
class RawPatient:
    """One row of ``RAW/manifest.csv`` (``line``: its line number in the file, for messages)."""

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


def _manifest_text(path: Path) -> str:
    """The manifest's text: UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8")."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise BuildError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at line {line}, "
                         f"offset {err.start}); save it as UTF-8 (in Excel: \"CSV UTF-8\")"
                         ) from None


def read_raw_manifest(raw: Path) -> list[RawPatient]:
    """Read and check ``RAW/manifest.csv``; raises :class:`BuildError` naming the line.

    The file is UTF-8 (a leading byte-order mark is allowed); blank lines are skipped, and
    line numbers in messages are those of the file.
    """
    raw = Path(raw)
    path = raw / "manifest.csv"
    if not path.is_file():
        raise BuildError(f"{path}: missing (the raw layout needs manifest.csv with columns "
                         f"{', '.join(MANIFEST_COLUMNS)})")
    reader = csv.DictReader(io.StringIO(_manifest_text(path), newline=""))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in MANIFEST_COLUMNS if c not in cols]
    if missing:
        raise BuildError(f"{path}: missing column(s) {', '.join(missing)} (has "
                         f"{', '.join(repr(c) for c in cols) or 'none'})")
    rows: list[tuple[int, dict]] = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))  # the row's last physical line
    except csv.Error as err:
        raise BuildError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None
    if not rows:
        raise BuildError(f"{path}: no patients listed")
    out, seen = [], {}
    for n, row in rows:
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


def unlisted_folders(raw: Path, patients: list[RawPatient]) -> list[Path]:
    """Folders of ``raw`` that look like patients (hold ``ordinary/``) but that
    ``manifest.csv`` does not list: they are not built, and the builder warns about each."""
    listed = {p.patient_id for p in patients}
    return sorted(d for d in Path(raw).iterdir()
                  if d.is_dir() and not d.name.startswith(".") and d.name not in listed
                  and (d / "ordinary").is_dir())


def assign_splits(patients: list[RawPatient], seed: int = 0, test_fraction: float = 0.2
                  ) -> dict[str, str]:
    """``{patient_id: "train" | "test"}`` for ``pairs`` patients: by patient, stratified.

    Patients with a ``train`` / ``test`` hint keep it. Of the others, ``round(test_fraction *
    N)`` (at least 1 when N >= 2) go to test, shared among implant types by largest
    remainder, chosen within each type by a permutation seeded by ``seed`` of the sorted ids:
    the split depends on the seed and the ids only, not on the pseudonymisation key.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise BuildError(f"test_fraction must be in [0, 1), got {test_fraction:g}")
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
