"""The AAPM CT-MAR Grand Challenge's data format, read into (and written from) this toolkit.

The challenge (2023-24) distributes each training case as headerless little-endian float32
``.raw`` files, in folders ``Baseline/`` (with metal), ``Target/`` (without metal) and
``Mask/``, named::

    {prefix}_{anatomy}_metalart_img{i}_512x512x1.raw       image with metal (HU)
    {prefix}_{anatomy}_nometal_img{i}_512x512x1.raw        the same scan without metal (HU)
    {prefix}_{anatomy}_metalonlymask_img{i}_512x512x1.raw  the true metal (> 0.5 = metal)
    {prefix}_{anatomy}_metalart_sino{i}_900x1000.raw       sinogram with metal (optional)
    {prefix}_{anatomy}_nometal_sino{i}_900x1000.raw        sinogram without metal (optional)

``prefix`` is e.g. ``training``, ``anatomy`` is ``body`` (400 mm field of view) or ``head``
(220.16 mm), images are 512 x 512 row-major, sinograms 1000 views x 900 channels (the name
gives channels x views). Folders are searched recursively and may be nested in any way
(``body1/Baseline/...``); a case is identified by ``(prefix, anatomy, i)``.

:func:`import_aapm` turns such a folder into the ``aapm`` config of a built dataset (Parquet +
dataset card + ``manifest.json``, the builder's conventions), which
``marbench run --config aapm --protocol aapm-ctmar-2024`` scores in one command.
:func:`write_aapm_case` writes one case in the format (tests, and exporting simulated data).
Sizes are parameters (default: the challenge's), so tests can use tiny files; every file's
byte count is checked against them before it is read.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..errors import ArtifactGSIError
from ..fileio import replace_dir, sha256_file

__all__ = [
    "AAPM_FOV_MM", "AAPM_IMAGE_SIZE", "AAPM_SINO_SHAPE", "AAPMCase", "AAPMFormatError",
    "ImportReport", "find_cases", "import_aapm", "read_case", "read_raw", "write_aapm_case",
]

#: The challenge's image matrix and sinogram shape (views, channels).
AAPM_IMAGE_SIZE = 512
AAPM_SINO_SHAPE = (1000, 900)
#: Reconstruction field of view per anatomy, mm (the challenge's body and head settings).
AAPM_FOV_MM = {"body": 400.0, "head": 220.16}
#: The challenge's acquisition (XCIST simulation), recorded in every row.
AAPM_KVP = 120.0
AAPM_MANUFACTURER = "AAPM CT-MAR Grand Challenge"
AAPM_MODEL = "XCIST simulation (SID 550 mm, SDD 950 mm, 900 channels, 1000 views)"

_NAME_RE = re.compile(
    r"^(?P<prefix>[A-Za-z0-9]+)_(?P<anatomy>body|head)_"
    r"(?P<kind>metalart|nometal|metalonlymask)_(?P<what>img|sino)(?P<index>\d+)_"
    r"(?P<dims>\d+x\d+(?:x\d+)?)\.raw$")
_ROLES = {("metalart", "img"): "with_metal", ("nometal", "img"): "without_metal",
          ("metalonlymask", "img"): "metal_mask", ("metalart", "sino"): "sino_with_metal",
          ("nometal", "sino"): "sino_without_metal"}


class AAPMFormatError(ArtifactGSIError, ValueError):
    """A file or case is not in the challenge's format (the message names the file or the
    case and what is wrong)."""


@dataclass(frozen=True)
class AAPMCase:
    """One case's files (``None``: absent)."""

    prefix: str
    anatomy: str
    index: int
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        """``{prefix}_{anatomy}_{index}``: the case's id (``patient_id`` of its row)."""
        return f"{self.prefix}_{self.anatomy}_{self.index}"

    def expected_name(self, role: str, image_size: int = AAPM_IMAGE_SIZE,
                      sino_shape: tuple[int, int] = AAPM_SINO_SHAPE) -> str:
        """The file name a role's file of this case has in the format."""
        kind, what = next(k for k, r in _ROLES.items() if r == role)
        dims = (f"{image_size}x{image_size}x1" if what == "img"
                else f"{sino_shape[1]}x{sino_shape[0]}")
        return f"{self.prefix}_{self.anatomy}_{kind}_{what}{self.index}_{dims}.raw"


def image_name(prefix: str, anatomy: str, kind: str, index: int, size: int) -> str:
    return f"{prefix}_{anatomy}_{kind}_img{index}_{size}x{size}x1.raw"


def sino_name(prefix: str, anatomy: str, kind: str, index: int,
              shape: tuple[int, int]) -> str:
    return f"{prefix}_{anatomy}_{kind}_sino{index}_{shape[1]}x{shape[0]}.raw"


# ----------------------------------------------------------------------------- reading


def read_raw(path: Path, shape: tuple[int, ...], what: str = "file") -> np.ndarray:
    """A headerless little-endian float32 file as a ``shape`` array (float32).

    Raises:
        AAPMFormatError: the byte count is not ``4 * prod(shape)`` (names the file, the
            expected and the found size), or a value is not finite.
    """
    path = Path(path)
    want = 4 * math.prod(shape)
    size = path.stat().st_size
    if size != want:
        dims = " x ".join(str(s) for s in shape)
        found = (f"{size // 4} float32 values" if size % 4 == 0 else f"{size} bytes, not a "
                 "whole number of float32 values")
        raise AAPMFormatError(f"{path}: {what} should be {dims} float32 ({want} bytes), "
                              f"found {size} bytes ({found})")
    arr = np.fromfile(path, dtype="<f4").reshape(shape)
    if not np.isfinite(arr).all():
        raise AAPMFormatError(f"{path}: {what} holds {int((~np.isfinite(arr)).sum())} "
                              "non-finite values (NaN or inf)")
    return arr.astype(np.float32)


def find_cases(root: Path | str) -> list[AAPMCase]:
    """Every case under ``root`` (recursive), sorted by (prefix, anatomy, index).

    Raises:
        AAPMFormatError: ``root`` is not a folder, holds no file of the format, or holds the
            same file name twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise AAPMFormatError(f"{root}: not a folder of AAPM CT-MAR cases")
    found: dict[tuple[str, str, int], dict[str, Path]] = {}
    for path in sorted(root.rglob("*.raw")):
        m = _NAME_RE.match(path.name)
        if m is None:
            continue
        key = (m["prefix"], m["anatomy"], int(m["index"]))
        role = _ROLES[(m["kind"], m["what"])]
        files = found.setdefault(key, {})
        if role in files:
            raise AAPMFormatError(f"{root}: case {key[0]}_{key[1]}_{key[2]} has two "
                                  f"{role.replace('_', ' ')} files: {files[role]} and {path}")
        files[role] = path
    if not found:
        raise AAPMFormatError(f"{root}: no file named like "
                              "'training_body_metalart_img1_512x512x1.raw' (the AAPM CT-MAR "
                              "format) in this folder or below")
    return [AAPMCase(p, a, i, files) for (p, a, i), files in sorted(found.items())]


def _dims_of(path: Path) -> str:
    m = _NAME_RE.match(path.name)
    return m["dims"] if m else ""


@dataclass
class CaseData:
    """One case read: images (H, W) float32 HU, metal (H, W) bool, the pixel size, and the
    sinograms' sha256 (checked, not kept)."""

    case: AAPMCase
    with_metal: np.ndarray
    without_metal: np.ndarray
    metal: np.ndarray
    pixel_mm: float
    sinogram_sha256: dict[str, str] = field(default_factory=dict)


def read_case(case: AAPMCase, image_size: int = AAPM_IMAGE_SIZE,
              sino_shape: tuple[int, int] = AAPM_SINO_SHAPE,
              require_sinograms: bool = False) -> CaseData:
    """Read and check one case.

    Raises:
        AAPMFormatError: a required file is missing (the image with metal, the image without
            metal, the metal mask; the sinograms with ``require_sinograms``), a file name's
            dimensions or a file's byte count differ from ``image_size`` / ``sino_shape``, or
            the metal mask is not a mask (values other than 0 and 1).
    """
    where = f"case {case.case_id}"
    for role, what in (("with_metal", "image with metal (Baseline/)"),
                       ("without_metal", "image without metal (Target/)"),
                       ("metal_mask", "metal mask (Mask/)")):
        if role not in case.files:
            raise AAPMFormatError(f"{where}: no {what}: expected a file named "
                                  f"{case.expected_name(role, image_size, sino_shape)!r}; "
                                  f"found {sorted(p.name for p in case.files.values())}")
    if require_sinograms:
        for role in ("sino_with_metal", "sino_without_metal"):
            if role not in case.files:
                raise AAPMFormatError(f"{where}: no {role.replace('_', ' ')}: expected "
                                      f"{case.expected_name(role, image_size, sino_shape)!r}")
    img_dims = f"{image_size}x{image_size}x1"
    sino_dims = f"{sino_shape[1]}x{sino_shape[0]}"
    arrays = {}
    for role in ("with_metal", "without_metal", "metal_mask"):
        path = case.files[role]
        if _dims_of(path) != img_dims:
            raise AAPMFormatError(f"{path}: the name says {_dims_of(path)}, but images of "
                                  f"this import are {img_dims} (--image-size {image_size})")
        arrays[role] = read_raw(path, (image_size, image_size), role.replace("_", " "))
    mask = arrays["metal_mask"]
    if not np.isin(mask, (0.0, 1.0)).all():
        bad = np.unique(mask[~np.isin(mask, (0.0, 1.0))])[:5]
        raise AAPMFormatError(f"{case.files['metal_mask']}: a metal mask holds only 0 and 1, "
                              f"found also {bad.tolist()}")
    sino_sha = {}
    for role in ("sino_with_metal", "sino_without_metal"):
        path = case.files.get(role)
        if path is None:
            continue
        if _dims_of(path) != sino_dims:
            raise AAPMFormatError(f"{path}: the name says {_dims_of(path)}, but sinograms "
                                  f"of this import are {sino_dims} (channels x views)")
        read_raw(path, sino_shape, f"{role.replace('_', ' ')} ({sino_shape[0]} views x "
                                   f"{sino_shape[1]} channels)")
        sino_sha[role] = sha256_file(path)
    return CaseData(case=case, with_metal=arrays["with_metal"],
                    without_metal=arrays["without_metal"], metal=mask > 0.5,
                    pixel_mm=AAPM_FOV_MM[case.anatomy] / image_size, sinogram_sha256=sino_sha)


# ----------------------------------------------------------------------------- writing


def _write_raw(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    np.ascontiguousarray(arr, dtype="<f4").tofile(tmp)
    os.replace(tmp, path)


def write_aapm_case(root: Path | str, anatomy: str, index: int, with_metal: np.ndarray,
                    without_metal: np.ndarray, metal_mask: np.ndarray | None,
                    sino_with_metal: np.ndarray | None = None,
                    sino_without_metal: np.ndarray | None = None,
                    prefix: str = "training") -> dict[str, Path]:
    """Write one case in the challenge's layout under ``root/{anatomy}/`` (Baseline/,
    Target/, Mask/); image size and sinogram shape follow the arrays. ``metal_mask=None``
    writes no mask (a broken case). Returns the files by role."""
    if anatomy not in AAPM_FOV_MM:
        raise AAPMFormatError(f"anatomy must be one of {sorted(AAPM_FOV_MM)}, got {anatomy!r}")
    n = int(np.shape(with_metal)[0])
    base = Path(root) / anatomy
    out = {
        "with_metal": base / "Baseline" / image_name(prefix, anatomy, "metalart", index, n),
        "without_metal": base / "Target" / image_name(prefix, anatomy, "nometal", index, n),
    }
    if metal_mask is not None:
        out["metal_mask"] = base / "Mask" / image_name(prefix, anatomy, "metalonlymask",
                                                       index, n)
    for role, arr, kind, folder in (("sino_with_metal", sino_with_metal, "metalart", "Baseline"),
                                    ("sino_without_metal", sino_without_metal, "nometal",
                                     "Target")):
        if arr is not None:
            out[role] = base / folder / sino_name(prefix, anatomy, kind, index, np.shape(arr))
    data = {"with_metal": with_metal, "without_metal": without_metal,
            "metal_mask": None if metal_mask is None else np.asarray(metal_mask, np.float32),
            "sino_with_metal": sino_with_metal, "sino_without_metal": sino_without_metal}
    for role, path in out.items():
        _write_raw(path, np.asarray(data[role], np.float32))
    return out


# ----------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    """What :func:`import_aapm` wrote."""

    out: Path
    split: str
    rows: int
    files: list[dict[str, Any]]
    clipped_pixels: int
    warnings: list[str]


def _to_int16(hu: np.ndarray) -> tuple[np.ndarray, int]:
    """Round to integer HU (as every config stores HU); values beyond int16 are clipped and
    counted."""
    r = np.rint(hu)
    clipped = int(((r < -32768) | (r > 32767)).sum())
    return np.clip(r, -32768, 32767).astype(np.int16), clipped


def _rows(cases: Sequence[AAPMCase], image_size: int, sino_shape: tuple[int, int],
          require_sinograms: bool, stats: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for case in cases:
        d = read_case(case, image_size, sino_shape, require_sinograms)
        if not d.metal.any():
            stats["warnings"].append(f"case {case.case_id}: the metal mask is empty")
        ordinary, c1 = _to_int16(d.with_metal)
        reference, c2 = _to_int16(d.without_metal)
        stats["clipped"] += c1 + c2
        stats["sinograms"][case.case_id] = d.sinogram_sha256
        stats["anatomy"][case.anatomy] = stats["anatomy"].get(case.anatomy, 0) + 1
        yield {"patient_id": case.case_id, "slice_index": 0, "z_mm": 0.0,
               "ordinary": ordinary, "reference": reference,
               "metal_mask": d.metal.astype(np.uint8), "implant_type": "none",
               "anatomy": case.anatomy, "pixel_spacing_mm": d.pixel_mm, "kvp": AAPM_KVP,
               "manufacturer": AAPM_MANUFACTURER, "model": AAPM_MODEL}


def _card(summary: dict[str, Any]) -> str:
    import yaml

    from ..card import card_metadata

    meta = card_metadata(summary)
    meta["tags"] = ["medical", "computed-tomography", "metal-artifact-reduction",
                    "aapm-ct-mar"]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    from ..schema import COLUMN_DOCS, columns_for

    cols = set(columns_for("aapm"))
    d = summary["configs"]["aapm"][summary["split"]]
    lines = [
        f"---\n{front}---", "", f"# {summary['pretty_name']}", "",
        "Cases in the data format of the AAPM CT Metal Artifact Reduction Grand Challenge "
        "(2023-24), imported by `artifactgsi import-aapm`: per case the image with metal "
        "(`ordinary`), the same scan simulated without metal (`reference`, the challenge's "
        "ground truth) and the true metal mask. There is no GSI image.", "",
        f"- split `{summary['split']}`: {d['rows']} cases "
        f"({', '.join(f'{k} {v}' for k, v in sorted(summary['anatomy'].items()))});",
        "- HU rounded to integers (int16, as every config of this toolkit stores them; the "
        "challenge's float32 values differ by at most 0.5 HU)"
        + (f", {summary['clipped_pixels']} pixels clipped to the int16 range" if
           summary["clipped_pixels"] else "") + ";",
        "- pixel size: 400 mm / matrix (body) or 220.16 mm / matrix (head); 120 kVp; "
        "`implant_type` is `none` (the challenge's metal objects belong to no implant "
        "family);",
        "- sinograms, where present, were checked (1000 views x 900 channels of float32) "
        "and their sha256 are listed in `aapm_sinograms.json`; they are not stored: this "
        "toolkit's methods project images with its own projector (scanner profile `aapm`).",
        "", "Score any method with "
        "`marbench run --data THIS --config aapm --protocol aapm-ctmar-2024`.", "",
        "| column | meaning |", "| --- | --- |",
    ]
    lines += [f"| `{c}` | {m} |" for c, m in COLUMN_DOCS
              if {x.strip() for x in c.split(",")} & cols]
    lines += ["", f"Imported by {summary['builder']}.", ""]
    return "\n".join(lines)


def import_aapm(src: Path | str, out: Path | str, *, split: str = "test",
                image_size: int = AAPM_IMAGE_SIZE,
                sino_shape: tuple[int, int] = AAPM_SINO_SHAPE, require_sinograms: bool = False,
                limit: int | None = None, rows_per_group: int = 16,
                overwrite: bool = False) -> ImportReport:
    """Import the AAPM-format cases under ``src`` as the ``aapm`` config of a dataset at
    ``out`` (``aapm/{split}-00000-of-00001.parquet``, ``README.md``, ``manifest.json``), all
    written to a staging folder and moved into place at the end.

    Args:
        split: ``train`` or ``test``. limit: import only the first ``limit`` cases.
        image_size, sino_shape: the format's sizes (the challenge's by default).
        require_sinograms: refuse cases without both sinograms.
        overwrite: replace an existing ``out``.

    Raises:
        AAPMFormatError: no case, a broken case (names it), or ``out`` exists.
    """
    import datasets
    import pyarrow.parquet as pq

    from ..build.common import version
    from ..schema import CONFIG_SPLITS, features_for

    src, out = Path(src), Path(out)
    if split not in CONFIG_SPLITS["aapm"]:
        raise AAPMFormatError(f"--split must be one of {CONFIG_SPLITS['aapm']}, got {split!r}")
    if image_size < 8 or len(sino_shape) != 2 or min(sino_shape) < 1:
        raise AAPMFormatError(f"bad sizes: image {image_size}, sinogram {sino_shape}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AAPMFormatError(f"{out}: exists and is not empty (pass --overwrite to replace)")
    cases = find_cases(src)[:limit] if limit else find_cases(src)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "aapm").mkdir(parents=True)
    try:
        stats: dict[str, Any] = {"clipped": 0, "warnings": [], "sinograms": {}, "anatomy": {}}
        features = features_for("aapm", (image_size, image_size))
        rel = f"aapm/{split}-00000-of-00001.parquet"
        cdc = datasets.config.DEFAULT_CDC_OPTIONS
        writer = pq.ParquetWriter(stage / rel, schema=features.arrow_schema,
                                  compression="zstd", compression_level=3,
                                  use_content_defined_chunking=cdc, write_page_index=True)
        n_rows = nbytes = 0
        try:
            buf: list[dict[str, Any]] = []
            rows = _rows(cases, image_size, sino_shape, require_sinograms, stats)
            while True:
                row = next(rows, None)
                if row is not None:
                    buf.append(row)
                if buf and (row is None or len(buf) >= rows_per_group):
                    cols = {name: [r[name] for r in buf] for name in features}
                    table = datasets.Dataset.from_dict(cols, features=features).data.table
                    writer.write_table(table, row_group_size=len(buf))
                    n_rows += len(buf)
                    nbytes += table.nbytes
                    buf = []
                if row is None:
                    break
            writer.add_key_value_metadata({"content_defined_chunking": json.dumps(cdc)})
        finally:
            writer.close()
        sino_rel = "aapm_sinograms.json"
        (stage / sino_rel).write_text(json.dumps(
            {"format": "sha256 of each case's sinograms (checked, not stored)",
             "cases": stats["sinograms"]}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        summary = {
            "pretty_name": "AAPM CT-MAR cases (artifactgsi import)", "license": "other",
            "split": split, "anatomy": stats["anatomy"], "clipped_pixels": stats["clipped"],
            "builder": f"artifactgsi {version()}",
            "configs": {"aapm": {split: {
                "rows": n_rows, "num_bytes": nbytes,
                "download_bytes": (stage / rel).stat().st_size,
                "shape": [image_size, image_size]}}},
        }
        card = stage / settings.CARD_FILENAME
        card.write_text(_card(summary), encoding="utf-8")
        listed = sorted(({"path": p, "sha256": sha256_file(stage / p),
                          "bytes": (stage / p).stat().st_size,
                          "rows": n_rows if p == rel else None}
                         for p in (rel, sino_rel, settings.CARD_FILENAME)),
                        key=lambda e: e["path"])
        manifest = {"format": settings.MANIFEST_FORMAT, "files": listed,
                    "configs": {"aapm": {split: {"rows": n_rows, "patients": n_rows,
                                                 "files": [rel]}}},
                    "source": "AAPM CT-MAR Grand Challenge format",
                    "builder": summary["builder"]}
        (stage / settings.MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=1) + "\n",
                                                        encoding="utf-8")
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ImportReport(out=out, split=split, rows=n_rows, files=listed,
                        clipped_pixels=stats["clipped"], warnings=stats["warnings"])
