"""Step 3: write the cached rows of one config/split as zstd Parquet shards."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import PatientRecord, features_for
from .common import BuildError, BuildSettings


def iter_rows(config: str, records: list[PatientRecord], work: Path
              ) -> Iterator[dict[str, Any]]:
    """Rows of one config/split in order: patients as given, slices by index."""
    for rec in records:
        with np.load(Path(work) / "patients" / f"{rec.pseudonym}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        for r in range(rec.rows):
            row = {
                "patient_id": rec.pseudonym,
                "slice_index": int(arrays["slice_index"][r]),
                "z_mm": float(arrays["z_mm"][r]),
                "ordinary": arrays["ordinary"][r],
                "implant_type": rec.implant_type,
                "body_region": rec.body_region,
                "pixel_spacing_mm": rec.pixel_spacing_mm,
                "slice_thickness_mm": rec.slice_thickness_mm,
                "kvp": rec.kvp,
                "manufacturer": rec.manufacturer,
                "model": rec.model,
            }
            if config in ("pairs", "generalization"):
                row["metal_mask"] = arrays["metal_mask"][r]
            if config == "pairs":
                row.update(
                    gsi=arrays["gsi"][r],
                    ideal=arrays["ideal"][r] if "ideal" in arrays else None,
                    labels=arrays["labels"][r] if "labels" in arrays else None,
                    gsi_kev=rec.gsi_kev,
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


def write_shards(config: str, split: str, records: list[PatientRecord], work: Path,
                 stage: Path, cfg: BuildSettings, names: dict[str, str] | None = None
                 ) -> list[dict[str, Any]]:
    """Write one config/split as zstd Parquet shards under ``stage/<config>/``.

    Returns entries ``{"path", "rows", "num_bytes"}`` (``num_bytes``: Arrow bytes). Patients
    with different image shapes in one config are an error (``names`` maps pseudonyms to raw
    ids for that message).
    """
    import datasets
    import pyarrow.parquet as pq

    shapes = {tuple(r.shape) for r in records}
    if len(shapes) > 1:
        by: dict[tuple, str] = {}
        for r in records:
            by.setdefault(tuple(r.shape), (names or {}).get(r.pseudonym, r.pseudonym))
        sizes = ", ".join(f"{s[0]}x{s[1]} (e.g. patient {p})" for s, p in sorted(by.items()))
        raise BuildError(f"config {config!r}: images of different sizes {sizes}; all series "
                         "of one config must share one matrix size")
    shape = shapes.pop()
    features = features_for(config, shape)
    schema = features.arrow_schema
    total = sum(r.rows for r in records)
    n_shards = max(1, math.ceil(total / cfg.rows_per_shard))
    (stage / config).mkdir(parents=True, exist_ok=True)
    cdc = datasets.config.DEFAULT_CDC_OPTIONS  # what the Hub's Xet storage deduplicates on
    entries = []
    rows = iter_rows(config, records, work)
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


#: Columns that identify a build rather than the data (the keyed pseudonym): left out of the
#: content fingerprint, so builds of the same raw data with other keys share it.
_NOT_CONTENT = ("patient_id",)


def content_fingerprint(config: str, records: list[PatientRecord], work: Path) -> str:
    """sha256 of one config/split's content, independent of pseudonyms and row order: each
    patient's rows (every column but ``patient_id``, arrays as bytes) hashed in slice order,
    then the sorted patient hashes. Two builds of one raw folder with different keys have the
    same fingerprint; any changed pixel, label or patient changes it."""
    per_patient: dict[str, hashlib._Hash] = {}
    for row in iter_rows(config, records, work):
        h = per_patient.setdefault(row["patient_id"], hashlib.sha256())
        for k in sorted(row):
            if k in _NOT_CONTENT:
                continue
            v = row[k]
            h.update(k.encode())
            if isinstance(v, np.ndarray):
                h.update(str(v.dtype).encode() + str(v.shape).encode())
                h.update(np.ascontiguousarray(v).tobytes())
            else:
                h.update(repr(v).encode())
    digests = sorted(h.hexdigest() for h in per_patient.values())
    return hashlib.sha256("".join(digests).encode()).hexdigest()
