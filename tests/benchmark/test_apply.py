"""`marbench apply`: derived DICOM series from one's own CT, on DICOM nobody here wrote
(pydicom's CT_small) and on simulated series; bad input; the reference-free path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from scipy.ndimage import distance_transform_edt
from skimage.util import view_as_windows

from artifactgsi.dicom import DicomError, write_ct_series
from artifactgsi.physics.geometry import ImageGrid
from artifactgsi.testing import require_tool, series_from_testdata
from benchmark.apply import (
    ApplyError,
    MissingImplantTypeError,
    OutputExistsError,
    apply_to_series,
    reference_free_measures,
    run_reference_free,
)
from benchmark.method import MARInput, MARMethod, MAROutput
from benchmark.registry import register_method

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- test methods
@register_method("apply-test-add")
class AddHU(MARMethod):
    """Adds a constant (HU) to every pixel; records what it was given."""

    name = "apply-test-add"
    version = "7"
    seen: list[MARInput] = []

    def __init__(self, hu: float = 100.0) -> None:
        self.hu = hu

    def reduce(self, batch: MARInput) -> MAROutput:
        type(self).seen.append(batch)
        return MAROutput(image=batch.ordinary + float(self.hu))


@register_method("apply-test-neigh")
class NeighbourMean(MARMethod):
    """Mean of the slice and its two neighbours (edges repeated)."""

    name = "apply-test-neigh"
    neighbour_slices = 1

    def reduce(self, batch: MARInput) -> MAROutput:
        assert batch.neighbours is not None
        return MAROutput(image=batch.neighbours.mean(1, keepdim=True))


@register_method("apply-test-coarse")
class Coarse(MARMethod):
    """Identity, trained at 2x the source pixel size (so the runner resamples)."""

    name = "apply-test-coarse"
    pixel_spacing_mm = 2.0
    shapes: list[tuple[int, ...]] = []

    def reduce(self, batch: MARInput) -> MAROutput:
        type(self).shapes.append(tuple(batch.ordinary.shape))
        assert float(batch.pixel_spacing_mm[0]) == 2.0
        return MAROutput(image=batch.ordinary.clone())


@register_method("apply-test-implant")
class NeedsImplant(MARMethod):
    name = "apply-test-implant"
    needs_implant_type = True
    seen: list[str] = []

    def reduce(self, batch: MARInput) -> MAROutput:
        type(self).seen.extend(batch.implant_type)
        return MAROutput(image=batch.ordinary.clone())


# ----------------------------------------------------------------------------- helpers
def _phantom_series(folder: Path, n: int = 5, size: int = 48, px: float = 1.0,
                    seed: int = 0) -> Path:
    """A small simulated pelvis-like series: water body with noise, a bone ring, a metal
    disk (3000 HU) in the middle slices, air outside; written by the project's writer."""
    from artifactgsi.dicom import SeriesMeta

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx / 1.0, yy / 0.8)
    vol = np.full((n, size, size), -1000.0)
    for i in range(n):
        img = vol[i]
        img[r < size * 0.45] = 40.0
        img[(r > size * 0.3) & (r < size * 0.34)] = 900.0
        if 0 < i < n - 1:
            img[np.hypot(xx - 5, yy) < 3] = 3000.0
        img += rng.normal(0, 10, img.shape)
    meta = SeriesMeta(patient_name="DOE^JANE", patient_id="PID123", birth_date="19500101",
                      sex="F", study_date="20240102", study_time="101010",
                      institution="Test Hospital", referring_physician="DR^WHO",
                      accession_number="ACC1", study_uid="2.25.123456789012345678901",
                      series_number=3, series_description="Pelvis 120 kV",
                      manufacturer="Sim", model="SimCT", kvp=120.0, kev=None,
                      convolution_kernel="STANDARD",
                      frame_of_reference_uid="2.25.987654321098765432109",
                      slice_thickness_mm=2.5, body_part="PELVIS")
    grid = ImageGrid((size, size), px, (0.0, 0.0))
    write_ct_series(np.rint(vol).astype(np.int16), [2.5 * i for i in range(n)], grid, meta,
                    folder)
    return folder


def _by_position(folder: Path) -> dict[float, pydicom.Dataset]:
    out = {}
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        out[round(float(ds.ImagePositionPatient[2]), 4)] = ds
    return out


def _sitk_geometry(folder: Path) -> tuple:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    return img.GetOrigin(), img.GetSpacing(), img.GetDirection(), img.GetSize()


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = require_tool("dciodvfy", apt_package="dicom3tools")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


# ----------------------------------------------------------------------------- round trip
def test_identity_on_ct_small_is_exact_with_source_geometry(tmp_path: Path) -> None:
    src = tmp_path / "src"
    series_from_testdata(src, 4)
    out = tmp_path / "out"
    res = apply_to_series("identity", src, out)
    assert res.n_slices == 4 and res.clipped_pixels == 0 and res.warnings == []

    before, after = _by_position(src), _by_position(out)
    assert before.keys() == after.keys()
    series_uids, sop_uids = set(), set()
    for z, s in before.items():
        o = after[z]
        np.testing.assert_array_equal(o.pixel_array, s.pixel_array)  # stored values, exactly
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                   "SliceThickness", "Rows", "Columns", "BitsAllocated", "BitsStored",
                   "PixelRepresentation", "RescaleIntercept", "RescaleSlope",
                   "StudyInstanceUID", "FrameOfReferenceUID", "PatientID"):
            assert o.get(kw) == s.get(kw), kw
        assert o.SeriesInstanceUID != s.SeriesInstanceUID
        assert o.SOPInstanceUID != s.SOPInstanceUID
        assert o.file_meta.MediaStorageSOPInstanceUID == o.SOPInstanceUID
        assert list(o.ImageType)[:3] == ["DERIVED", "SECONDARY", "AXIAL"]
        assert o.SeriesNumber == int(s.SeriesNumber) + 1000
        assert "identity" in o.SeriesDescription
        assert "identity version 1" in o.DerivationDescription
        assert "metal mask HU > 2500" in o.DerivationDescription
        assert "sha256" in o.DerivationDescription
        assert o.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        series_uids.add(o.SeriesInstanceUID)
        sop_uids.add(o.SOPInstanceUID)
    assert len(series_uids) == 1 and len(sop_uids) == 4
    assert _sitk_geometry(out) == _sitk_geometry(src)


def test_identity_keeps_mirrored_axes_and_simulated_values(tmp_path: Path) -> None:
    # Columns along -x, rows along -y: the reader flips to canonical; output must flip back.
    def mirror(ds, i):
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]

    src = tmp_path / "src"
    series_from_testdata(src, 3, edit=mirror)
    apply_to_series("identity", src, tmp_path / "out")
    for z, s in _by_position(src).items():
        np.testing.assert_array_equal(_by_position(tmp_path / "out")[z].pixel_array,
                                      s.pixel_array)
    assert _sitk_geometry(tmp_path / "out") == _sitk_geometry(src)

    sim = _phantom_series(tmp_path / "sim")
    apply_to_series("identity", sim, tmp_path / "sim_out")
    for z, s in _by_position(sim).items():
        np.testing.assert_array_equal(_by_position(tmp_path / "sim_out")[z].pixel_array,
                                      s.pixel_array)
    assert _sitk_geometry(tmp_path / "sim_out") == _sitk_geometry(sim)


def test_rle_compressed_input_is_read_and_written_uncompressed(tmp_path: Path) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    src = tmp_path / "src"
    series_from_testdata(src, 3, edit=lambda ds, i: ds.compress(RLELossless))
    res = apply_to_series("identity", src, tmp_path / "out")
    for f in res.files:
        assert pydicom.dcmread(f).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    for z, s in _by_position(src).items():
        np.testing.assert_array_equal(_by_position(tmp_path / "out")[z].pixel_array,
                                      s.pixel_array)


def test_method_output_is_stored_in_source_representation_and_clipped(tmp_path: Path
                                                                       ) -> None:
    def pad_rows(ds, i):  # outside the field of view: PixelPaddingValue (-2000 in CT_small)
        arr = ds.pixel_array.copy()
        arr[:4] = int(ds.PixelPaddingValue)
        ds.PixelData = arr.tobytes()

    src = tmp_path / "src"
    series_from_testdata(src, 3, edit=pad_rows)
    res = apply_to_series("apply-test-add", src, tmp_path / "out", options={"hu": 100.0})
    assert res.version == "7" and res.options == {"hu": 100.0}
    outs = _by_position(tmp_path / "out")
    for z, s in _by_position(src).items():
        o = outs[z]
        pad = int(s.PixelPaddingValue)
        keep = s.pixel_array == pad
        assert keep[:4].all() and keep.sum() == 4 * keep.shape[1]
        expected = s.pixel_array.astype(np.int64) + 100  # slope 1: +100 HU = +100 stored
        expected[keep] = pad  # padding pixels keep the padding value
        np.testing.assert_array_equal(o.pixel_array, expected)
        assert '"hu": 100.0' in o.DerivationDescription
    # Signed 16-bit source: +40000 HU cannot be stored: clipped to 32767 and reported.
    res = apply_to_series("apply-test-add", src, tmp_path / "clip", options={"hu": 40000.0})
    assert res.clipped_pixels > 0 and "clipped" in res.warnings[0]
    arr = pydicom.dcmread(res.files[0]).pixel_array
    assert arr.max() == 32767


def test_neighbour_slices_repeat_edges(tmp_path: Path) -> None:
    sim = _phantom_series(tmp_path / "sim", n=4)
    apply_to_series("apply-test-neigh", sim, tmp_path / "out")
    src = _by_position(sim)
    zs = sorted(src)
    hu = np.stack([src[z].pixel_array * float(src[z].RescaleSlope)
                   + float(src[z].RescaleIntercept) for z in zs])
    out = _by_position(tmp_path / "out")
    for i, z in enumerate(zs):
        idx = [max(i - 1, 0), i, min(i + 1, len(zs) - 1)]
        expected = np.rint(hu[idx].mean(0).astype(np.float32))
        got = out[z].pixel_array * float(out[z].RescaleSlope) + float(out[z].RescaleIntercept)
        np.testing.assert_allclose(got, expected, atol=1)  # float32 mean, then rounding


def test_resampling_only_when_method_declares_a_pixel_size(tmp_path: Path) -> None:
    sim = _phantom_series(tmp_path / "sim", n=3, size=48, px=1.0)
    Coarse.shapes.clear()
    res = apply_to_series("apply-test-coarse", sim, tmp_path / "out")
    assert res.resampled_to_mm == 2.0
    assert Coarse.shapes and all(s[-2:] == (24, 24) for s in Coarse.shapes)
    o = pydicom.dcmread(res.files[1])
    assert (o.Rows, o.Columns) == (48, 48)
    assert "resampled in-plane to 2 mm" in o.DerivationDescription
    assert _sitk_geometry(tmp_path / "out") == _sitk_geometry(sim)
    AddHU.seen.clear()
    res = apply_to_series("apply-test-add", sim, tmp_path / "out2")
    assert res.resampled_to_mm is None and AddHU.seen[0].ordinary.shape[-2:] == (48, 48)
    # metal mask from the protocol threshold (2500 HU): the 3000 HU disk in the middle slice
    assert bool(AddHU.seen[0].metal_mask[1].any()) and not bool(AddHU.seen[0].metal_mask[0].any())


# ----------------------------------------------------------------------------- checkers
def test_output_passes_dciodvfy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    series_from_testdata(src, 2)
    res = apply_to_series("identity", src, tmp_path / "out")
    sim = _phantom_series(tmp_path / "sim", n=3)
    res2 = apply_to_series("apply-test-add", sim, tmp_path / "out2")
    res3 = apply_to_series("identity", sim, tmp_path / "deid", deidentify=True,
                           secret=b"k")
    for f in (res.files[0], res2.files[1], res3.files[0]):
        assert _dciodvfy_errors(f) == [], f


@pytest.mark.slow
def test_apply_on_simulator_output_li(tiny_built, tmp_path: Path) -> None:
    """The library's own simulator output (ordinary series of a tiny patient) through LI."""
    series = sorted((tiny_built.raw).glob("*/ordinary"))[0]
    res = apply_to_series("li", series, tmp_path / "out")
    assert res.metal_pixels > 0
    assert _sitk_geometry(tmp_path / "out") == _sitk_geometry(series)
    assert _dciodvfy_errors(res.files[0]) == []
    src = _by_position(series)
    out = _by_position(tmp_path / "out")
    changed = sum(int((out[z].pixel_array != s.pixel_array).sum()) for z, s in src.items())
    assert changed > 0


def test_deidentify_removes_identifiers(tmp_path: Path) -> None:
    sim = _phantom_series(tmp_path / "sim", n=2)
    res = apply_to_series("identity", sim, tmp_path / "out", deidentify=True, secret=b"key")
    s = pydicom.dcmread(sorted(sim.iterdir())[0])
    studies = set()
    for f in res.files:
        o = pydicom.dcmread(f)
        text = str(o)
        for value in ("DOE^JANE", "PID123", "19500101", "Test Hospital", "DR^WHO", "ACC1",
                      s.StudyInstanceUID, s.FrameOfReferenceUID, s.SOPInstanceUID):
            assert value not in text, value
        assert o.PatientIdentityRemoved == "YES"
        assert "SourceImageSequence" not in o
        studies.add(o.StudyInstanceUID)
        np.testing.assert_array_equal(o.pixel_array, pydicom.dcmread(
            sorted(sim.iterdir())[int(o.InstanceNumber) - 1]).pixel_array)
    assert len(studies) == 1


# ----------------------------------------------------------------------------- bad input
def _bad(kind: str, folder: Path) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    if kind == "missing slice":
        series_from_testdata(folder, 5)
        (folder / "IM0003.dcm").unlink()
    elif kind == "localizer":
        series_from_testdata(folder, 3, edit=lambda ds, i: setattr(
            ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    elif kind == "non-axial":
        series_from_testdata(folder, 3, edit=lambda ds, i: setattr(
            ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))
    elif kind == "non-CT":
        series_from_testdata(folder, 3, edit=lambda ds, i: setattr(ds, "Modality", "MR"))
    elif kind == "compressed":
        def lossy(ds, i):
            ds.PixelData = encapsulate([ds.PixelData])
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        series_from_testdata(folder, 3, edit=lossy)


@pytest.mark.parametrize(("kind", "message"), [
    ("missing slice", "missing or irregular slices"),
    ("localizer", "LOCALIZER"),
    ("non-axial", "not axial"),
    ("non-CT", "modality is 'MR'"),
    ("compressed", "unsupported transfer syntax"),
])
def test_bad_input_is_a_named_error_leaving_nothing(tmp_path: Path, kind: str,
                                                    message: str) -> None:
    src = tmp_path / "src"
    _bad(kind, src)
    out = tmp_path / "out"
    with pytest.raises(DicomError, match=message):
        apply_to_series("identity", src, out)
    _nothing_left(out)


def test_mixed_series_needs_series_uid(tmp_path: Path) -> None:
    src = tmp_path / "src"
    series_from_testdata(src, 3)
    other_uid = "1.2.826.0.1.3680043.8.498.99"

    def other(ds, i):
        ds.SeriesInstanceUID = other_uid
        ds.SOPInstanceUID = f"{other_uid}.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    paths = series_from_testdata(tmp_path / "b", 4, edit=other)
    for p in paths:
        p.rename(src / f"B{p.name}")
    out = tmp_path / "out"
    with pytest.raises(ApplyError, match=r"2 series found .*--series UID") as err:
        apply_to_series("identity", src, out)
    assert other_uid in str(err.value)
    _nothing_left(out)
    res = apply_to_series("identity", src, out, series_uid=other_uid)
    assert res.n_slices == 4
    assert {pydicom.dcmread(f).SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in res.files} == {f"{other_uid}.{i}" for i in range(1, 5)}
    with pytest.raises(ApplyError, match="no series with SeriesInstanceUID 1.2.3"):
        apply_to_series("identity", src, tmp_path / "o2", series_uid="1.2.3")


def test_existing_output_refused_unless_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "src"
    series_from_testdata(src, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        apply_to_series("identity", src, out)
    assert (out / "keep.txt").read_text() == "mine"
    apply_to_series("identity", src, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["IM00001.dcm", "IM00002.dcm"]


def test_implant_type_required_where_needed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    series_from_testdata(src, 2)
    with pytest.raises(MissingImplantTypeError, match="--implant-type"):
        apply_to_series("apply-test-implant", src, tmp_path / "out")
    _nothing_left(tmp_path / "out")
    with pytest.raises(ApplyError, match="not one of"):
        apply_to_series("apply-test-implant", src, tmp_path / "out", implant_type="hip")
    NeedsImplant.seen.clear()
    apply_to_series("apply-test-implant", src, tmp_path / "out", implant_type="hip_prosthesis")
    assert NeedsImplant.seen == ["hip_prosthesis", "hip_prosthesis"]


def test_cli_apply_and_lga_without_implant_type(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from benchmark.cli import app

    src = tmp_path / "src"
    series_from_testdata(src, 2)
    runner = CliRunner()
    r = runner.invoke(app, ["apply", "--method", "identity", str(src), str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "o").iterdir())) == 2
    r = runner.invoke(app, ["apply", "--method", "identity", str(src), str(tmp_path / "o")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(app, ["apply", "-m", "lga", str(src), str(tmp_path / "l")])
    assert r.exit_code == 2 and "--implant-type" in r.output
    _nothing_left(tmp_path / "l")


# ----------------------------------------------------------------------------- no reference
def test_reference_free_measures_hand_case() -> None:
    o = np.full((128, 128), 40.0)
    o[10:14, 10:14] = 3000.0
    m = o.copy()
    m[100:128, 100:110] += 10.0  # a step far from metal ...
    m[14:20, 14:20] -= 50.0  # ... and a change in the streak band
    rng = np.random.default_rng(0)
    r = reference_free_measures(o, m, pixel_spacing_mm=1.0)
    metal = o > 2500
    dist = distance_transform_edt(~metal)
    band = (dist > 2) & (dist <= 40)
    expected_energy = ((m - o)[band] ** 2).mean()
    assert r["streak_band_energy_hu2"] == pytest.approx(expected_energy)
    assert expected_energy > 0
    assert r["metal_pixels"] == 16 and r["band_pixels"] == band.sum()
    # far soft tissue noise: median over 5x5 windows wholly inside the far region of the
    # window SD, checked against skimage's windows
    far = (dist >= 60) & (o >= -100) & (o <= 150)
    assert r["far_pixels"] == far.sum() > 100
    noisy_m = m + rng.normal(0, 5, m.shape)
    r = reference_free_measures(o, noisy_m, pixel_spacing_mm=1.0)
    win = view_as_windows(noisy_m, (5, 5))
    inside = view_as_windows(far, (5, 5)).all(axis=(2, 3))
    expected = np.median(win[inside].reshape(-1, 25).std(axis=1, ddof=1))
    assert r["far_soft_tissue_sd_hu"] == pytest.approx(expected, rel=1e-9)
    assert 3.5 < r["far_soft_tissue_sd_hu"] < 6.5  # the step edge barely moves the median
    assert r["far_soft_tissue_sd_ordinary_hu"] == pytest.approx(0.0, abs=1e-5)
    noisy = o + rng.normal(0, 5, o.shape)
    r2 = reference_free_measures(noisy, noisy, pixel_spacing_mm=1.0)
    assert r2["streak_band_energy_hu2"] == 0.0


def test_run_reference_free_writes_panels_and_says_no_reference(tmp_path: Path) -> None:
    root = tmp_path / "patients"
    _phantom_series(root / "A", n=3, size=96, px=1.5, seed=1)
    _phantom_series(root / "B", n=3, size=96, px=1.5, seed=2)
    doc = run_reference_free("identity", root, tmp_path / "gen")
    saved = json.loads((tmp_path / "gen" / "reference_free.json").read_text())
    assert saved["reference"] is None and "No reference image exists" in saved["reference_note"]
    assert [p["patient_id"] for p in saved["patients"]] == ["A", "B"]
    assert (tmp_path / "gen" / "panels" / "A.png").stat().st_size > 1000
    assert doc["mean"]["streak_band_energy_hu2"] == 0.0  # identity changes nothing
    sd = saved["patients"][0]["mean"]["far_soft_tissue_sd_hu"]
    assert 8 < sd < 12  # the phantom's noise SD is 10 HU


def test_cli_report_and_generalization_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from benchmark.cli import app

    sim = _phantom_series(tmp_path / "pats" / "P1", n=3)
    runner = CliRunner()
    r = runner.invoke(app, ["apply", "-m", "apply-test-add", "-O", "hu=5", str(sim),
                            str(tmp_path / "o"), "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "rep" / "reference_free.json").read_text())
    assert doc["reference"] is None and doc["method"]["options"] == {"hu": 5}
    # +5 HU everywhere: the band energy is exactly 25 HU^2 (HU are integers)
    assert doc["mean"]["streak_band_energy_hu2"] == pytest.approx(25.0)
    r = runner.invoke(app, ["generalization", "-m", "identity", str(tmp_path / "pats"),
                            str(tmp_path / "gen")])
    assert r.exit_code == 0, r.output
    assert "no reference" in r.output
    assert (tmp_path / "gen" / "panels" / "P1.png").is_file()


@pytest.mark.slow
def test_reference_free_on_built_dataset_uses_only_ordinary(tiny_built, tmp_path: Path) -> None:
    doc = run_reference_free("identity", tiny_built.built, tmp_path / "gen", split="test")
    assert doc["reference"] is None and doc["patients"]
    assert doc["mean"]["streak_band_energy_hu2"] == 0.0
    for p in doc["patients"]:
        assert p["implant_type"] in ("hip_prosthesis", "fracture_fixation", "spinal_fixation")
        assert (tmp_path / "gen" / p["panel"]).is_file()


def test_reference_free_on_a_dataset_without_gsi(tmp_path: Path) -> None:
    """A built `generalization` config (ordinary series only, another scanner profile) is read
    as the raw DICOM series it came from, and scored without reference."""
    import SimpleITK as sitk

    from artifactgsi.build import build_dataset
    from artifactgsi.simulate import SimConfig, simulate_dataset

    cfg = SimConfig(patients=1, slices=3, size=48, seed=4, clean_patients=0, supersample=1,
                    scanner="low-dose-100kv", split_hint="generalization")
    simulate_dataset(cfg, tmp_path / "raw")
    build_dataset(tmp_path / "raw", tmp_path / "built", secret=b"s" * 32)
    assert (tmp_path / "built" / "generalization").is_dir()
    assert not (tmp_path / "built" / "pairs").exists()
    doc = run_reference_free("identity", tmp_path / "built", tmp_path / "gen")
    assert doc["reference"] is None and len(doc["patients"]) == 1
    import csv

    row = next(csv.DictReader((tmp_path / "raw" / "manifest.csv").open()))
    assert doc["patients"][0]["implant_type"] == row["implant_type"] != "none"
    assert doc["mean"]["streak_band_energy_hu2"] == 0.0
    from benchmark.apply.reference_free import _volumes

    (vol,) = _volumes(tmp_path / "built", "test")
    folder = next(p for p in (tmp_path / "raw").iterdir() if p.is_dir()) / "ordinary"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = sitk.GetArrayFromImage(reader.Execute())
    np.testing.assert_array_equal(vol.volume_hu, ref)
