"""Write CT volumes as single-frame CT Image Storage DICOM series.

:func:`write_ct_series` writes one CT Image Storage file per slice (explicit VR little endian,
unsigned 16-bit stored values, ``HU = stored + RescaleIntercept``, slope 1), with every type 1
and 2 attribute of the CT Image IOD, atomically (a hidden temporary folder renamed at the
end). Output is deterministic: the SOP Instance UIDs derive from the Series Instance UID and
the instance number, and no attribute records the time of writing. The simulator and the
tests write their series here; :mod:`artifactgsi.dicom` reads them back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import staged_dir
from .physics.geometry import ImageGrid

#: SOP Class UID of CT Image Storage (the reader accepts only this class).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Display windows written into every file: soft tissue, and the paper's metal window
#: (level 500 HU, width 2000 HU).
WINDOWS_HU = ((40.0, 400.0, "SOFT TISSUE"), (500.0, 2000.0, "METAL"))
#: BodyPartExamined values of paired structures (PS3.16 CID 4031 with laterality).
PAIRED_BODY_PARTS = frozenset({"HIP", "KNEE", "LEG", "FEMUR", "EXTREMITY", "LOWER LIMB", "ANKLE",
                               "FOOT", "SHOULDER", "ARM", "ELBOW", "HAND", "WRIST", "BREAST"})


@dataclass(kw_only=True)
class SeriesMeta:
    """Header values of one series (DICOM formats: dates ``YYYYMMDD``, times ``HHMMSS``, person
    names ``FAMILY^GIVEN``).

    ``kev`` is the virtual monochromatic energy of a GSI series (``None`` for an ordinary
    polychromatic series); it is written to Monoenergetic Energy Equivalent (0018,937C) and
    Image Type value 4 ``VMI``. ``series_uid`` is generated if ``None``.
    """

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    institution: str
    referring_physician: str
    accession_number: str
    study_uid: str
    series_number: int
    series_description: str
    manufacturer: str
    model: str
    kvp: float
    kev: float | None
    convolution_kernel: str
    frame_of_reference_uid: str
    slice_thickness_mm: float
    body_part: str
    series_uid: str | None = None
    patient_position: str = "HFS"  # head first supine
    study_id: str = "1"


def uid_from(text: str) -> str:
    """A deterministic UID under the UUID-derived root ``2.25`` (128 bits of SHA-256)."""
    return f"2.25.{int(hashlib.sha256(text.encode()).hexdigest()[:32], 16)}"


def _instance_uid(series_uid: str, number: int) -> str:
    uid = f"{series_uid}.{number}"
    return uid if len(uid) <= 64 else uid_from(f"{series_uid}/{number}")


def _ds_str(value: float) -> str:
    """A DS value (at most 16 characters) that reads back as ``value`` to ~1e-9 relative."""
    for digits in range(16, 5, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot encode {value!r} as a DICOM DS")


def _stored_values(volume_hu: np.ndarray) -> tuple[np.ndarray, int]:
    """HU ``(S, H, W)`` -> (uint16 stored values, RescaleIntercept); exact for any int16 HU.

    The intercept is -1024 (the clinical convention: stored 0 is below air) unless the volume
    holds values below -1024 HU, then its minimum; values must fit 16 bits above it.
    """
    vol = np.asarray(volume_hu)
    if vol.dtype.kind == "f":
        if not np.isfinite(vol).all():
            raise ValueError("volume_hu holds NaN or infinite values")
        vol = np.rint(vol)
    elif vol.dtype.kind not in "iu":
        raise ValueError(f"volume_hu must be an integer or float array, got dtype {vol.dtype}")
    vol = vol.astype(np.int64)
    lo, hi = int(vol.min()), int(vol.max())
    intercept = min(-1024, lo)
    if hi - intercept > 65535:
        raise ValueError(f"volume_hu spans {lo}..{hi} HU: more than 16 bits of stored values")
    return (vol - intercept).astype("<u2"), intercept


def write_ct_series(volume_hu: np.ndarray, z_mm: Sequence[float], grid: ImageGrid,
                    meta: SeriesMeta, out_dir: Path, overwrite: bool = False) -> list[Path]:
    """Write a volume as one CT Image Storage file per slice; returns the paths written.

    Args:
        volume_hu: ``(S, H, W)`` HU, int16 (stored exactly) or float (rounded).
        z_mm: ``S`` slice positions (DICOM patient z, mm) in the order of ``volume_hu``.
        grid: in-plane grid of every slice (``grid.shape == (H, W)``); pixel ``(0, 0)`` is at
            ``grid.origin_mm()``; rows along +y (posterior), columns along +x (patient left).
        meta: header values.
        out_dir: folder to create (``IM00001.dcm`` ...); must not exist or be empty unless
            ``overwrite``. It appears complete or not at all.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    vol = np.asarray(volume_hu)
    if vol.ndim != 3:
        raise ValueError(f"volume_hu must be (S, H, W), got shape {vol.shape}")
    s, h, w = vol.shape
    z = [float(v) for v in z_mm]
    if len(z) != s:
        raise ValueError(f"z_mm has {len(z)} positions for {s} slices")
    if tuple(grid.shape) != (h, w):
        raise ValueError(f"grid shape {grid.shape} != image shape {(h, w)}")
    stored, intercept = _stored_values(vol)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True)")

    series_uid = meta.series_uid or pydicom.uid.generate_uid()
    spacing_z = (float(np.median(np.abs(np.diff(sorted(z))))) if s > 1
                 else float(meta.slice_thickness_mm))
    x0, y0 = grid.origin_mm()
    px = _ds_str(grid.pixel_mm)
    kev = meta.kev
    image_type = ["ORIGINAL", "PRIMARY", "AXIAL"] if kev is None else [
        "DERIVED", "PRIMARY", "AXIAL", "VMI"]  # virtual monoenergetic image (PS3.3 C.8.2.1.1.1)

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    names = []
    with staged_dir(tmp, out_dir):
        for i in range(s):
            number = i + 1
            sop_uid = _instance_uid(series_uid, number)
            fm = FileMetaDataset()
            fm.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            fm.MediaStorageSOPInstanceUID = sop_uid
            fm.TransferSyntaxUID = ExplicitVRLittleEndian
            name = f"IM{number:05d}.dcm"
            ds = FileDataset(name, {}, file_meta=fm, preamble=b"\0" * 128)
            ds.SpecificCharacterSet = "ISO_IR 100"
            # SOP common, patient, general study
            ds.ImageType = image_type
            ds.SOPClassUID = CT_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = meta.study_date
            ds.SeriesDate = meta.study_date
            ds.AcquisitionDate = meta.study_date
            ds.ContentDate = meta.study_date
            ds.StudyTime = meta.study_time
            ds.SeriesTime = meta.study_time
            ds.AcquisitionTime = meta.study_time
            ds.ContentTime = meta.study_time
            ds.AccessionNumber = meta.accession_number
            ds.Modality = "CT"
            ds.Manufacturer = meta.manufacturer
            ds.InstitutionName = meta.institution
            ds.ReferringPhysicianName = meta.referring_physician
            ds.SeriesDescription = meta.series_description
            ds.ManufacturerModelName = meta.model
            ds.PatientName = meta.patient_name
            ds.PatientID = meta.patient_id
            ds.PatientBirthDate = meta.birth_date
            ds.PatientSex = meta.sex
            # acquisition / reconstruction (CT Image module)
            ds.BodyPartExamined = meta.body_part
            ds.SliceThickness = _ds_str(meta.slice_thickness_mm)
            ds.KVP = _ds_str(meta.kvp)
            ds.SpacingBetweenSlices = _ds_str(spacing_z)
            ds.DataCollectionDiameter = _ds_str(grid.fov_mm)
            ds.ReconstructionDiameter = _ds_str(grid.fov_mm)
            ds.ConvolutionKernel = meta.convolution_kernel
            ds.PatientPosition = meta.patient_position
            if kev is not None:
                ds.MonoenergeticEnergyEquivalent = float(kev)
            ds.StudyInstanceUID = meta.study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = meta.study_id
            ds.SeriesNumber = meta.series_number
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = number
            # An axial CT section holds both sides of a paired body part ("B"), "U" if unpaired.
            ds.ImageLaterality = "B" if meta.body_part.upper() in PAIRED_BODY_PARTS else "U"
            ds.ImagePositionPatient = [_ds_str(x0), _ds_str(y0), _ds_str(z[i])]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.FrameOfReferenceUID = meta.frame_of_reference_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _ds_str(z[i])
            # image pixel
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = h
            ds.Columns = w
            ds.PixelSpacing = [px, px]  # row spacing (y), column spacing (x)
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.WindowCenter = [_ds_str(c) for c, _, _ in WINDOWS_HU]
            ds.WindowWidth = [_ds_str(ww) for _, ww, _ in WINDOWS_HU]
            ds.WindowCenterWidthExplanation = [e for _, _, e in WINDOWS_HU]
            ds.RescaleIntercept = str(intercept)
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            ds.BurnedInAnnotation = "NO"
            ds.PixelData = stored[i].tobytes()
            ds.save_as(tmp / name, enforce_file_format=True)
            names.append(name)
    return [out_dir / n for n in names]

