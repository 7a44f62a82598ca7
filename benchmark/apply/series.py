"""Apply a MAR method to one's own CT series and write a derived DICOM series.

:func:`apply_to_series` reads an axial CT series with the dataset builder's reader
(:func:`artifactgsi.dicom.read_series`: the same checks and named errors), computes the metal
mask with the protocol threshold (:data:`artifactgsi.schema.METAL_THRESHOLD_HU`), runs the
method over the volume in batches (with neighbour slices, edges repeated, when the method asks
for them) and writes a *derived* CT series beside the original:

* each output file is a copy of its source file's header (pydicom) with new Series and SOP
  Instance UIDs (the same Study and Frame of Reference), ImageType ``DERIVED\\SECONDARY``,
  SeriesDescription and DerivationDescription naming the method, its version and weights
  sha256, a new SeriesNumber, and a Source Image Sequence pointing at the source slice;
* the geometry is the source's (position, orientation, spacing, matrix; mirrored source
  axes are restored) and the pixels are in the source's stored representation (bits,
  signedness, rescale slope and intercept), written uncompressed (Explicit VR Little Endian);
  HU that do not fit the stored type are clipped and the result says how many;
* the folder appears complete or not at all (a hidden temporary folder, then a rename).

:func:`run_reference_free` is the path for data with no reference image (e.g. scans from a
scanner never seen in training): Fig. 4b-style panels and reference-free measures.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifactgsi.fileio import staged_dir

from .derived import _derivation, _derived_dataset, _now, _stored_range, _to_stored
from .errors import ApplyError, MissingImplantTypeError, OutputExistsError
from .reduce import _prepare, _work_size, iter_reduced, method_needs_implant_type, reduce_volume

__all__ = [
    "ApplyError", "ApplyResult", "MissingImplantTypeError", "OutputExistsError",
    "apply_to_series", "check_report_target", "check_separate", "iter_reduced",
    "method_needs_implant_type", "reduce_volume", "select_series",
]

#: Added to the source SeriesNumber to number the derived series.
SERIES_NUMBER_OFFSET = 1000

@dataclass
class ApplyResult:
    """What :func:`apply_to_series` wrote.

    Attributes:
        out_dir: the derived series folder.
        files: the files written, in slice order (ascending z).
        series_uid: SeriesInstanceUID of the derived series.
        method, version, weights_sha256, options: what made it.
        n_slices: slices written; metal_pixels: pixels above the metal threshold.
        clipped_pixels: output pixels clipped to the stored type's range.
        resampled_to_mm: the method's pixel size if the images were resampled, else ``None``.
        seconds: wall time of the whole call.
    """

    out_dir: Path
    files: list[Path]
    series_uid: str
    method: str
    version: str
    weights_sha256: str | None
    options: dict[str, Any]
    n_slices: int
    metal_pixels: int
    clipped_pixels: int
    resampled_to_mm: float | None
    seconds: float
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- input
def _dicom_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and not p.name.startswith(".")
                  and p.name.upper() != "DICOMDIR"
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _series_of(path: Path) -> tuple[str, str] | None:
    """(SeriesInstanceUID, SeriesDescription) of a DICOM file, ``None`` if not DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["SeriesInstanceUID", "SeriesDescription"])
    except Exception:  # noqa: BLE001 - not DICOM: the reader names it later
        return None
    return str(ds.get("SeriesInstanceUID", "")), str(ds.get("SeriesDescription", ""))


def select_series(input_dir: Path, series_uid: str | None = None) -> list[Path]:
    """The files of the one series to apply a method to.

    ``input_dir`` is a series folder, or a folder (searched recursively when it holds no file
    itself or when ``series_uid`` is given) with several series, one chosen by ``series_uid``.
    Files that are not DICOM stay in the selection so that the reader names them.

    Raises:
        ApplyError: no folder, no files, several series without ``series_uid`` (the message
            lists them), or no series with that UID.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ApplyError(f"{input_dir}: not a folder; INPUT must be a folder holding a DICOM "
                         "series (or several, with --series UID)")
    recursive = series_uid is not None or not _dicom_files(input_dir, False)
    files = _dicom_files(input_dir, recursive)
    if not files:
        raise ApplyError(f"{input_dir}: no files found; INPUT must hold a DICOM series")
    groups: dict[str, list[Path]] = {}
    descriptions: dict[str, str] = {}
    other: list[Path] = []
    for f in files:
        info = _series_of(f)
        if info is None:
            other.append(f)
            continue
        groups.setdefault(info[0], []).append(f)
        descriptions.setdefault(info[0], info[1])
    if series_uid is not None:
        if series_uid not in groups:
            raise ApplyError(f"{input_dir}: no series with SeriesInstanceUID {series_uid}; "
                             f"found: {_listing(groups, descriptions)}")
        return sorted(groups[series_uid])
    if len(groups) > 1:
        raise ApplyError(f"{input_dir}: {len(groups)} series found "
                         f"({_listing(groups, descriptions)}); choose one with --series UID")
    return files


def _listing(groups: dict[str, list[Path]], descriptions: dict[str, str]) -> str:
    return "; ".join(f"{uid or '(no UID)'} {descriptions.get(uid, '')!r} ({len(fs)} files)"
                     for uid, fs in groups.items())


def _read_selected(files: list[Path], input_dir: Path) -> Any:
    """Read ``files`` with the builder's reader; a subset is read through a folder of links,
    and error messages are given back the original paths."""
    from artifactgsi.dicom import DicomError, read_series

    folder = files[0].parent
    if all(f.parent == folder for f in files) and len(files) == len(_dicom_files(folder, False)):
        series = read_series(folder)
        return series, list(series.files)
    stage = Path(tempfile.mkdtemp(prefix="marbench-apply-"))
    try:
        names: dict[str, Path] = {}
        for i, f in enumerate(files):
            name = f.name if f.name not in names else f"{i:05d}-{f.name}"
            names[name] = f
            (stage / name).symlink_to(f.resolve())
        try:
            series = read_series(stage)
        except DicomError as e:
            msg = str(e)
            for name, f in names.items():
                msg = msg.replace(str(stage / name), str(f))
            raise DicomError(msg.replace(str(stage), str(input_dir))) from None
        by_name = {str(stage / n): f for n, f in names.items()}
        return series, [by_name[str(p)] for p in series.files]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_separate(input_path: Path | str, out_dir: Path | str, *, input_name: str = "INPUT",
                   out_name: str = "OUTPUT_DIR") -> None:
    """Refuse an output folder that is, contains, or lies inside the input (symlinks
    resolved): replacing it would delete the source series, or the patient folder holding
    it, and writing inside it would mix the derived series into the source.

    Raises:
        ApplyError: naming both paths.
    """
    src = Path(input_path).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    if out == src:
        why = "is the input folder itself"
    elif src.is_relative_to(out):
        why = "contains the input folder"
    elif out.is_relative_to(src):
        why = "lies inside the input folder"
    else:
        return
    raise ApplyError(f"{out_name} {out_dir} {why} ({input_name} {input_path}); writing "
                     f"there{' with --overwrite' if out.exists() else ''} would replace or mix "
                     "into the source series. Choose a folder outside the input")


def check_report_target(input_dir: Path | str, out_dir: Path | str, report: Path | str,
                        overwrite: bool) -> None:
    """Check ``--report REPORT`` before anything is written: it must be apart from the
    input and from the derived series, and new unless ``overwrite``."""
    check_separate(input_dir, report, out_name="--report")
    check_separate(out_dir, report, input_name="OUTPUT_DIR", out_name="--report")
    _prepare_out(Path(report), overwrite, option="--report")


def _prepare_out(out_dir: Path, overwrite: bool, option: str = "OUTPUT_DIR") -> None:
    if out_dir.exists():
        if not overwrite:
            raise OutputExistsError(f"{out_dir} already exists; choose a new {option} or pass "
                                    "--overwrite to replace it")
        if not out_dir.is_dir():
            raise ApplyError(f"{out_dir} exists and is not a folder")


def apply_to_series(method: str, input_dir: Path | str, out_dir: Path | str, *,
                    options: dict[str, Any] | None = None, series_uid: str | None = None,
                    implant_type: str | None = None, overwrite: bool = False,
                    deidentify: bool = False, secret: bytes | None = None,
                    device: str = "cpu", batch_size: int = 4,
                    threshold_hu: float | None = None) -> ApplyResult:
    """Apply ``method`` to the CT series in ``input_dir``; write a derived series to
    ``out_dir``.

    Args:
        method: registered name (``marbench ls``) or ``"pkg.module:Class"``.
        input_dir: a series folder, or a folder of several series with ``series_uid``.
        out_dir: the derived series folder (``IM00001.dcm`` ..., ascending z); must not exist
            unless ``overwrite``.
        options: method settings (checked against the constructor).
        implant_type: ``none``, ``hip_prosthesis``, ``fracture_fixation`` or
            ``spinal_fixation``; required by methods that need it (LGA).
        deidentify: write headers holding only the builder's allow-listed attributes and
            keyed pseudonyms; ``secret`` keys them (default: a random key, so the
            pseudonyms cannot be linked to anything).
        device: where the method runs; batch_size: slices per ``reduce`` call.

    Raises:
        artifactgsi.dicom.DicomError: the reader's named errors (file and problem).
        ApplyError: several series without ``series_uid``, an unknown implant type, a method
            failure; :class:`MissingImplantTypeError`; :class:`OutputExistsError`.
    """
    from artifactgsi.schema import IMPLANT_TYPES, METAL_THRESHOLD_HU

    from ..registry import create_method

    t0 = time.perf_counter()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    check_separate(input_dir, out_dir)
    _prepare_out(out_dir, overwrite)
    if deidentify and secret is not None and not secret.strip():
        raise ApplyError("--secret-file is empty: the pseudonym key must be non-empty bytes "
                         "(without --secret-file a random key is used, on purpose)")
    mar = create_method(method, **(options or {}))
    name = str(mar.name or method)
    if implant_type is not None and implant_type not in IMPLANT_TYPES:
        raise ApplyError(f"--implant-type {implant_type!r} is not one of "
                         f"{', '.join(IMPLANT_TYPES)}")
    if implant_type is None and method_needs_implant_type(mar):
        raise MissingImplantTypeError(
            f"method {name!r} needs the implant type: pass --implant-type with one of "
            f"{', '.join(IMPLANT_TYPES)}")
    files = select_series(input_dir, series_uid)
    series, files = _read_selected(files, input_dir)

    import pydicom
    from pydicom.uid import generate_uid

    dev = torch.device(device)
    _prepare(mar, name, dev)
    # Headers only: the pixels come from the reader (which decodes every supported transfer
    # syntax, JPEG Lossless through SimpleITK's GDCM), so nothing is decoded twice.
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    first = sources[0]
    # The reader flips mirrored axes to columns +x, rows +y; write in the source's layout.
    iop = [float(v) for v in first.ImageOrientationPatient]
    flip = [ax for ax, v in ((1, iop[0]), (0, iop[4])) if v < 0]  # (H, W) axes to mirror
    h, w = series.volume_hu.shape[1:]
    resampled = _work_size(mar, series.pixel_spacing_mm, h, w)[0]
    effective = mar.effective_options()
    thr = METAL_THRESHOLD_HU if threshold_hu is None else float(threshold_hu)
    series_desc, derivation = _derivation(mar, effective, str(first.SeriesInstanceUID),
                                          resampled, thr)
    key = (secret if secret is not None else secrets.token_bytes(32)) if deidentify else None
    series_number = int(first.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
    new_series = generate_uid()
    date, time_ = _now()
    # Each batch is written as soon as the method returns it: at most batch_size corrected
    # slices are held, and the derived series grows in a hidden folder renamed at the end.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    clipped_total = metal_total = 0
    written: list[str] = []
    with staged_dir(tmp, out_dir):
        for idx, corrected, mask in iter_reduced(
                mar, series.volume_hu, series.pixel_spacing_mm,
                implant_type=implant_type or "none", batch_size=batch_size, device=dev,
                threshold_hu=threshold_hu):
            metal_total += int(mask.sum())
            for j, i in enumerate(idx):
                src = sources[i]
                out_hu = np.flip(corrected[j], tuple(flip)) if flip else corrected[j]
                src_hu = np.flip(series.volume_hu[i], tuple(flip)) if flip else series.volume_hu[i]
                stored, clipped = _to_stored(out_hu, src, src_hu)
                clipped_total += clipped
                ds = _derived_dataset(src, stored, series_uid=new_series,
                                      series_number=series_number, series_desc=series_desc,
                                      derivation=derivation, deid_key=key, date=date,
                                      time_=time_)
                fname = f"IM{i + 1:05d}.dcm"
                ds.save_as(tmp / fname, enforce_file_format=True)
                written.append(fname)
    warnings = []
    if clipped_total:
        lo, hi, _ = _stored_range(first)
        warnings.append(f"{clipped_total} pixel(s) of the corrected images fell outside the "
                        f"source's stored range ({lo}..{hi}, i.e. BitsStored "
                        f"{int(first.BitsStored)}) and were clipped")
    return ApplyResult(out_dir=out_dir, files=[out_dir / n for n in written],
                       series_uid=new_series, method=name,
                       version=str(getattr(mar, "version", "0")),
                       weights_sha256=getattr(mar, "weights_sha256", None), options=effective,
                       n_slices=len(written), metal_pixels=metal_total,
                       clipped_pixels=clipped_total, resampled_to_mm=resampled,
                       seconds=time.perf_counter() - t0, warnings=warnings)


def result_summary(result: ApplyResult) -> dict[str, Any]:
    """A JSON-able dict of an :class:`ApplyResult`."""
    d = asdict(result)
    d["out_dir"] = str(result.out_dir)
    d["files"] = [str(f) for f in result.files]
    return d
