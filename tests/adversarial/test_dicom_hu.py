"""Bad DICOM input made from pydicom's own test file ``CT_small.dcm`` (not written here):
the reader either returns the HU of pydicom's modality LUT, or refuses with an error that
names the file and the cause. Never silently wrong HU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from artifactgsi.dicom import DicomError, read_series
from artifactgsi.testing import series_from_testdata


def _reference_hu(files: list[Path]) -> np.ndarray:
    """HU per slice from pydicom's modality LUT, in the reader's slice order."""
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        out.append(apply_modality_lut(ds.pixel_array, ds))
    return np.stack(out)


def _original_hu() -> np.ndarray:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    return apply_modality_lut(ds.pixel_array, ds)


def _monochrome1(ds, i):
    ds.PhotometricInterpretation = "MONOCHROME1"


def _unsigned(ds, i):
    # Same HU as unsigned stored values: shift stored up, intercept down.
    stored = ds.pixel_array.astype(np.int32) + 1000
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.RescaleIntercept = float(ds.RescaleIntercept) - 1000


def _twelve_bits_with_overlay_bits(ds, i):
    # 12 bits stored in 16 allocated, with the unused high bits set (old overlay planes):
    # they are not part of the value.
    stored = (ds.pixel_array.astype(np.int32) + 1024) & 0x0FFF
    ds.PixelRepresentation = 0
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (stored | 0xF000).astype("<u2").tobytes()
    ds.RescaleIntercept = float(ds.RescaleIntercept) - 1024


def _intercept_per_slice(ds, i):
    ds.RescaleIntercept = -1024 + 10 * i


def _slope_per_slice(ds, i):
    ds.RescaleSlope = 1 + (i % 2)


CONVERTED = {
    "MONOCHROME1": _monochrome1,
    "unsigned pixel representation": _unsigned,
    "12 of 16 bits with overlay bits set": _twelve_bits_with_overlay_bits,
    "rescale intercept differs per slice": _intercept_per_slice,
    "rescale slope differs per slice": _slope_per_slice,
}


@pytest.mark.parametrize("case", list(CONVERTED))
def test_dicom_hu_equal_pydicom_modality_lut(tmp_path, case):
    files = series_from_testdata(tmp_path / "s", 6, edit=CONVERTED[case])
    series = read_series(tmp_path / "s")
    ref = _reference_hu(series.files)
    assert series.volume_hu.dtype == np.int16
    np.testing.assert_array_equal(series.volume_hu, ref)
    assert len(series.files) == len(files)


@pytest.mark.parametrize("case", ["MONOCHROME1", "unsigned pixel representation",
                                  "12 of 16 bits with overlay bits set"])
def test_dicom_encoding_does_not_change_hu(tmp_path, case):
    """An encoding variant of the same image reads as the same HU (-896..1167 for CT_small),
    independently of the reader: the original file's modality LUT is the reference."""
    series_from_testdata(tmp_path / "s", 6, edit=CONVERTED[case])
    vol = read_series(tmp_path / "s").volume_hu
    orig = _original_hu()
    assert (vol.min(), vol.max()) == (-896, 1167)
    for k in range(vol.shape[0]):
        np.testing.assert_array_equal(vol[k], orig)


def _del(*names):
    def edit(ds, i):
        for n in names:
            delattr(ds, n)
    return edit


def _set(slice_index=None, **values):
    def edit(ds, i):
        if slice_index is None or i == slice_index:
            for k, v in values.items():
                setattr(ds, k, v)
    return edit


REFUSED = {
    "slope missing": (_del("RescaleSlope"), "missing RescaleSlope"),
    "intercept missing": (_del("RescaleIntercept"), "missing RescaleIntercept"),
    "both missing": (_del("RescaleSlope", "RescaleIntercept"), "missing RescaleSlope"),
    "slope zero": (_set(RescaleSlope=0), "RescaleSlope is 0"),
    "slope negative (inverted)": (_set(RescaleSlope=-1), "RescaleSlope is -1"),
    "thickness differs": (_set(3, SliceThickness=2.5), "SliceThickness 2.5 mm differs"),
    "palette colour": (_set(PhotometricInterpretation="PALETTE COLOR"), "PALETTE COLOR"),
    "high bit": (_set(HighBit=11), "HighBit 11"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_dicom_bad_rescale_or_encoding_is_refused_by_name(tmp_path, case):
    edit, needle = REFUSED[case]
    series_from_testdata(tmp_path / "s", 6, edit=edit)
    with pytest.raises(DicomError) as err:
        read_series(tmp_path / "s")
    msg = str(err.value)
    assert needle in msg, msg
    assert str(tmp_path / "s") in msg and ".dcm" in msg, msg  # names the file
    assert "int16" not in msg  # an inverted series is not "HU exceed int16"


@pytest.mark.parametrize("keep", [200, 400, 600, 1000, 5000, 20000, 39000])
def test_dicom_truncated_file_is_reported_as_truncated(tmp_path, keep):
    files = series_from_testdata(tmp_path / "s", 6)
    victim = files[2]
    victim.write_bytes(victim.read_bytes()[:keep])
    with pytest.raises(DicomError) as err:
        read_series(tmp_path / "s")
    msg = str(err.value)
    assert str(victim) in msg and "truncated" in msg, msg
    assert "modality" not in msg.lower(), msg
