"""One pass over a predictions Parquet file: its slices, shapes, type and content digest.

A predictions file (``patient_id``, ``slice_index``, ``prediction``: a 2-D list of int16 HU
per row) is read in batches, never whole. :func:`scan_predictions` reports

- ``keys``: the (patient, slice) of every row, in file order;
- ``shapes``: the set of (H, W) shapes found (a board accepts exactly its own);
- ``content_sha256``: a digest of the decoded content, independent of how the Parquet file was
  encoded (compression, row groups, row order), so a copy of another entry's predictions is
  found even when re-encoded;
- ``problems``: why the file cannot be scored (missing column, not int16, ragged or null rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Rows read per batch (a 512 x 512 int16 slice is 0.5 MB).
BATCH_ROWS = 32


@dataclass
class PredictionsScan:
    keys: list[tuple[str, int]] = field(default_factory=list)
    shapes: set[tuple[int, int]] = field(default_factory=set)
    content_sha256: str | None = None
    problems: list[str] = field(default_factory=list)

    def shape_text(self) -> str:
        return ", ".join(f"{h} x {w}" for h, w in sorted(self.shapes)) or "none"


def _list_parts(col):  # type: ignore[no-untyped-def]
    """(offsets, child) of a list column, whatever list flavour Arrow gave it."""
    import pyarrow as pa

    if isinstance(col.type, pa.ExtensionType):  # datasets' Array2D: its storage is a list
        col = col.storage
    if pa.types.is_fixed_size_list(col.type):
        n = col.type.list_size
        return np.arange(len(col) + 1, dtype=np.int64) * n + col.offset * n, col.values
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return col.offsets.to_numpy().astype(np.int64), col.values
    return None, None


def scan_predictions(path: Path) -> PredictionsScan:
    """Read ``path`` once (see the module docstring); problems are recorded, not raised."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scan = PredictionsScan()
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        scan.problems.append(f"{path.name}: not a readable Parquet file ({e})")
        return scan
    names = pf.schema_arrow.names
    missing = [c for c in ("patient_id", "slice_index", "prediction") if c not in names]
    if missing:
        scan.problems.append(f"{path.name}: no column(s) {missing}; a predictions file has "
                             "patient_id, slice_index and prediction")
        return scan
    rows: dict[tuple[str, int], bytes] = {}
    bad_rows: list[str] = []
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS,
                                     columns=["patient_id", "slice_index", "prediction"]):
            pids = batch.column(0).to_pylist()
            idx = batch.column(1).to_pylist()
            col = batch.column(2)
            outer, inner = _list_parts(col)
            mid, leaf = _list_parts(inner) if inner is not None else (None, None)
            if outer is None or mid is None or leaf.type != pa.int16():
                scan.problems.append(f"{path.name}: column prediction is {col.type}, not a "
                                     "2-D list of int16 HU")
                return scan
            values = leaf.to_numpy(zero_copy_only=False)
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            for i, (p, s) in enumerate(zip(pids, idx, strict=True)):
                if p is None or s is None or not valid[i]:
                    bad_rows.append(f"row {len(scan.keys)} is empty")
                    scan.keys.append((str(p), -1 if s is None else int(s)))
                    continue
                key = (str(p), int(s))
                scan.keys.append(key)
                r0, r1 = outer[i], outer[i + 1]
                lens = np.diff(mid[r0:r1 + 1])
                h, w = int(r1 - r0), int(lens[0]) if r1 > r0 else 0
                if h == 0 or w == 0 or (lens != w).any():
                    bad_rows.append(f"{p} slice {s} is not a 2-D image")
                    continue
                scan.shapes.add((h, w))
                a = values[mid[r0]:mid[r1]]
                digest = hashlib.sha256(f"{p}\0{s}\0{h}x{w}\0".encode())
                digest.update(np.ascontiguousarray(a, dtype="<i2").tobytes())
                rows[key] = digest.digest()
    except (OSError, pa.ArrowException, ValueError) as e:
        scan.problems.append(f"{path.name}: cannot be read ({e})")
        return scan
    if bad_rows:
        scan.problems.append(f"{path.name}: {len(bad_rows)} row(s) cannot be scored, e.g. "
                             f"{bad_rows[0]}")
    total = hashlib.sha256()
    for key in sorted(rows):
        total.update(rows[key])
    scan.content_sha256 = total.hexdigest()
    return scan
