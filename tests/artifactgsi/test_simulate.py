"""End-to-end simulator: raw layout, DICOM round trip, ground-truth sidecar, determinism,
bad arguments."""

import csv
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from artifactgsi.cli import app
from artifactgsi.simulate import SimConfig, plan_patients, simulate_dataset, simulate_patient
from artifactgsi.testing import require_tool

CFG = SimConfig(patients=3, slices=3, size=48, seed=3, clean_patients=1, supersample=2)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    simulate_dataset(CFG, out)
    return out


def _series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(files)
    return reader.Execute()


def test_raw_layout_and_manifest(raw):
    rows = list(csv.DictReader((raw / "manifest.csv").open()))
    assert [r["implant_type"] for r in rows] == ["hip_prosthesis", "fracture_fixation",
                                                 "spinal_fixation", "none"]
    for r in rows:
        p = raw / r["patient_id"]
        assert len(list((p / "ordinary").glob("*.dcm"))) == CFG.slices
        if r["implant_type"] == "none":
            assert not (p / "gsi").exists() and r["split_hint"] == "clean"
        else:
            assert len(list((p / "gsi").glob("*.dcm"))) == CFG.slices
            for f in ("labels.nii.gz", "ideal.nii.gz", "clean.nii.gz", "truth.json"):
                assert (p / f).exists(), f
    assert not list(raw.glob(".tmp-*"))


def test_dicom_reads_back_exactly(raw):
    plan = plan_patients(CFG)[0]
    res = simulate_patient(CFG, plan)  # deterministic: same arrays as written
    p = raw / plan.patient_id
    for name, vol, grid, z in (("ordinary", res.ordinary, res.ordinary_grid, res.ordinary_z_mm),
                               ("gsi", res.gsi, res.gsi_grid, res.gsi_z_mm)):
        img = _series(p / name)
        hu = sitk.GetArrayFromImage(img)
        expected = np.clip(np.rint(vol), -1024, 31743)
        np.testing.assert_array_equal(hu, expected)
        assert img.GetSpacing()[0] == pytest.approx(grid.pixel_mm, abs=1e-4)
        x0, y0 = grid.origin_mm()
        np.testing.assert_allclose(img.GetOrigin(), (x0, y0, z[0]), atol=1e-3)
        ds = pydicom.dcmread(sorted((p / name).glob("*.dcm"))[0])
        assert ds.Modality == "CT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert float(ds.KVP) == (120.0 if name == "ordinary" else 140.0)
    lab = sitk.ReadImage(str(p / "labels.nii.gz"))
    assert sitk.GetArrayFromImage(lab).max() >= 1  # metal (and bone) labels present
    gsi = _series(p / "gsi")
    np.testing.assert_allclose(lab.GetOrigin(), gsi.GetOrigin(), atol=1e-3)


def test_dciodvfy_reports_no_errors(raw):
    require_tool("dciodvfy", apt_package="dicom3tools")
    pid = plan_patients(CFG)[0].patient_id
    for name in ("ordinary", "gsi"):
        f = sorted((raw / pid / name).glob("*.dcm"))[0]
        r = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, errors


def test_sidecar_offsets_are_what_was_applied(raw):
    """Metal centroids (physical mm) in ordinary vs GSI move as the recorded pose says."""
    for plan in plan_patients(CFG)[:3]:
        p = raw / plan.patient_id
        truth = json.loads((p / "truth.json").read_text())
        assert truth["ordinary_pose"] == plan.pose
        assert truth["z_motion_mm"] == plan.z_motion_mm
        o, g = _series(p / "ordinary"), _series(p / "gsi")
        # Registered by the recorded truth, the ordinary series overlays the GSI series:
        # resample ordinary onto the GSI grid through the inverse pose and compare metal.
        pose = truth["ordinary_pose"]
        tr = sitk.Euler3DTransform()
        tr.SetRotation(0, 0, np.deg2rad(pose["angle_deg"]))
        tr.SetTranslation((pose["tx_mm"], pose["ty_mm"], plan.z_motion_mm))
        # GSI point p (patient pose = identity) is seen in the ordinary scan at R p + t + dz
        on_gsi = sitk.GetArrayFromImage(sitk.Resample(o, g, tr, sitk.sitkLinear, -1024.0))
        naive = sitk.GetArrayFromImage(sitk.Resample(o, g, sitk.Transform(), sitk.sitkLinear,
                                                     -1024.0))
        ref = sitk.GetArrayFromImage(g)
        body = ref > -500
        valid = (on_gsi > -1000) & body
        err_truth = np.abs(on_gsi - ref)[valid].mean()
        err_naive = np.abs(naive - ref)[valid].mean()
        assert err_truth < err_naive, (plan.patient_id, err_truth, err_naive)


def test_deterministic_for_a_seed(tmp_path):
    cfg = replace(CFG, patients=1, clean_patients=0, slices=2)
    simulate_dataset(cfg, tmp_path / "a")
    simulate_dataset(cfg, tmp_path / "b")
    for f in sorted((tmp_path / "a").rglob("*.dcm")):
        other = tmp_path / "b" / f.relative_to(tmp_path / "a")
        assert f.read_bytes() == other.read_bytes(), f


@pytest.mark.parametrize("args,needle", [
    (["--size", "-5"], "--size"),
    (["--slices", "0"], "--slices"),
    (["--patients", "-1"], "--patients"),
    (["--device", "tpu"], "--device"),
])
def test_bad_arguments_fail_clearly_and_write_nothing(tmp_path, args, needle):
    out = tmp_path / "raw"
    r = CliRunner().invoke(app, ["simulate", "--out", str(out), *args])
    assert r.exit_code == 2
    assert needle in r.output
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = CliRunner().invoke(app, ["simulate", "--out", str(blocker / "raw"), "--patients", "1",
                                 "--slices", "1", "--size", "32", "--clean-patients", "0"])
    assert r.exit_code == 2 and "not writable" in r.output


def test_resume_refuses_other_settings(raw):
    with pytest.raises(ValueError, match="other settings"):
        simulate_dataset(replace(CFG, size=64), raw)


@pytest.mark.slow
def test_two_workers_write_the_same_bytes(tmp_path):
    cfg = replace(CFG, patients=2, clean_patients=0, slices=2)
    simulate_dataset(cfg, tmp_path / "one")
    simulate_dataset(cfg, tmp_path / "two", workers=2)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*")
                   if p.is_file())
    assert files
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
