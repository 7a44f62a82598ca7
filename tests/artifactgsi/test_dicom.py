"""DICOM writer / reader / de-identification: exact HU and geometry through pydicom and
SimpleITK (independent readers), dciodvfy, atomic writes, named errors for bad series."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from artifactgsi import dicom
from artifactgsi.dicom import (
    DicomError,
    SeriesMeta,
    deidentified_header,
    pseudonym,
    read_series,
    remap_uid,
    write_ct_series,
)
from artifactgsi.physics.geometry import ImageGrid
from artifactgsi.testing import require_tool

IDENTIFYING = ("DOE^JANE", "ID-123456", "19700101", "St Example Hospital", "HOUSE^GREGORY",
               "ACC-998877", "20240315")


def _meta(**over) -> SeriesMeta:
    base = dict(patient_name="DOE^JANE", patient_id="ID-123456", birth_date="19700101", sex="F",
                study_date="20240315", study_time="101500", institution="St Example Hospital",
                referring_physician="HOUSE^GREGORY^^DR", accession_number="ACC-998877",
                study_uid="1.2.826.0.1.3680043.10.1010.1", series_number=3,
                series_description="GSI MonoE 70keV", manufacturer="GE MEDICAL SYSTEMS",
                model="Discovery CT750 HD", kvp=140.0, kev=70.0, convolution_kernel="STANDARD",
                frame_of_reference_uid="1.2.826.0.1.3680043.10.1010.2", slice_thickness_mm=2.5,
                body_part="HIP", series_uid="1.2.826.0.1.3680043.10.1010.3")
    base.update(over)
    return SeriesMeta(**base)


GRID = ImageGrid((24, 32), 0.781, (12.5, -7.25))
Z = [-20.0, -17.5, -15.0, -12.5, -10.0]


@pytest.fixture
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = rng.integers(-1024, 3072, size=(len(Z), *GRID.shape)).astype(np.int16)
    vol[0, 0, :4] = [-1024, 3071, 31743, 0]  # air, CT range top, 15-bit metal, water
    return vol


@pytest.fixture
def series(tmp_path, volume) -> Path:
    out = tmp_path / "gsi"
    write_ct_series(volume, Z, GRID, _meta(), out)
    return out


def test_pydicom_and_simpleitk_read_back_exact_hu_and_geometry(series, volume):
    files = sorted(series.glob("*.dcm"))
    assert len(files) == len(Z)
    x0, y0 = GRID.origin_mm()
    uids = set()
    for f in files:
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        hu = ds.pixel_array.astype(np.int64) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, volume[k])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], (x0, y0, Z[k]),
                                   atol=1e-9)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.781, 0.781])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert float(ds.SliceThickness) == 2.5 and float(ds.SpacingBetweenSlices) == 2.5
        assert float(ds.MonoenergeticEnergyEquivalent) == 70.0 and "VMI" in ds.ImageType
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(Z)
    img = sitk.ReadImage([str(f) for f in files])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), volume)
    np.testing.assert_allclose(img.GetOrigin(), (x0, y0, Z[0]), atol=1e-6)
    np.testing.assert_allclose(img.GetSpacing(), (0.781, 0.781, 2.5), atol=1e-6)


def test_read_series_sorts_by_position_not_file_name(series, volume):
    files = sorted(series.glob("*.dcm"))
    rng = np.random.default_rng(1)
    for f, name in zip(files, rng.permutation(len(files)), strict=True):
        f.rename(series / f"x{name}")  # names now unrelated to the slice order, no extension
    s = read_series(series)
    assert s.volume_hu.dtype == np.int16
    np.testing.assert_array_equal(s.volume_hu, volume)
    np.testing.assert_allclose(s.z_mm, Z)
    assert s.grid.shape == GRID.shape and s.grid.pixel_mm == pytest.approx(GRID.pixel_mm)
    np.testing.assert_allclose(s.grid.centre_mm, GRID.centre_mm, atol=1e-9)
    assert (s.kvp, s.kev, s.slice_thickness_mm) == (140.0, 70.0, 2.5)
    assert (s.manufacturer, s.model) == ("GE MEDICAL SYSTEMS", "Discovery CT750 HD")


def test_float_input_is_rounded_and_values_below_air_are_kept(tmp_path):
    vol = np.full((2, 8, 8), 12.4)
    vol[0, 0, 0] = -2000.6  # below the usual intercept: the intercept follows the minimum
    write_ct_series(vol, [0.0, 1.0], ImageGrid((8, 8), 1.0), _meta(kev=None), tmp_path / "s")
    s = read_series(tmp_path / "s")
    assert s.volume_hu[0, 0, 0] == -2001 and s.volume_hu[1, 3, 3] == 12


def test_writer_rejects_bad_arguments(tmp_path, volume):
    with pytest.raises(ValueError, match="z_mm has 2 positions for 5 slices"):
        write_ct_series(volume, [0.0, 1.0], GRID, _meta(), tmp_path / "a")
    with pytest.raises(ValueError, match="more than 16 bits"):
        write_ct_series(np.array([[[-30000.0, 40000.0]]]), [0.0], ImageGrid((1, 2), 1.0),
                        _meta(), tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_ct_series(volume, Z, GRID, _meta(), tmp_path / "c")


def test_output_is_deterministic(tmp_path, volume):
    write_ct_series(volume, Z, GRID, _meta(), tmp_path / "a")
    write_ct_series(volume, Z, GRID, _meta(), tmp_path / "b")
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()


def test_interrupted_write_leaves_nothing(tmp_path, volume, monkeypatch):
    calls = {"n": 0}
    real = pydicom.dataset.Dataset.save_as

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", failing)
    with pytest.raises(OSError, match="disk full"):
        write_ct_series(volume, Z, GRID, _meta(), tmp_path / "gsi")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kev,body_part", [(70.0, "HIP"), (None, "LSPINE")])
def test_dciodvfy_reports_no_errors(tmp_path, volume, kev, body_part):
    require_tool("dciodvfy", apt_package="dicom3tools")
    files = write_ct_series(volume, Z, GRID, _meta(kev=kev, body_part=body_part), tmp_path / "s")
    r = subprocess.run(["dciodvfy", str(files[1])], capture_output=True, text=True)
    lines = (r.stdout + r.stderr).splitlines()
    assert not [ln for ln in lines if ln.startswith("Error")], lines
    if kev is None:  # the ordinary series is a plain standard CT Image
        assert not [ln for ln in lines if ln.startswith("Warning")], lines


def test_mirrored_orientation_is_read_into_the_canonical_grid(series, volume):
    """A series stored right-to-left (row direction -x) reads back as the same image."""
    w = GRID.shape[1]
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (w - 1) * GRID.pixel_mm, y, z]
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
        ds.save_as(f)
    s = read_series(series)
    np.testing.assert_array_equal(s.volume_hu, volume)
    np.testing.assert_allclose(s.grid.centre_mm, GRID.centre_mm, atol=1e-6)


# --------------------------------------------------------------------------- bad series
def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for k, v in values.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(path)


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _other_series(f: Path) -> None:
    _edit(f, SeriesInstanceUID="1.2.826.0.1.3680043.10.1010.99")


def _unsupported_syntax(f: Path) -> None:
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG baseline: lossy
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])  # stands in for a JPEG frame
    ds.save_as(f)


def _gap(f: Path) -> None:
    f.unlink()


BAD = {
    "truncated": (_truncate, "truncated"),
    "no pixel data": (lambda f: _edit(f, PixelData=None), "no pixel data"),
    "not CT": (lambda f: _edit(f, Modality="MR"), "modality is 'MR'"),
    "mixed series": (_other_series, "2 series in one folder"),
    "transfer syntax": (_unsupported_syntax, "unsupported transfer syntax"),
    "spacing": (lambda f: _edit(f, PixelSpacing=[0.8, 0.8]), "PixelSpacing"),
    "orientation": (lambda f: _edit(f, ImageOrientationPatient=[1, 0, 0, 0, 0.9, 0.43589]),
                    "ImageOrientationPatient"),
    "matrix": (lambda f: _edit(f, Rows=12, PixelData=b"\0" * (12 * 32 * 2)), "matrix"),
    "in-plane position": (lambda f: _edit(f, ImagePositionPatient=[0.0, 0.0, -15.0]),
                          "in-plane ImagePositionPatient"),
    "missing slice": (_gap, "slice spacing"),
    "duplicate": (lambda f: _edit(f, ImagePositionPatient=[
        *pydicom.dcmread(f).ImagePositionPatient[:2], -17.5]), "duplicate slice"),
    "burned-in": (lambda f: _edit(f, BurnedInAnnotation="YES"), "BurnedInAnnotation"),
    "localizer": (lambda f: _edit(f, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
                  "LOCALIZER"),
    "not dicom": (lambda f: f.write_text("hello"), "not a DICOM file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_series_raise_a_named_error(series, case):
    spoil, needle = BAD[case]
    victim = sorted(series.glob("*.dcm"))[2]
    spoil(victim)
    with pytest.raises(DicomError) as err:
        read_series(series)
    msg = str(err.value)
    assert needle in msg, msg
    assert str(series) in msg  # the folder or the file is named


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DicomError, match="not a folder"):
        read_series(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no DICOM files"):
        read_series(tmp_path / "empty")


# --------------------------------------------------------------------------- de-identification
def test_header_holds_only_allow_listed_values_and_keyed_pseudonyms(series):
    key = b"k" * 32
    s = read_series(series, key)
    text = repr(s.header)
    for value in IDENTIFYING:
        assert value not in text
    ds = pydicom.dcmread(sorted(series.glob("*.dcm"))[0])
    assert s.header["patient_pseudonym"] == pseudonym(key, "ID-123456")
    assert s.header["series_uid"] == remap_uid(key, ds.SeriesInstanceUID) != ds.SeriesInstanceUID
    assert s.header["KVP"] == 140.0 and s.header["MonoenergeticEnergyEquivalent"] == 70.0
    assert set(s.header) <= set(dicom.HEADER_ALLOWLIST) | {
        "patient_pseudonym", "study_uid", "series_uid", "frame_of_reference_uid"}
    assert "patient_pseudonym" not in read_series(series).header  # no key: no pseudonyms


def test_private_tags_never_reach_the_header(series):
    f = sorted(series.glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "DOE^JANE private")
    assert "private" not in repr(deidentified_header(ds, b"key"))


def test_pseudonyms_are_stable_keyed_and_not_reversible_without_the_key():
    a = pseudonym(b"secret-1", "ID-123456")
    assert a == pseudonym(b"secret-1", "ID-123456")
    assert a != pseudonym(b"secret-2", "ID-123456") and a != pseudonym(b"secret-1", "ID-123457")
    assert len(a) == 17 and a.startswith("P") and "123456" not in a
    uid = "1.2.3.4.5"
    assert remap_uid(b"k", uid) == remap_uid(b"k", uid) != remap_uid(b"j", uid)
    assert len(remap_uid(b"k", uid)) <= 64
    with pytest.raises(ValueError):
        pseudonym(b"", "x")


def test_kev_falls_back_to_the_series_description(tmp_path, volume):
    write_ct_series(volume, Z, GRID, _meta(kev=None, series_description="GSI 65 keV"),
                    tmp_path / "s")
    assert read_series(tmp_path / "s").kev == 65.0
    write_ct_series(volume, Z, GRID, _meta(kev=None, series_description="Routine"),
                    tmp_path / "t")
    assert read_series(tmp_path / "t").kev is None
