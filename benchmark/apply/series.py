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

import copy
import datetime as _dt
import json
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifactgsi.fileio import staged_dir

from ..errors import MARBenchError

__all__ = [
    "ApplyError", "ApplyResult", "MissingImplantTypeError", "OutputExistsError",
    "apply_to_series", "check_report_target", "check_separate", "iter_reduced",
    "method_needs_implant_type", "select_series",
]

#: Added to the source SeriesNumber to number the derived series.
SERIES_NUMBER_OFFSET = 1000
#: Methods known to need the implant type (besides any with ``needs_implant_type = True``).
IMPLANT_TYPE_METHODS = frozenset({"lga"})


class ApplyError(MARBenchError, ValueError):
    """The input or the output folder cannot be used; the message says what to do."""


class MissingImplantTypeError(ApplyError):
    """The method needs ``--implant-type`` and none was given."""


class OutputExistsError(ApplyError, FileExistsError):
    """The output folder exists and ``overwrite`` was not asked for."""


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


# ----------------------------------------------------------------------------- method
def method_needs_implant_type(method: Any) -> bool:
    """Whether a method needs the implant type (``needs_implant_type = True`` or LGA)."""
    return bool(getattr(method, "needs_implant_type", False)) or \
        str(getattr(method, "name", "")).lower() in IMPLANT_TYPE_METHODS


def _trained_spacing(method: Any) -> float | None:
    value = getattr(method, "pixel_spacing_mm", None)
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ApplyError(f"method {method.name!r}: pixel_spacing_mm {value} is not a positive "
                         "size in mm")
    return value


def _resample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, h, w), bilinear with antialiasing (area-like when shrinking)."""
    if tuple(img.shape[-2:]) == size:
        return img
    return torch.nn.functional.interpolate(img, size=size, mode="bilinear",
                                           align_corners=False, antialias=True)


def iter_reduced(method: Any, volume_hu: np.ndarray, pixel_spacing_mm: float, *,
                 implant_type: str = "none", patient_id: str = "input",
                 batch_size: int = 4, device: str | torch.device = "cpu",
                 threshold_hu: float | None = None
                 ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
    """Run a prepared method over a volume, one batch at a time.

    Only the batch (and its neighbour slices) is converted to float32 and handed to the
    method, so the memory this adds to the volume is bounded by the slices in flight
    (``batch_size`` plus neighbours), not by the length of the series.

    Args:
        method: a prepared :class:`benchmark.method.MARMethod`.
        volume_hu: (S, H, W) HU (any numeric dtype; int16 from the reader).
        pixel_spacing_mm: in-plane pixel size of ``volume_hu``.
        implant_type: given to the method for every slice.
        batch_size: slices per ``reduce`` call.
        device: where the method runs.
        threshold_hu: metal threshold (default: the protocol's).

    Yields:
        (slice indices, (B, H, W) float32 corrected HU, (B, H, W) bool metal mask of the
        input), in slice order.
    """
    from artifactgsi.schema import METAL_THRESHOLD_HU, metal_mask

    from ..method import MARInput, validate_output

    if batch_size < 1:
        raise ApplyError(f"batch_size must be >= 1, got {batch_size}")
    thr = METAL_THRESHOLD_HU if threshold_hu is None else float(threshold_hu)
    dev = torch.device(device)
    s, h, w = volume_hu.shape
    target, size = _work_size(method, pixel_spacing_mm, h, w)
    spacing = pixel_spacing_mm if target is None else target
    k = int(getattr(method, "neighbour_slices", 0) or 0)
    name = str(getattr(method, "name", "") or type(method).__name__)

    def slices(rows: Sequence[int]) -> torch.Tensor:
        """(n, h', w') float32 slices at the method's working size."""
        img = torch.from_numpy(np.asarray(volume_hu[list(rows)], dtype=np.float32))
        return img if target is None else _resample(img[:, None], size)[:, 0]

    for start in range(0, s, batch_size):
        idx = list(range(start, min(start + batch_size, s)))
        source = np.asarray(volume_hu[idx], dtype=np.float32)
        ordinary = slices(idx)[:, None].contiguous()
        neighbours = None
        if k > 0:
            rows = sorted({min(max(i + d, 0), s - 1) for i in idx for d in range(-k, k + 1)})
            at = {r: j for j, r in enumerate(rows)}
            stack = slices(rows)
            neighbours = stack[torch.tensor([[at[min(max(i + d, 0), s - 1)]
                                              for d in range(-k, k + 1)] for i in idx])]
        inp = MARInput(ordinary=ordinary, metal_mask=metal_mask(ordinary, thr),
                       pixel_spacing_mm=torch.full((len(idx),), float(spacing)),
                       implant_type=[implant_type] * len(idx),
                       patient_id=[patient_id] * len(idx), slice_index=idx,
                       neighbours=None if neighbours is None else neighbours.contiguous())
        batch = inp.to(dev)
        try:
            with torch.no_grad():
                res = method.reduce(batch)
        except Exception as e:
            raise ApplyError(f"method {name!r}: reduce() raised {type(e).__name__} on slices "
                             f"{idx[0]}..{idx[-1]}: {e}") from e
        img = validate_output(name, batch, res).detach().float().cpu()
        if target is not None:
            img = _resample(img, (h, w))
        yield idx, img[:, 0].numpy(), metal_mask(source, thr)


def _work_size(method: Any, pixel_spacing_mm: float, h: int, w: int
               ) -> tuple[float | None, tuple[int, int]]:
    """(the method's pixel size if the slices must be resampled to it, else ``None``; the
    (h, w) the method works at)."""
    target = _trained_spacing(method)
    if target is None or math.isclose(target, pixel_spacing_mm, rel_tol=1e-3):
        return None, (h, w)
    return target, (max(1, round(h * pixel_spacing_mm / target)),
                    max(1, round(w * pixel_spacing_mm / target)))


def reduce_volume(method: Any, volume_hu: np.ndarray, pixel_spacing_mm: float, *,
                  implant_type: str = "none", patient_id: str = "input",
                  batch_size: int = 4, device: str | torch.device = "cpu",
                  threshold_hu: float | None = None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Run a prepared method over a whole volume (:func:`iter_reduced`, gathered).

    Returns:
        ((S, H, W) float32 corrected HU, (S, H, W) bool metal mask of the input, the pixel
        size the method ran at if the slices were resampled, else ``None``).
    """
    s, h, w = volume_hu.shape
    out = np.empty((s, h, w), np.float32)
    mask = np.empty((s, h, w), bool)
    for idx, img, m in iter_reduced(method, volume_hu, pixel_spacing_mm,
                                    implant_type=implant_type, patient_id=patient_id,
                                    batch_size=batch_size, device=device,
                                    threshold_hu=threshold_hu):
        out[idx], mask[idx] = img, m
    return out, mask, _work_size(method, pixel_spacing_mm, h, w)[0]


def _prepare(mar: Any, name: str, dev: torch.device) -> None:
    """``mar.prepare`` with no training data; a failure (e.g. no weights) names the method."""
    from ..method import PrepareContext
    from ..run.calls import method_cache_dir as _method_cache_dir

    try:
        mar.prepare(PrepareContext(device=dev, cache_dir=_method_cache_dir(name)))
    except MARBenchError:
        raise
    except Exception as e:
        raise ApplyError(f"method {name!r}: prepare() failed ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- writing
def _stored_range(ds: Any) -> tuple[int, int, np.dtype]:
    bits_alloc, bits_stored = int(ds.BitsAllocated), int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1
    lo, hi = ((-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed
              else (0, (1 << bits_stored) - 1))
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_alloc // 8}")
    return lo, hi, dtype


def _to_stored(hu: np.ndarray, ds: Any, source_hu: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) HU -> stored values of ``ds``'s representation (inverse rescale, rounded,
    clipped); pixels whose source value (``source_hu``, (H, W) HU of the source slice) is the
    source's PixelPaddingValue keep it. Returns (values, number clipped)."""
    slope = float(ds.RescaleSlope)
    intercept = float(ds.RescaleIntercept)
    lo, hi, dtype = _stored_range(ds)
    raw = np.rint((hu.astype(np.float64) - intercept) / slope)
    clipped = int(((raw < lo) | (raw > hi)).sum())
    stored = np.clip(raw, lo, hi).astype(dtype)
    pad = ds.get("PixelPaddingValue")
    if pad is not None:
        # The reader checked that stored * slope + intercept are whole HU: compare in HU.
        stored[np.asarray(source_hu) == np.rint(int(pad) * slope + intercept)] = int(pad)
    return stored, clipped


def _now() -> tuple[str, str]:
    t = _dt.datetime.now()
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S")


def _derivation(method: Any, options: dict[str, Any], source_series: str,
                resampled_to: float | None, threshold_hu: float) -> tuple[str, str]:
    name = str(method.name)
    version = str(getattr(method, "version", "0"))
    sha = getattr(method, "weights_sha256", None)
    series_desc = f"MAR {name} v{version}" + (f" w{sha[:12]}" if sha else "")
    opts = json.dumps(options, sort_keys=True, default=str)
    text = (f"Metal artifact reduction by marbench method {name} version {version}; weights "
            f"sha256 {sha or 'none (no weights)'}; options {opts}; metal mask HU > "
            f"{threshold_hu:g}; "
            f"source series {source_series}")
    if resampled_to is not None:
        text += f"; resampled in-plane to {resampled_to:g} mm and back"
    return series_desc[:64], text[:1024]


#: Attributes kept by --deidentify besides the builder's allow-list: the image geometry and
#: pixel description a derived CT image needs (none identifies a person).
_DEID_IMAGE_KEEP = (
    "SOPClassUID", "ImageType", "ImagePositionPatient", "ImageOrientationPatient",
    "SliceLocation", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope",
    "WindowCenter", "WindowWidth", "InstanceNumber", "AcquisitionNumber", "PixelPaddingValue",
    "SpecificCharacterSet",
)
#: Type 2 attributes of the CT Image IOD that --deidentify writes empty.
_DEID_EMPTY = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber",
               "PositionReferenceIndicator", "SeriesNumber")


def _deidentified_copy(src: Any, key: bytes) -> Any:
    """A new dataset holding only the builder's allow-listed attributes, the image geometry
    and pixel description, and keyed pseudonyms (PatientID/Name, Study and Frame of
    Reference UIDs) in place of the identifiers."""
    from pydicom.dataset import Dataset

    from artifactgsi.dicom_deid import HEADER_ALLOWLIST, pseudonym, remap_uid

    out = Dataset()
    for kw in (*HEADER_ALLOWLIST, *_DEID_IMAGE_KEEP):
        if kw in src and kw not in ("Rows", "Columns"):
            out[kw] = src[kw]
    out.Rows, out.Columns = src.Rows, src.Columns
    if "PixelSpacing" in src:
        out.PixelSpacing = src.PixelSpacing
    for kw in _DEID_EMPTY:
        setattr(out, kw, "")
    pid = pseudonym(key, str(src.get("PatientID", "")))
    out.PatientID = pid
    out.PatientName = pid
    out.StudyInstanceUID = remap_uid(key, str(src.StudyInstanceUID))
    if src.get("FrameOfReferenceUID"):
        out.FrameOfReferenceUID = remap_uid(key, str(src.FrameOfReferenceUID))
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "marbench allow-list, keyed pseudonyms"
    code = Dataset()  # PS3.16 CID 7050: what was applied
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = [code]
    out.BurnedInAnnotation = "NO"
    return out


def _derived_dataset(src: Any, stored: np.ndarray, *, series_uid: str, series_number: int,
                     series_desc: str, derivation: str, deid_key: bytes | None,
                     date: str, time_: str) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import correct_ambiguous_vr
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = _deidentified_copy(src, deid_key) if deid_key is not None else copy.deepcopy(src)
    # The pixel values change: statistics and encodings of the source's pixels no longer hold.
    for kw in ("PixelData", "SmallestImagePixelValue", "LargestImagePixelValue",
               "LossyImageCompression", "LossyImageCompressionRatio",
               "LossyImageCompressionMethod", "IconImageSequence"):
        if kw in ds:
            del ds[kw]
    sop_uid = generate_uid()
    image_type = [str(v) for v in (src.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY", *(image_type[2:3] or ["AXIAL"]), *image_type[3:]]
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_desc
    ds.DerivationDescription = derivation
    if deid_key is None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        ds.SourceImageSequence = [ref]
        ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
        ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time_
    ds.Rows, ds.Columns = stored.shape
    ds.add_new(0x7FE00010, "OW" if stored.dtype.itemsize == 2 else "OB",
               np.ascontiguousarray(stored).tobytes())
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm
    ds.preamble = b"\0" * 128
    # A source read as implicit VR holds "US or SS" style elements; resolve them for
    # explicit VR from the pixel representation.
    correct_ambiguous_vr(ds, is_little_endian=True)
    return ds


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
