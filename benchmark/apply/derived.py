"""The derived DICOM series ``marbench apply`` writes: each file a copy of its source file's
header with new Series and SOP Instance UIDs, the derivation recorded, optionally
de-identified, and the pixels in the source's stored representation (see
:mod:`benchmark.apply.series`)."""

from __future__ import annotations

import copy
import datetime as _dt
import json
from typing import Any

import numpy as np


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
