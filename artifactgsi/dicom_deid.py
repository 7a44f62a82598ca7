"""De-identification of DICOM headers (DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile).

The built dataset never carries DICOM headers, so nothing is removed from a header: values are
copied *in* from an allow-list (:data:`HEADER_ALLOWLIST`) instead, which is stricter than the
profile's deny-list. Names, IDs, birth date, dates and times, institution, physicians,
accession number, free-text descriptions and every private tag are never copied; UIDs are
replaced by ``2.25.<HMAC-SHA256(key, uid)>`` (equality between series kept, the original not
recoverable without the key); patient ids by :func:`pseudonym`. Libraries that rewrite DICOM
files (dicognito, deid) are not needed for that and are not used.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

#: The only DICOM attributes (keywords) copied into :attr:`Series.header`: acquisition and
#: reconstruction parameters that identify no person (none is in PS3.15 Table E.1-1 except
#: as "keep"). UIDs and the patient id are added as keyed pseudonyms.
HEADER_ALLOWLIST = (
    "Modality", "Manufacturer", "ManufacturerModelName", "KVP", "XRayTubeCurrent",
    "ExposureTime", "ConvolutionKernel", "SliceThickness", "SpacingBetweenSlices",
    "PixelSpacing", "Rows", "Columns", "ReconstructionDiameter", "PatientPosition",
    "BodyPartExamined", "MultienergyCTAcquisition", "MonoenergeticEnergyEquivalent",
    "BitsStored", "RescaleType",
)


def pseudonym(key: bytes, value: str, prefix: str = "P") -> str:
    """Stable pseudonym of an identifier: ``prefix`` + 16 hex digits of HMAC-SHA256(key, value).

    The same key gives the same pseudonym for the same value across series and builds;
    without the key the value cannot be recovered or tested for (a keyed hash, not a plain one).
    """
    if not key:
        raise ValueError("the pseudonym key must be non-empty bytes")
    return prefix + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


def remap_uid(key: bytes, uid: str) -> str:
    """A UID replaced by ``2.25.<128 bits of HMAC-SHA256(key, uid)>`` (equality is kept)."""
    digest = hmac.new(key, b"uid:" + uid.encode(), hashlib.sha256).hexdigest()[:32]
    return f"2.25.{int(digest, 16)}"


def _plain(value: Any) -> Any:
    """A pydicom element value as JSON-able Python (MultiValue -> list, DS/IS -> number)."""
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float):
        return int(value) if isinstance(value, int) else float(value)
    if isinstance(value, bytes):
        return None
    return str(value)


def deidentified_header(ds: Any, key: bytes | None = None) -> dict[str, Any]:
    """The allow-listed attributes of a pydicom dataset, plus pseudonyms if ``key`` is given.

    Returns ``{keyword: value}`` for :data:`HEADER_ALLOWLIST` attributes present, and with a
    ``key``: ``patient_pseudonym`` (:func:`pseudonym` of PatientID) and ``study_uid``,
    ``series_uid``, ``frame_of_reference_uid`` remapped by :func:`remap_uid`.
    """
    out: dict[str, Any] = {}
    for kw in HEADER_ALLOWLIST:
        value = ds.get(kw)
        if value is not None and value != "":
            plain = _plain(value)
            if plain is not None:
                out[kw] = plain
    if key is not None:
        out["patient_pseudonym"] = pseudonym(key, str(ds.get("PatientID", "")))
        for name, kw in (("study_uid", "StudyInstanceUID"), ("series_uid", "SeriesInstanceUID"),
                         ("frame_of_reference_uid", "FrameOfReferenceUID")):
            if ds.get(kw):
                out[name] = remap_uid(key, str(ds.get(kw)))
    return out

