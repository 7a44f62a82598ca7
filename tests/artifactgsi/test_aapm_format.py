"""The AAPM CT-MAR Grand Challenge's data format (reader, import into the `aapm` config) and
the `aapm` scanner profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from artifactgsi.cli import app
from artifactgsi.formats.aapm import (
    AAPM_FOV_MM,
    AAPMCase,
    AAPMFormatError,
    find_cases,
    import_aapm,
    read_case,
    read_raw,
    write_aapm_case,
)
from artifactgsi.hub import manifest_entry_problems, read_manifest
from artifactgsi.scanners import SCANNER_PROFILES, scanner_profile

N = 32


def case_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:N, :N]
    body = (yy - 16) ** 2 + (xx - 16) ** 2 < 14**2
    ref = np.where(body, 40.0, -1000.0) + np.round(rng.normal(0, 10, (N, N)) * body)
    metal = (yy - 16) ** 2 + (xx - 20) ** 2 <= 4
    unc = ref + 0.25 + np.round(60 * np.sin(xx / 2.0)) * body  # .25: rounding is checked
    unc[metal] = 20000.0
    return unc.astype(np.float32), ref.astype(np.float32), metal


def test_real_sizes_byte_counts_and_names(tmp_path):
    """The challenge's sizes: 512 x 512 float32 images (1 048 576 bytes), sinograms of 1000
    views x 900 channels (3 600 000 bytes) named ..._900x1000.raw."""
    case = AAPMCase("training", "body", 7)
    assert case.expected_name("with_metal") == "training_body_metalart_img7_512x512x1.raw"
    assert case.expected_name("sino_with_metal") == "training_body_metalart_sino7_900x1000.raw"
    img = tmp_path / "img.raw"
    np.zeros(512 * 512, "<f4").tofile(img)
    assert img.stat().st_size == 1_048_576
    assert read_raw(img, (512, 512)).shape == (512, 512)
    sino = tmp_path / "sino.raw"
    np.arange(1000 * 900, dtype="<f4").tofile(sino)
    assert sino.stat().st_size == 3_600_000
    s = read_raw(sino, (1000, 900))
    assert s[1, 0] == 900.0  # row-major: one view after another
    with pytest.raises(AAPMFormatError, match=r"1000 x 901 float32 \(3604000 bytes\), found "
                                              r"3600000 bytes"):
        read_raw(sino, (1000, 901), "sinogram")
    (tmp_path / "odd.raw").write_bytes(b"\0" * 10)
    with pytest.raises(AAPMFormatError, match="not a whole number of float32"):
        read_raw(tmp_path / "odd.raw", (2, 2))
    np.array([1.0, np.nan, 0, 0], "<f4").tofile(tmp_path / "nan.raw")
    with pytest.raises(AAPMFormatError, match="non-finite"):
        read_raw(tmp_path / "nan.raw", (2, 2))


def test_write_find_read_round_trip(tmp_path):
    unc, ref, metal = case_arrays(0)
    sino = np.random.default_rng(1).random((10, 9)).astype(np.float32)
    files = write_aapm_case(tmp_path, "head", 3, unc, ref, metal, sino, sino)
    assert files["with_metal"].parent.name == "Baseline"
    assert files["metal_mask"].name == "training_head_metalonlymask_img3_32x32x1.raw"
    assert files["sino_without_metal"].name == "training_head_nometal_sino3_9x10.raw"
    (case,) = find_cases(tmp_path)
    d = read_case(case, image_size=N, sino_shape=(10, 9))
    np.testing.assert_array_equal(d.with_metal, unc)
    np.testing.assert_array_equal(d.without_metal, ref)
    np.testing.assert_array_equal(d.metal, metal)
    assert d.pixel_mm == pytest.approx(AAPM_FOV_MM["head"] / N)
    assert set(d.sinogram_sha256) == {"sino_with_metal", "sino_without_metal"}


def test_a_case_without_a_metal_mask_is_refused_by_name(tmp_path):
    unc, ref, _ = case_arrays(0)
    write_aapm_case(tmp_path, "body", 12, unc, ref, None)
    (case,) = find_cases(tmp_path)
    with pytest.raises(AAPMFormatError, match=r"case training_body_12: no metal mask .*"
                                              r"training_body_metalonlymask_img12_32x32x1"):
        read_case(case, image_size=N)
    with pytest.raises(AAPMFormatError, match="training_body_12: no metal mask"):
        import_aapm(tmp_path, tmp_path / "out", image_size=N)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_sinogram_of_the_wrong_shape_is_refused(tmp_path):
    unc, ref, metal = case_arrays(0)
    # Named as the challenge's 900 x 1000 but holding 999 views.
    write_aapm_case(tmp_path, "body", 1, unc, ref, metal,
                    sino_with_metal=np.zeros((999, 900), np.float32))
    (case,) = find_cases(tmp_path)
    assert case.files["sino_with_metal"].name.endswith("_900x999.raw")
    with pytest.raises(AAPMFormatError, match="name says 900x999, but sinograms of this "
                                              "import are 900x1000"):
        read_case(case, image_size=N)
    bad = case.files["sino_with_metal"]
    right_name = bad.with_name(bad.name.replace("900x999", "900x1000"))
    bad.rename(right_name)
    (case,) = find_cases(tmp_path)
    with pytest.raises(AAPMFormatError, match=r"1000 views x 900 channels.*should be 1000 x "
                                              r"900 float32 \(3600000 bytes\), found 3596400"):
        read_case(case, image_size=N)


def test_image_size_and_mask_values_are_checked(tmp_path):
    unc, ref, metal = case_arrays(0)
    write_aapm_case(tmp_path, "body", 1, unc, ref, metal)
    (case,) = find_cases(tmp_path)
    with pytest.raises(AAPMFormatError, match="name says 32x32x1, but images of this import "
                                              "are 512x512x1"):
        read_case(case)  # the default, the challenge's 512
    write_aapm_case(tmp_path / "b", "body", 2, unc, ref, metal * 0.7)
    (case,) = find_cases(tmp_path / "b")
    with pytest.raises(AAPMFormatError, match="holds only 0 and 1"):
        read_case(case, image_size=N)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AAPMFormatError, match="no file named like"):
        find_cases(tmp_path / "empty")
    with pytest.raises(AAPMFormatError, match="not a folder"):
        find_cases(tmp_path / "missing")


def test_import_writes_the_aapm_config_with_card_and_manifest(tmp_path):
    import datasets

    src = tmp_path / "src"
    arrays = [case_arrays(i) for i in range(3)]
    for i, (unc, ref, metal) in enumerate(arrays):
        write_aapm_case(src, "body" if i < 2 else "head", i, unc, ref, metal)
    res = CliRunner().invoke(app, ["import-aapm", str(src), str(tmp_path / "out"),
                                   "--image-size", str(N)])
    assert res.exit_code == 0, res.output
    assert "imported 3 cases" in res.output
    out = tmp_path / "out"
    manifest = read_manifest(out)
    problems, _ = manifest_entry_problems(out, manifest["files"])
    assert not problems
    assert manifest["configs"] == {"aapm": {"test": {"rows": 3, "patients": 3, "files": [
        "aapm/test-00000-of-00001.parquet"]}}}
    card = (out / "README.md").read_text()
    assert "config_name: aapm" in card and "--protocol aapm-ctmar-2024" in card
    ds = datasets.load_dataset("parquet", data_files=str(out / "aapm" / "*.parquet"),
                               split="train").with_format("numpy", dtype=None)
    assert ds.column_names == ["patient_id", "slice_index", "z_mm", "ordinary", "reference",
                               "metal_mask", "implant_type", "anatomy", "pixel_spacing_mm",
                               "kvp", "manufacturer", "model"]
    for i, (unc, ref, metal) in enumerate(arrays):
        row = ds[i]
        assert row["patient_id"] == f"training_{'body' if i < 2 else 'head'}_{i}"
        assert row["ordinary"].dtype == np.int16
        np.testing.assert_array_equal(row["ordinary"], np.rint(unc))  # +0.25 rounds away
        np.testing.assert_array_equal(row["reference"], ref)
        np.testing.assert_array_equal(row["metal_mask"], metal.astype(np.uint8))
        fov = AAPM_FOV_MM["body" if i < 2 else "head"]
        assert row["pixel_spacing_mm"] == pytest.approx(fov / N)
    # Refuses to overwrite without being asked.
    res = CliRunner().invoke(app, ["import-aapm", str(src), str(out), "--image-size", str(N)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    sinos = json.loads((out / "aapm_sinograms.json").read_text())
    assert set(sinos["cases"]) == {"training_body_0", "training_body_1", "training_head_2"}


def test_the_aapm_scanner_profile_has_the_challenges_geometry():
    p = scanner_profile("aapm")
    g = p.geometry(512)
    assert (g.sid_mm, g.sdd_mm, g.n_det, g.n_views) == (550.0, 950.0, 900, 1000)
    assert g.det_pitch_mm == pytest.approx(1.0)
    assert p.ordinary.kvp == 120.0
    # Scaled grids keep the fan: channels x pitch is the same 900 mm detector.
    for size in (48, 128):
        gs = p.geometry(size)
        assert gs.n_det * gs.det_pitch_mm == pytest.approx(900.0)
        assert gs.n_views % 4 == 0
    # The fan covers a 471 mm circle; the simulator's patients stay within 380 mm.
    half = np.arctan(450.0 / 950.0)
    assert 2 * 550.0 * np.sin(half) == pytest.approx(470.9, abs=0.1)
    assert "aapm" in SCANNER_PROFILES


@pytest.mark.slow
def test_simulate_with_the_aapm_scanner(tmp_path):
    res = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "raw"), "--patients",
                                   "1", "--clean-patients", "0", "--slices", "1", "--size",
                                   "32", "--scanner", "aapm"])
    assert res.exit_code == 0, res.output
    truth = json.loads(next((tmp_path / "raw").glob("*/truth.json")).read_text())
    geo = truth["ordinary_geometry"]
    want = scanner_profile("aapm").geometry(32)
    assert (geo["sid_mm"], geo["sdd_mm"], geo["n_det"], geo["n_views"]) == (
        550.0, 950.0, want.n_det, want.n_views)
    assert geo["det_pitch_mm"] == pytest.approx(900.0 / want.n_det)
    assert truth["scanner"] == "aapm"
