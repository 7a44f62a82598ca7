"""Read single-frame CT DICOM series.

:func:`read_series` checks a folder holds exactly one axial CT series that can be read
exactly, sorts the slices along the slice normal (never by file name), reads the HU volume
through pydicom's modality LUT (each file's own rescale slope and intercept; SimpleITK/GDCM
for the compressed syntaxes pydicom cannot decode) and returns a :class:`Series` whose
``header`` holds only allow-listed technical attributes (:data:`HEADER_ALLOWLIST`) plus keyed
pseudonyms. Encodings whose HU it cannot be sure of are refused: photometric
interpretations other than MONOCHROME1/2 (MONOCHROME1 is read through the modality LUT, which
display inversion does not affect), missing, zero or negative rescale slope, missing intercept,
slice thickness differing between slices, truncated files.

The header is de-identified by :mod:`artifactgsi.dicom_deid`; a series whose
``BurnedInAnnotation`` is ``YES`` is refused (identifying text may be in the pixels). Series
are written by :mod:`artifactgsi.dicom_write`. Both modules' public names are re-exported
here, where callers have always imported them from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The writer and the de-identification are re-exported (``X as X``): they lived in this
# module, and callers import them from here.
from .dicom_deid import HEADER_ALLOWLIST as HEADER_ALLOWLIST
from .dicom_deid import deidentified_header as deidentified_header
from .dicom_deid import pseudonym as pseudonym
from .dicom_deid import remap_uid as remap_uid
from .dicom_write import CT_IMAGE_STORAGE as CT_IMAGE_STORAGE
from .dicom_write import PAIRED_BODY_PARTS as PAIRED_BODY_PARTS
from .dicom_write import WINDOWS_HU as WINDOWS_HU
from .dicom_write import SeriesMeta as SeriesMeta
from .dicom_write import uid_from as uid_from
from .dicom_write import write_ct_series as write_ct_series
from .errors import ArtifactGSIError
from .physics.geometry import ImageGrid

#: Transfer syntaxes read exactly: uncompressed, and lossless compression that SimpleITK's
#: GDCM decodes. Lossy syntaxes (JPEG baseline, JPEG 2000 irreversible, ...) are refused since
#: their HU are not the scanner's.
SUPPORTED_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
#: Tolerances of the geometry checks (mm, and relative for slice spacing).
POSITION_TOL_MM = 0.01
SPACING_REL_TOL = 0.02
_KEV_RE = re.compile(r"(\d+(?:\.\d+)?)\s*ke[vV]")


class DicomError(ArtifactGSIError, ValueError):
    """A DICOM file or series cannot be used; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------
@dataclass
class Series:
    """One CT series read exactly.

    Attributes:
        volume_hu: ``(S, H, W)`` int16 HU, slices ascending in z.
        z_mm: ``(S,)`` float64 slice positions along z (patient superior), ascending.
        grid: in-plane grid (square pixels; origin = centre of pixel (0, 0)).
        pixel_spacing_mm: pixel side in mm (``grid.pixel_mm``).
        slice_thickness_mm: nominal thickness (SliceThickness), mm.
        kvp: tube voltage (KVP); for GSI the high voltage of the switching pair.
        kev: virtual monochromatic energy (keV) of a GSI series, else ``None``.
        manufacturer, model: scanner.
        header: de-identified header (:func:`deidentified_header`).
        files: the files, in slice order.
    """

    volume_hu: np.ndarray
    z_mm: np.ndarray
    grid: ImageGrid
    pixel_spacing_mm: float
    slice_thickness_mm: float
    kvp: float | None
    kev: float | None
    manufacturer: str
    model: str
    header: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    frame_of_reference: str | None = None  # remapped (keyed) or None without a key


def _kev_of(ds: Any) -> float | None:
    value = ds.get("MonoenergeticEnergyEquivalent")
    if value is not None and value != "":
        return float(value)
    # GE and others name the energy in the series description, e.g. "GSI MonoE 70keV".
    m = _KEV_RE.search(str(ds.get("SeriesDescription", "")))
    return float(m.group(1)) if m else None


def _series_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder (expected one DICOM series)")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
    if not files:
        raise DicomError(f"{folder}: no DICOM files")
    return files


def _read_header(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=False)
    except InvalidDicomError as err:
        raise DicomError(f"{path}: not a DICOM file ({err})") from None
    except Exception as err:  # truncated headers raise EOFError, struct.error, ValueError ...
        raise DicomError(f"{path}: unreadable, truncated or corrupt DICOM "
                         f"({type(err).__name__}: {err})") from None
    _check_not_truncated(path, ds)
    return ds


def _check_not_truncated(path: Path, ds: Any) -> None:
    """Refuse a file that ends inside an element: pydicom stops reading there silently, and
    later checks would then report a missing attribute instead of the real cause."""
    from pydicom.dataelem import RawDataElement

    raws = list(ds._dict.values())
    if not raws:
        size = path.stat().st_size
        if size > 132:  # preamble + "DICM": something follows the file meta, but no element
            raise DicomError(f"{path}: truncated DICOM: no data element could be read after the "
                             f"file meta information ({size} bytes); copy the file again")
        return
    last = raws[-1]
    if not isinstance(last, RawDataElement) or last.value is None:
        return
    declared = int(last.length)
    got = len(last.value)
    if declared == 0xFFFFFFFF:  # undefined length (encapsulated pixels, sequences)
        return
    if got < declared:
        raise DicomError(f"{path}: truncated DICOM: element {last.tag} declares {declared} bytes "
                         f"but the file ends after {got}; copy the file again")
    meta = getattr(ds, "file_meta", None)
    deflated = meta is not None and str(meta.get("TransferSyntaxUID", "")) == \
        "1.2.840.10008.1.2.1.99"  # positions refer to the inflated stream
    size = path.stat().st_size
    end = int(last.value_tell) + got
    if not deflated and end < size:
        raise DicomError(f"{path}: truncated DICOM: {size - end} byte(s) after element "
                         f"{last.tag} do not form a complete element; copy the file again")


def _check_file(path: Path, ds: Any) -> None:
    """Per-file checks: transfer syntax, modality, SOP class, pixel data, annotation."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        from pydicom.uid import UID

        raise DicomError(f"{path}: unsupported transfer syntax {ts or '(none)'} "
                         f"({UID(ts).name if ts else 'no file meta'}); supported: "
                         + ", ".join(SUPPORTED_TRANSFER_SYNTAXES.values()))
    modality = str(ds.get("Modality", ""))
    if modality != "CT":
        raise DicomError(f"{path}: modality is {modality or '(missing)'!r}, expected 'CT'")
    sop = str(ds.get("SOPClassUID", ""))
    if sop != CT_IMAGE_STORAGE:
        raise DicomError(f"{path}: SOP class {sop} is not CT Image Storage ({CT_IMAGE_STORAGE}); "
                         "multi-frame (Enhanced CT) series are not supported")
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DicomError(f"{path}: BurnedInAnnotation is YES: the pixels may show identifying "
                         "text; the series is refused")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        raise DicomError(f"{path}: a LOCALIZER (scout) image, not an axial slice")
    for kw, tag in (("FloatPixelData", "7FE0,0008"), ("DoubleFloatPixelData", "7FE0,0009")):
        if kw in ds:
            raise DicomError(f"{path}: the image is stored as {kw} ({tag}), floating-point "
                             "values; a CT Image holds integer Pixel Data (7FE0,0010) with a "
                             "rescale to HU. Export the series as CT images from the scanner "
                             "or PACS")
    if "PixelData" not in ds:
        last = list(ds.keys())[-1] if len(ds) else None
        raise DicomError(f"{path}: no pixel data (the file ends after element {last}; if it "
                         "should hold an image, it may be truncated)")
    for kw in ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient",
               "ImageOrientationPatient", "BitsAllocated", "BitsStored",
               "PixelRepresentation", "PhotometricInterpretation"):
        if ds.get(kw) in (None, ""):
            raise DicomError(f"{path}: missing {kw}")
    _pixel_spacing(path, ds)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(f"{path}: SamplesPerPixel {ds.SamplesPerPixel}: not a grey-scale CT")
    _check_pixel_encoding(path, ds, ts)
    if ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"):
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
        got = len(ds.PixelData)
        if got < expected:
            raise DicomError(f"{path}: pixel data has {got} bytes, {ds.Rows}x{ds.Columns}x"
                             f"{ds.BitsAllocated} bits need {expected} (truncated file?)")


#: Transfer syntaxes whose pixels pydicom decodes itself (no optional plugin): read with
#: pydicom and its modality LUT; the others are decoded by SimpleITK's GDCM.
PYDICOM_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                       "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5"})


def _rescale(path: Path, ds: Any) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)`` of a CT file, checked: both present (Type 1 in the
    CT Image module), finite, slope > 0 (zero blanks the image, a negative one inverts it)."""
    values = []
    for kw in ("RescaleSlope", "RescaleIntercept"):
        try:
            raw = ds.get(kw)
        except (TypeError, ValueError):  # pydicom converts DS values on access
            elem = ds.get_item(kw)
            raise DicomError(f"{path}: {kw} {bytes(elem.value or b'')!r} is not a "
                             "number") from None
        if raw is None or str(raw).strip() == "":
            raise DicomError(f"{path}: missing {kw} (required in CT Image Storage); without it "
                             "stored values are not Hounsfield units. Re-export the series from "
                             "the scanner or PACS with the rescale attributes")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DicomError(f"{path}: {kw} {str(raw)!r} is not a number") from None
        if not math.isfinite(value):
            raise DicomError(f"{path}: {kw} is {value}, not a finite number")
        values.append(value)
    slope, intercept = values
    if slope <= 0:
        raise DicomError(f"{path}: RescaleSlope is {slope:g}; a CT series needs a positive "
                         "slope (zero would blank the image, a negative one invert it)")
    if "ModalityLUTSequence" in ds:
        raise DicomError(f"{path}: a Modality LUT Sequence is not supported for CT (HU must "
                         "come from RescaleSlope and RescaleIntercept)")
    return slope, intercept


def _pixel_spacing(path: Path, ds: Any) -> list[float]:
    """PixelSpacing (row, column) in mm, checked: two finite numbers > 0 (a zero or negative
    spacing would make every length and area, and the projector's grid, meaningless)."""
    try:
        values = [float(v) for v in ds.PixelSpacing]
    except (TypeError, ValueError):
        raise DicomError(f"{path}: PixelSpacing {ds.get('PixelSpacing')!r} is not two "
                         "numbers") from None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise DicomError(f"{path}: PixelSpacing {values} mm: the pixel size must be two "
                         "positive numbers (row, column spacing in mm)")
    return values


def _check_pixel_encoding(path: Path, ds: Any, ts: str) -> None:
    """Refuse pixel encodings whose HU the reader would get wrong; check the rescale."""
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: PhotometricInterpretation {photometric!r}: a CT image must be "
                         "MONOCHROME2 (or MONOCHROME1)")
    if photometric == "MONOCHROME1" and ts not in PYDICOM_TRANSFER_SYNTAXES:
        raise DicomError(f"{path}: MONOCHROME1 with compressed transfer syntax {ts}: its HU "
                         "cannot be read exactly here; decompress the series first (e.g. "
                         "gdcmconv --raw, dcmdjpeg)")
    bits_alloc, bits_stored = int(ds.BitsAllocated), int(ds.BitsStored)
    rep = int(ds.PixelRepresentation)
    if bits_alloc not in (8, 16) or not 1 <= bits_stored <= bits_alloc:
        raise DicomError(f"{path}: BitsAllocated {bits_alloc} / BitsStored {bits_stored} are "
                         "not supported for CT (8 or 16 bits allocated)")
    if rep not in (0, 1):
        raise DicomError(f"{path}: PixelRepresentation {rep} is neither 0 (unsigned) nor 1 "
                         "(two's complement)")
    high = ds.get("HighBit")
    if high not in (None, "") and int(high) != bits_stored - 1:
        raise DicomError(f"{path}: HighBit {int(high)} with BitsStored {bits_stored}: only "
                         "HighBit = BitsStored - 1 is supported")
    _rescale(path, ds)


def _slice_hu(path: Path, ds: Any) -> np.ndarray:
    """``(H, W)`` float64 HU of one file through pydicom's modality LUT (its own rescale;
    MONOCHROME1 only changes how the image is displayed, not its HU)."""
    from pydicom.pixels import apply_modality_lut

    try:
        stored = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - any decoder error: name the file
        raise DicomError(f"{path}: pixel data cannot be decoded ({type(err).__name__}: "
                         f"{err})") from None
    return np.asarray(apply_modality_lut(stored, ds), np.float64)


def _int16_hu(path: Path, ds: Any, hu: np.ndarray) -> np.ndarray:
    """``(H, W)`` HU of one file as int16, checked: whole numbers (a fractional rescale slope
    gives HU that int16 cannot hold exactly) within -32768..32767."""
    rounded = np.rint(hu)
    if np.abs(hu - rounded).max(initial=0.0) > 1e-3:
        raise DicomError(f"{path}: HU are not integers after rescale (RescaleSlope "
                         f"{float(ds.RescaleSlope):g}); cannot store them exactly as int16")
    if rounded.size and (rounded.min() < -32768 or rounded.max() > 32767):
        raise DicomError(f"{path}: HU {rounded.min():.0f}..{rounded.max():.0f} exceed int16")
    return rounded.astype(np.int16)


def _thickness(ds: Any) -> float:
    """SliceThickness in mm (NaN when empty: it is Type 2 in the CT Image module)."""
    value = ds.get("SliceThickness")
    return float("nan") if value in (None, "") else float(value)


def _thickness_key(ds: Any) -> float | None:
    """SliceThickness for comparing slices: rounded to 1e-6 mm, ``None`` when empty."""
    t = _thickness(ds)
    return None if math.isnan(t) else round(t, 6)


def _fmt_mm(value: float) -> str:
    return "(empty)" if math.isnan(value) else f"{value:g} mm"


def _axis_sign(v: np.ndarray, axis: int) -> int | None:
    """+1/-1 if ``v`` is the unit vector along ``axis`` (or its opposite), else ``None``."""
    ref = np.zeros(3)
    ref[axis] = 1.0
    for sign in (1, -1):
        if np.allclose(v, sign * ref, atol=1e-4):
            return sign
    return None


def read_series(folder: Path, key: bytes | None = None) -> Series:
    """Read one axial CT series from a folder, exactly (int16 HU), sorted along z.

    Args:
        folder: a folder holding the files of one series (any file names; hidden files and
            ``DICOMDIR`` are ignored).
        key: pseudonymisation key for the header's patient pseudonym and remapped UIDs (see
            :func:`deidentified_header`); without it those entries are left out.

    Raises:
        DicomError: naming the file and the problem: not DICOM / truncated, missing pixel
            data, modality other than CT, several series, unsupported transfer syntax,
            burned-in annotation, non-axial or inconsistent orientation, inconsistent pixel
            spacing, matrix or in-plane position, duplicate or irregular slice positions,
            photometric interpretation or bit layout not read exactly, missing / zero /
            negative rescale, slice thickness differing between slices, or HU outside int16.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    files = _series_files(folder)
    headers = []
    for f in files:
        ds = _read_header(f)
        _check_file(f, ds)
        headers.append(ds)

    uids: dict[str, Path] = {}
    for f, ds in zip(files, headers, strict=True):
        uids.setdefault(str(ds.get("SeriesInstanceUID", "")), f)
    if len(uids) > 1:
        listing = "; ".join(f"{u or '(none)'} (e.g. {p.name})" for u, p in uids.items())
        raise DicomError(f"{folder}: {len(uids)} series in one folder (SeriesInstanceUID "
                         f"{listing}); put each series in its own folder")

    # One instance, one file: a second file with the same SOP Instance UID is a copy or an
    # export that reused UIDs; which of the two a reference means is undefined.
    sops: dict[str, Path] = {}
    for f, ds in zip(files, headers, strict=True):
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        if not sop_uid:
            raise DicomError(f"{f}: missing SOPInstanceUID (every DICOM instance has one)")
        if sop_uid in sops:
            raise DicomError(f"{f}: SOPInstanceUID {sop_uid} is also that of "
                             f"{sops[sop_uid].name}: two files claim to be the same image (a "
                             "copy, or an export that reused UIDs); remove the duplicate")
        sops[sop_uid] = f

    # Geometry: every slice must share orientation, matrix, spacing and in-plane position.
    first, f0 = headers[0], files[0]
    iop0 = np.array([float(v) for v in first.ImageOrientationPatient])
    sx = _axis_sign(iop0[:3], 0)
    sy = _axis_sign(iop0[3:], 1)
    if sx is None or sy is None:
        raise DicomError(f"{f0}: ImageOrientationPatient {iop0.tolist()} is not axial (rows "
                         "along x, columns along y); tilted or reformatted series are not "
                         "supported")
    ps0 = [float(v) for v in first.PixelSpacing]
    if not math.isclose(ps0[0], ps0[1], rel_tol=1e-4):
        raise DicomError(f"{f0}: non-square pixels (PixelSpacing {ps0}) are not supported")
    shape0 = (int(first.Rows), int(first.Columns))
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    for f, ds, pos in zip(files, headers, ipp, strict=True):
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(iop, iop0, atol=1e-4):
            raise DicomError(f"{f}: ImageOrientationPatient {iop.tolist()} differs from "
                             f"{f0.name}'s {iop0.tolist()}")
        ps = [float(v) for v in ds.PixelSpacing]
        if not np.allclose(ps, ps0, rtol=1e-5, atol=1e-6):
            raise DicomError(f"{f}: PixelSpacing {ps} differs from {f0.name}'s {ps0}")
        if (int(ds.Rows), int(ds.Columns)) != shape0:
            raise DicomError(f"{f}: matrix {int(ds.Rows)}x{int(ds.Columns)} differs from "
                             f"{f0.name}'s {shape0[0]}x{shape0[1]}")
        if np.abs(pos[:2] - ipp[0, :2]).max() > POSITION_TOL_MM:
            raise DicomError(f"{f}: in-plane ImagePositionPatient {pos[:2].tolist()} differs "
                             f"from {f0.name}'s {ipp[0, :2].tolist()}")
    normal = np.cross(iop0[:3], iop0[3:])
    dist = ipp @ normal  # position along the slice normal (= z for axial)
    order = np.argsort(dist, kind="stable")
    dist_sorted = dist[order]
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    if len(files) > 1:
        gaps = np.diff(dist_sorted)
        dup = int(np.argmin(gaps))
        if gaps[dup] < POSITION_TOL_MM:
            raise DicomError(f"{files[dup + 1]}: same slice position as {files[dup].name} "
                             f"({dist_sorted[dup]:.3f} mm): duplicate slice")
        med = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - med) > max(SPACING_REL_TOL * med, POSITION_TOL_MM))
        if bad.size:
            b = int(bad[0])
            raise DicomError(f"{files[b + 1]}: slice spacing {gaps[b]:.3f} mm after "
                             f"{files[b].name} differs from the series' {med:.3f} mm (missing "
                             "or irregular slices)")

    keys = [_thickness_key(ds) for ds in headers]
    if len(set(keys)) > 1:
        b = next(i for i, k in enumerate(keys) if k != keys[0])
        raise DicomError(f"{files[b]}: SliceThickness {_fmt_mm(_thickness(headers[b]))} "
                         f"differs from {files[0].name}'s {_fmt_mm(_thickness(headers[0]))}; a "
                         "series must have one slice thickness (split it into series of equal "
                         "thickness)")

    # Pixels: each file's own rescale slope and intercept is applied (they may differ).
    # One slice at a time, straight to int16: the float HU of a whole series would need 8 to
    # 24 bytes per voxel, the volume needs 2.
    ts = str(first.file_meta.get("TransferSyntaxUID", ""))
    vol = np.empty((len(files), *shape0), np.int16)
    for i, (f, ds) in enumerate(zip(files, headers, strict=True)):
        if ts in PYDICOM_TRANSFER_SYNTAXES:
            hu = _slice_hu(f, ds)
        else:  # compressed: SimpleITK/GDCM decodes and applies the file's rescale
            try:
                hu = sitk.GetArrayFromImage(sitk.ReadImage(str(f), sitk.sitkFloat64))
            except RuntimeError as err:
                raise DicomError(f"{f}: SimpleITK could not read the file: "
                                 f"{str(err).strip().splitlines()[-1]}") from None
        if hu.size != vol[i].size:
            raise DicomError(f"{f}: read {hu.shape}, expected {shape0}")
        vol[i] = _int16_hu(f, ds, hu.reshape(shape0))
        if "PixelData" in ds:  # decoded: the header is all that is needed from here on
            del ds.PixelData
    # Canonical orientation: columns along +x, rows along +y (flip mirrored axes).
    x0, y0 = float(ipp[order[0], 0]), float(ipp[order[0], 1])
    px = ps0[1]
    if sx < 0:
        vol = vol[:, :, ::-1]
        x0 -= (shape0[1] - 1) * px
    if sy < 0:
        vol = vol[:, ::-1, :]
        y0 -= (shape0[0] - 1) * ps0[0]
    vol = np.ascontiguousarray(vol)
    grid = ImageGrid(shape0, px, (x0 + (shape0[1] - 1) / 2 * px,
                                  y0 + (shape0[0] - 1) / 2 * px))
    z = dist_sorted * float(normal[2])  # normal is +-z for axial
    if normal[2] < 0:
        vol, z, files, headers = vol[::-1].copy(), z[::-1].copy(), files[::-1], headers[::-1]
    header = deidentified_header(first, key)
    kvp = first.get("KVP")
    return Series(
        volume_hu=vol, z_mm=np.asarray(z, np.float64), grid=grid, pixel_spacing_mm=px,
        slice_thickness_mm=_thickness(first),
        kvp=float(kvp) if kvp not in (None, "") else None, kev=_kev_of(first),
        manufacturer=str(first.get("Manufacturer", "")),
        model=str(first.get("ManufacturerModelName", "")), header=header, files=files,
        frame_of_reference=header.get("frame_of_reference_uid"),
    )
