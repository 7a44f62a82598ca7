"""Scanner profiles: other scanners change only the ordinary series, as declared, and the
default profile is the simulator as it always was."""

import csv
import json
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from artifactgsi.cli import app
from artifactgsi.physics.scan import OrdinaryProtocol
from artifactgsi.scanners import DEFAULT_SCANNER, SCANNER_PROFILES, scanner_profile
from artifactgsi.simulate import (
    SimConfig,
    config_fingerprint,
    plan_patients,
    simulate_dataset,
    simulate_patient,
)

CFG = SimConfig(patients=1, slices=2, size=48, seed=11, clean_patients=0, supersample=1)
OTHERS = [n for n in SCANNER_PROFILES if n != DEFAULT_SCANNER]
# Profiles of other scanner classes (generalization domains); "aapm" reproduces a published
# geometry and keeps the GSI scanner's protocol (tests/artifactgsi/test_aapm_format.py).
DOMAINS = [n for n in OTHERS if n != "aapm"]


@pytest.fixture(scope="module")
def results():
    plan = plan_patients(CFG)[0]
    return {name: simulate_patient(replace(CFG, scanner=name), plan)
            for name in SCANNER_PROFILES}


def test_profiles_differ_from_the_gsi_scanner_in_every_declared_way():
    base = SCANNER_PROFILES[DEFAULT_SCANNER]
    for name in DOMAINS:
        p = SCANNER_PROFILES[name]
        g, g0 = p.geometry(512), base.geometry(512)
        assert (g.sid_mm, g.sdd_mm) != (g0.sid_mm, g0.sdd_mm)
        assert g.n_det != g0.n_det and g.n_views != g0.n_views
        o, o0 = p.ordinary, base.ordinary
        assert (o.filter_al_mm, o.filter_cu_mm, o.kvp) != (o0.filter_al_mm, o0.filter_cu_mm,
                                                           o0.kvp)
        assert o.photons_per_ray != o0.photons_per_ray and o.filter != o0.filter
        # The fan still covers the 500 mm field of view at every size.
        for size in (48, 128, 512):
            gs = p.geometry(size)
            half_fan = gs.n_det * gs.det_pitch_mm / 2 / gs.sdd_mm
            assert half_fan >= 250.0 / gs.sid_mm


# Pinned fingerprints of CFG. The ideal scanner (``scanner_physics=False``) hashes exactly as
# before the profiles' bowtie, scatter and blur existed, so raw folders simulated by earlier
# releases still resume with it. The default (with that physics) changed on purpose when the
# physics came in: the data changed, and so must the fingerprint. Change these values only
# for an intended change of the simulator's output (and say so in the commit).
IDEAL_SCANNER_FINGERPRINT = "ee546eeed389ce8e"
DEFAULT_FINGERPRINT = "21a6b168b861fa2a"


def test_the_default_profile_keeps_the_old_fingerprint_and_protocol():
    # Folders simulated before profiles existed must still resume: the default profile's
    # settings hash as the plain config always did.
    explicit = replace(CFG, scanner=DEFAULT_SCANNER, ordinary=OrdinaryProtocol())
    assert config_fingerprint(explicit) == config_fingerprint(CFG)
    assert CFG.ordinary_protocol() == OrdinaryProtocol()
    for name in OTHERS:
        assert config_fingerprint(replace(CFG, scanner=name)) != config_fingerprint(CFG)
    assert config_fingerprint(CFG) == DEFAULT_FINGERPRINT
    assert config_fingerprint(replace(CFG, scanner_physics=False)) == IDEAL_SCANNER_FINGERPRINT


def test_each_physics_setting_changes_the_fingerprint():
    prof = SCANNER_PROFILES[DEFAULT_SCANNER]
    base = config_fingerprint(CFG)
    for change in (dict(bowtie=None), dict(scatter=None), dict(focal_spot_mm=0.5),
                   dict(detector_aperture_subsamples=1),
                   dict(scatter=replace(prof.scatter, collimation_mm=20.0))):
        patched = replace(prof, **change)
        try:
            SCANNER_PROFILES[DEFAULT_SCANNER] = patched
            assert config_fingerprint(CFG) != base, change
        finally:
            SCANNER_PROFILES[DEFAULT_SCANNER] = prof


def test_other_scanners_change_only_the_ordinary_series(results):
    ref = results[DEFAULT_SCANNER]
    for name in OTHERS:
        r = results[name]
        # GSI, ideal and labels come from the GSI scanner, identical for every profile.
        np.testing.assert_array_equal(r.ideal, ref.ideal)
        np.testing.assert_array_equal(r.labels, ref.labels)
        assert r.gsi.shape == ref.gsi.shape
        assert not np.array_equal(r.ordinary, ref.ordinary)
        geo = r.truth["ordinary_geometry"]
        want = SCANNER_PROFILES[name].geometry(CFG.size)
        assert (geo["n_views"], geo["n_det"], geo["sid_mm"]) == (want.n_views, want.n_det,
                                                                want.sid_mm)
        assert r.truth["scanner"] == name


def _water_noise_hu(prof, size: int = 64) -> float:
    """Noise (std, HU) of a 300 mm water cylinder's image on profile ``prof``: the noisy
    reconstruction minus the noise-free one, inside the central 200 mm."""
    import torch

    from artifactgsi.physics.geometry import ImageGrid
    from artifactgsi.physics.scan import Scanner

    sc = Scanner(prof.geometry(size), prof.ordinary)
    grid = sc.geom.object_grid
    yy, xx = torch.meshgrid(grid.y_mm(), grid.x_mm(), indexing="ij")
    water = ((xx**2 + yy**2) < 150.0**2).float()[None, None]
    lines = sc.project(water)
    out = ImageGrid((size, size), grid.pixel_mm)
    noisy = sc.ordinary(lines, ("water",), out, torch.Generator().manual_seed(0))
    clean = sc.ordinary(lines, ("water",), out, noise=False)
    inside = (xx**2 + yy**2) < 100.0**2
    return float((noisy - clean)[0, 0][inside].std())


def test_dose_is_a_dose_and_the_low_dose_profile_is_noisier():
    """Image noise in water falls as 1 / sqrt(dose) on one geometry, kernel and beam (quantum
    noise; the electronic noise is negligible here), and the low-dose profile (40 % dose) is
    noisier than the GSI scanner even with its coarser channels."""
    low = SCANNER_PROFILES["low-dose-100kv"]
    double = replace(low, ordinary=replace(low.ordinary,
                                           photons_per_ray=2 * low.ordinary.photons_per_ray))
    ratio = _water_noise_hu(low) / _water_noise_hu(double)
    assert ratio == pytest.approx(np.sqrt(2), rel=0.08)
    assert _water_noise_hu(low) > 1.2 * _water_noise_hu(SCANNER_PROFILES[DEFAULT_SCANNER])


def test_profile_reaches_dicom_manifest_and_record(tmp_path):
    name = "long-geometry"
    cfg = replace(CFG, scanner=name, split_hint="test")
    raw = tmp_path / "raw"
    simulate_dataset(cfg, raw)
    row = next(csv.DictReader((raw / "manifest.csv").open()))
    prof = scanner_profile(name)
    assert row["scanner"] == prof.scanner_label and row["split_hint"] == "test"
    ds = pydicom.dcmread(next((raw / row["patient_id"] / "ordinary").glob("*.dcm")))
    assert ds.Manufacturer == prof.manufacturer and ds.ManufacturerModelName == prof.model
    assert ds.ConvolutionKernel == prof.convolution_kernel
    assert float(ds.KVP) == prof.ordinary.kvp
    gsi = pydicom.dcmread(next((raw / row["patient_id"] / "gsi").glob("*.dcm")))
    assert gsi.ManufacturerModelName == SCANNER_PROFILES[DEFAULT_SCANNER].model
    rec = json.loads((raw / "simulation.json").read_text())
    assert rec["scanner"] == name and rec["ordinary_protocol"]["filter"] == "shepp-logan"
    # The scanner physics of both scanners are recorded (and, through the fingerprint, bind).
    phys = rec["scanner_physics"]
    assert phys["ordinary"]["scatter"]["collimation_mm"] == prof.scatter.collimation_mm
    assert phys["ordinary"]["blur"]["focal_spot_mm"] == prof.focal_spot_mm
    assert phys["gsi"] == SCANNER_PROFILES[DEFAULT_SCANNER].physics().to_dict()
    truth = json.loads((raw / row["patient_id"] / "truth.json").read_text())
    assert truth["scanner_physics"] == phys
    # Resuming the folder with another profile is refused by name.
    with pytest.raises(ValueError, match="other settings"):
        simulate_dataset(replace(cfg, scanner=DEFAULT_SCANNER), raw)


def test_generalization_hint_writes_ordinary_only(tmp_path):
    raw = tmp_path / "raw"
    simulate_dataset(replace(CFG, scanner="low-dose-100kv", split_hint="generalization"), raw)
    row = next(csv.DictReader((raw / "manifest.csv").open()))
    assert row["split_hint"] == "generalization" and row["has_labels"] == "0"
    folder = raw / row["patient_id"]
    assert (folder / "ordinary").is_dir()
    assert not (folder / "gsi").exists() and not (folder / "ideal.nii.gz").exists()


def test_unknown_scanner_and_hint_are_named():
    with pytest.raises(ValueError, match="long-geometry"):
        replace(CFG, scanner="nope").validate()
    with pytest.raises(ValueError, match="split-hint"):
        replace(CFG, split_hint="clean").validate()
    res = CliRunner().invoke(app, ["simulate", "--out", "/tmp/never-written", "--scanner",
                                   "nope", "--patients", "1"])
    assert res.exit_code != 0 and "unknown scanner profile 'nope'" in res.output
