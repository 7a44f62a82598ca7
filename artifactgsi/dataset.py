"""The read side of a built dataset: neighbour slices and a summary (``artifactgsi info``).

Neighbouring slices of a row are the same patient's rows ordered by ``slice_index``
(:class:`SliceIndex`); at the ends of a patient's series the edge slice is repeated. Every
reader (the benchmark's data loader, the methods' training code) uses this one definition.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactGSIError
from .schema import HU_IMAGE_COLUMNS, IMPLANT_TYPES, MASK_COLUMNS


class DatasetNotFoundError(ArtifactGSIError, FileNotFoundError):
    """A built dataset folder that does not exist (names it)."""


class DatasetContentError(ArtifactGSIError, ValueError):
    """A file of a built dataset holds something the schema does not allow, or a split's
    files disagree with the card or the manifest (names the file and the problem)."""


# ----------------------------------------------------------------------------- read checks

#: The builder's shard names: ``<config>/<split>-00000-of-00003.parquet``.
_SHARD_RE = re.compile(r"(?P<split>[^/]+)-\d{5}-of-\d{5}\.parquet")


def check_split(folder: Path, config: str, split: str, files: Sequence[str],
                where: str = "") -> None:
    """Check one split of a built dataset where it is read, before any number is computed.

    - the card (``README.md``, whose ``data_files`` chose ``files``) is the one the manifest
      lists (size and sha256), so a card edited to point a split at other files is refused
      while the manifest's sha256 would still claim the original data;
    - ``files`` are the split's own: a builder shard name must name ``split``, and where the
      manifest records each config's splits (``configs.<config>.<split>.files`` and
      ``rows``), the files and the row count must be those;
    - image columns hold int16 HU (``ordinary``, ``gsi``, ``ideal``) and uint8 masks
      (``metal_mask``, ``labels``), as :func:`artifactgsi.schema.features_for` declares;
    - ``pixel_spacing_mm`` is a finite number > 0 on every row.

    Args:
        folder: the dataset folder; files: the split's Parquet files, relative POSIX paths.

    Raises:
        DatasetContentError: naming the file (or the card / manifest) and the problem.
    """
    import json

    import pyarrow.parquet as pq

    from . import settings
    from .hub import manifest_entry_problems

    folder = Path(folder)
    where = where or str(folder)
    manifest_path = folder / settings.MANIFEST_FILENAME
    manifest = (json.loads(manifest_path.read_text(encoding="utf-8"))
                if manifest_path.is_file() else None)
    if manifest is not None:
        card = [e for e in manifest.get("files", []) if isinstance(e, dict)
                and e.get("path") == settings.CARD_FILENAME]
        problems, _ = manifest_entry_problems(folder, card)
        if problems:
            raise DatasetContentError(
                f"{folder / settings.CARD_FILENAME}: the dataset card differs from the one "
                f"{settings.MANIFEST_FILENAME} lists ({problems[settings.CARD_FILENAME]}); its "
                "data_files decide which files each split reads, so an edited card would "
                "score other data under the same manifest. Rebuild or re-download the dataset")
    for rel in files:
        m = _SHARD_RE.fullmatch(rel.rsplit("/", 1)[-1])
        if m is not None and m.group("split") != split:
            raise DatasetContentError(
                f"{folder / rel}: a shard of split {m.group('split')!r}, but the card lists it "
                f"for split {split!r} of config {config!r}; a split must read its own files")
    recorded = (manifest or {}).get("configs", {})
    entry = recorded.get(config, {}).get(split) if isinstance(recorded, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("files"), list):
        if sorted(entry["files"]) != sorted(files):
            raise DatasetContentError(
                f"{where}: split {split!r} of config {config!r} reads {sorted(files)}, but "
                f"{settings.MANIFEST_FILENAME} records {sorted(entry['files'])} for it")
        rows = sum(pq.read_metadata(folder / rel).num_rows for rel in files)
        if isinstance(entry.get("rows"), int) and rows != entry["rows"]:
            raise DatasetContentError(
                f"{where}: split {split!r} of config {config!r} has {rows} rows, "
                f"{settings.MANIFEST_FILENAME} records {entry['rows']}")
    for rel in files:
        path = folder / rel
        schema = pq.read_schema(path)
        for col, want in [*((c, "int16") for c in HU_IMAGE_COLUMNS),
                          *((c, "uint8") for c in MASK_COLUMNS)]:
            if col not in schema.names:
                continue
            kind = schema.field(col).type
            while hasattr(kind, "value_type"):  # list<list<int16>> -> int16
                kind = kind.value_type
            if str(kind) != want:
                what = "HU" if want == "int16" else "mask values"
                raise DatasetContentError(
                    f"{path}: column {col!r} holds {kind} {what}; the dataset stores {want} "
                    f"(exact HU, -32768..32767). A converted or edited file would change every "
                    "score: rebuild the dataset")
        if "pixel_spacing_mm" in schema.names:
            values = pq.read_table(path, columns=["pixel_spacing_mm"]).column(
                "pixel_spacing_mm").to_pylist()
            bad = [(i, v) for i, v in enumerate(values)
                   if isinstance(v, bool) or not isinstance(v, int | float)
                   or not math.isfinite(v) or v <= 0]
            if bad:
                i, v = bad[0]
                raise DatasetContentError(
                    f"{path}: pixel_spacing_mm is {v!r} on row {i} ({len(bad)} row(s) in "
                    "all); a pixel size must be a positive number of mm")


class SliceIndex:
    """Row order of every patient by ``slice_index``, for neighbour lookups.

    Args:
        patient_ids: one per row.
        slice_indices: one per row (ascending in z within a patient).
    """

    def __init__(self, patient_ids: Sequence[str], slice_indices: Sequence[int]) -> None:
        if len(patient_ids) != len(slice_indices):
            raise ValueError(f"SliceIndex: {len(patient_ids)} patient ids for "
                             f"{len(slice_indices)} slice indices")
        by_patient: dict[str, list[tuple[int, int]]] = {}
        for row, (pid, s) in enumerate(zip(patient_ids, slice_indices, strict=True)):
            by_patient.setdefault(pid, []).append((int(s), row))
        self.rows_of: dict[str, list[int]] = {}
        self.position = np.zeros(len(patient_ids), np.int64)
        self._patient = list(patient_ids)
        for pid, pairs in by_patient.items():
            order = [r for _, r in sorted(pairs)]
            self.rows_of[pid] = order
            for j, r in enumerate(order):
                self.position[r] = j

    def __len__(self) -> int:
        return len(self._patient)

    def neighbour_rows(self, row: int, k: int) -> list[int]:
        """The ``2k+1`` rows around ``row`` in its patient (centre at index ``k``), edge slices
        repeated where the patient has fewer than ``k`` neighbours on a side."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if not 0 <= row < len(self):
            raise IndexError(f"row_index {row} outside 0..{len(self) - 1}")
        rows = self.rows_of[self._patient[row]]
        j = int(self.position[row])
        return [rows[min(max(j + d, 0), len(rows) - 1)] for d in range(-k, k + 1)]


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
    picks = SliceIndex(cols["patient_id"], cols["slice_index"]).neighbour_rows(row_index, k)
    if isinstance(data, pa.Table):
        values = data.take(picks).column(column).to_pylist()
        return np.stack([np.asarray(v) for v in values]).astype(
            np.int16 if column in HU_IMAGE_COLUMNS else np.uint8)
    sub = data.with_format("numpy", columns=[column], dtype=None)[picks][column]
    return np.asarray(sub)


def quality_stats(values: list[float]) -> dict[str, float | None]:
    """n, mean, median, 5th percentile and min of the finite values (rounded to 1e-4)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not v.size:
        return {"n": 0, "mean": None, "median": None, "p05": None, "min": None}
    return {"n": int(v.size), "mean": round(float(v.mean()), 4),
            "median": round(float(np.median(v)), 4),
            "p05": round(float(np.percentile(v, 5)), 4), "min": round(float(v.min()), 4)}


def info(path: Path) -> dict[str, Any]:
    """Summary of a built dataset folder: rows and patients per config/split, implant types,
    registration quality (from the shards themselves, checked against the manifest).

    Raises:
        DatasetNotFoundError: ``path`` is not an existing folder.
        ManifestError, DatasetCardError: the folder is not a valid built dataset.
    """
    import pyarrow.parquet as pq

    from .hub import read_card_metadata, read_manifest

    path = Path(path)
    if not path.is_dir():
        raise DatasetNotFoundError(f"{path}: no such folder" if not path.exists()
                                   else f"{path}: not a folder (a built dataset is a folder)")
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
        out["registration"] = {"match_score": quality_stats(scores),
                               "registration_ncc": quality_stats(nccs)}
    return out


def _num(value: Any) -> str:
    """A number as plain text (never a numpy repr such as ``np.float64(0.5)``)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | str):
        return str(value)
    f = float(value)
    return str(int(f)) if f.is_integer() else f"{f:g}"


def print_info(summary: dict[str, Any], console=None) -> None:
    """Print :func:`info` as rich tables (values escaped: shown literally)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    t = Table(title=escape(f"{summary['path']}  (license {summary.get('license')}, metal "
                           f"threshold {_num(summary.get('metal_threshold_hu'))} HU)"))
    for col in ("config", "split", "rows", "patients", "files", "implant types (patients)"):
        t.add_column(col, justify="right" if col in ("rows", "patients", "files") else "left")
    for config, splits in summary["configs"].items():
        for split, d in splits.items():
            t.add_row(escape(config), escape(split), str(d["rows"]), str(d["patients"]),
                      str(d["files"]),
                      escape(", ".join(f"{k} {v}" for k, v in sorted(d["implant_types"].items()))))
    console.print(t)
    reg = summary.get("registration")
    if reg:
        r = Table(title="registration quality (pairs, kept slices)")
        for col in ("measure", "n", "mean", "median", "5th pct", "min"):
            r.add_column(col, justify="left" if col == "measure" else "right")
        for name, st in reg.items():
            r.add_row(name, *(_num(st[k]) for k in ("n", "mean", "median", "p05", "min")))
        console.print(r)


__all__ = ["DatasetContentError", "DatasetNotFoundError", "SliceIndex", "check_split", "info",
           "neighbour_stack", "print_info", "quality_stats"]
