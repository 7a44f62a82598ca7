"""Kernel scatter: the scatter-to-primary ratio of water cylinders against published values
for clinical multi-row CT with an anti-scatter grid (docs/simulator.md), its trends, the
material dependence, and the scanner's water-based correction with its residual."""

from dataclasses import replace

import pytest
import torch

from artifactgsi.physics.acquisition import BeamPath, ScanPhysics
from artifactgsi.physics.blur import Blur
from artifactgsi.physics.geometry import FanBeamGeometry
from artifactgsi.physics.materials import mu_matrix
from artifactgsi.physics.polychromatic import Beam
from artifactgsi.physics.scan import Scanner
from artifactgsi.physics.scatter import ScatterModel, mu_scatter
from artifactgsi.physics.spectra import TubeSpec
from artifactgsi.scanners import DEFAULT_SCANNER, SCANNER_PROFILES

GEOM = FanBeamGeometry.scaled(64)
PHYSICS = SCANNER_PROFILES[DEFAULT_SCANNER].physics()  # 40 mm, grid, bowtie, blur
# Images: the same without the sub-rays (they do not change scatter, and cost time).
SHARP = replace(PHYSICS, blur=Blur())


def _chords(geom: FanBeamGeometry, radius_mm: float, n_sub: int = 1) -> torch.Tensor:
    """Water path (mm) of each (sub-)ray through a centred cylinder, ``(D * n_sub,)``."""
    g = geom.with_(n_det=geom.n_det * n_sub, det_pitch_mm=geom.det_pitch_mm / n_sub)
    r = g.sid_mm * torch.sin(torch.atan(g.det_u_mm() / g.sdd_mm)).abs()
    return 2 * torch.sqrt((radius_mm**2 - r**2).clamp_min(0.0))


def _spr(physics: ScanPhysics, diameter_mm: float, kvp: float = 120.0) -> torch.Tensor:
    """Noise-free scatter-to-primary ratio along the detector for a centred water cylinder."""
    k = physics.blur.detector_aperture_subsamples if physics.blur.active else 1
    lines = _chords(GEOM, diameter_mm / 2, k).view(1, -1, 1).float()
    beam = Beam(TubeSpec(kvp))
    with_s = BeamPath(physics, GEOM, beam).measure(lines, ("water",), None)
    without = BeamPath(replace(physics, scatter=None), GEOM, beam).measure(lines, ("water",), None)
    primary = torch.exp(-without[0].double())
    return (torch.exp(-with_s[0].double()) - primary) / primary


def test_spr_of_a_30_cm_water_cylinder_is_in_the_published_range():
    """Clinical multi-row CT with a 1D anti-scatter grid at about 40 mm collimation:
    SPR about 0.05-0.2 at the centre of a body-sized (30-35 cm) water phantom; the model is
    calibrated to 0.15 at 35 cm (the value XCIST states for its kernel model)."""
    c = GEOM.n_det // 2
    spr30 = _spr(PHYSICS, 300.0)
    assert 0.05 <= float(spr30[c - 1: c + 1].mean()) <= 0.20
    spr35 = float(_spr(PHYSICS, 350.0)[c - 1: c + 1].mean())
    assert spr35 == pytest.approx(0.15, abs=0.015)
    # Scatter peaks behind the centre and fades outside the object's shadow.
    assert float(spr30.argmax() - c) == pytest.approx(0.0, abs=2)
    assert float(spr30[:5].max()) < 0.01


def test_spr_grows_with_object_size_and_collimation_and_falls_with_a_better_grid():
    c = GEOM.n_det // 2
    base = float(_spr(PHYSICS, 300.0)[c])
    assert float(_spr(PHYSICS, 200.0)[c]) < base < float(_spr(PHYSICS, 400.0)[c])
    narrow = replace(PHYSICS, scatter=replace(PHYSICS.scatter, collimation_mm=10.0))
    assert float(_spr(narrow, 300.0)[c]) == pytest.approx(base / 4, rel=0.02)  # linear in c
    grid = replace(PHYSICS, scatter=replace(PHYSICS.scatter, grid_scatter_transmission=0.05))
    assert float(_spr(grid, 300.0)[c]) == pytest.approx(base / 3, rel=0.02)


def test_metal_scatters_less_per_unit_attenuation_than_tissue():
    # Compton scattering per electron vs photo-absorption rising ~Z^3: the scatter share of
    # attenuation falls from water to bone to titanium to CoCr (70 keV).
    names = ("water", "cortical_bone", "ti6al4v", "cocrmo")
    share = mu_scatter(names, 70.0) / mu_matrix(names, [70.0])[:, 0]
    assert share[0] > 0.9
    assert share[0] > share[1] > share[2] > share[3]
    assert share[3] < 0.4


def _cylinder_image(physics, metal: bool, noise: bool = False, seed: int = 0):
    g = GEOM.object_grid
    yy, xx = torch.meshgrid(g.y_mm(), g.x_mm(), indexing="ij")
    r = torch.hypot(xx, yy)
    water = (r < 150).float()
    rod = (torch.hypot(xx - 60, yy) < 12).float() if metal else torch.zeros_like(water)
    frac = torch.stack([water - rod, rod])[None]
    sc = Scanner(GEOM, physics=physics)
    gen = torch.Generator().manual_seed(seed) if noise else None
    img = sc.ordinary(sc.project(frac), ("water", "cocrmo"), g, gen, noise=noise)[0, 0]
    return img, xx, yy, r


def test_the_scanner_correction_restores_water_and_leaves_a_residual_near_metal():
    no_corr = replace(SHARP, scatter=replace(SHARP.scatter, correction=False))
    none = replace(SHARP, scatter=None)
    ref, xx, yy, r = _cylinder_image(none, metal=False)
    centre = r < 60
    raw, *_ = _cylinder_image(no_corr, metal=False)
    corrected, *_ = _cylinder_image(SHARP, metal=False)
    # Uncorrected scatter lowers the measured attenuation (about -SPR in the log).
    assert float((raw - ref)[centre].mean()) < -10.0
    assert float((corrected - ref)[centre].mean()) == pytest.approx(0.0, abs=2.0)
    # With a CoCr rod the water assumption is wrong behind the metal: a residual remains.
    ref_m, *_ = _cylinder_image(none, metal=True)
    cor_m, *_ = _cylinder_image(SHARP, metal=True)
    near = (torch.hypot(xx - 60, yy) > 20) & (r < 130)
    water_resid = float((corrected - ref)[near].abs().mean())
    metal_resid = float((cor_m - ref_m)[near].abs().mean())
    assert metal_resid > 2 * water_resid + 1.0


def test_gsi_gets_scatter_in_both_kvp_and_its_correction():
    g = GEOM.object_grid
    yy, xx = torch.meshgrid(g.y_mm(), g.x_mm(), indexing="ij")
    frac = (torch.hypot(xx, yy) < 150).float()[None, None]
    out = {}
    for name, phys in (("none", replace(SHARP, scatter=None)),
                       ("raw", replace(SHARP, scatter=replace(SHARP.scatter,
                                                                correction=False))),
                       ("corrected", SHARP)):
        sc = Scanner(GEOM, physics=phys)
        out[name] = sc.gsi(sc.project(frac), ("water",), g, noise=False)[0, 0]
    centre = torch.hypot(xx, yy) < 60
    assert float((out["raw"] - out["none"])[centre].mean()) < -10.0
    assert float((out["corrected"] - out["none"])[centre].abs().mean()) < 3.0


def test_scatter_adds_photons_and_their_noise():
    """Behind a thick object scatter raises the detected signal; with noise, the variance of
    the reading grows accordingly (Poisson on primary plus scatter)."""
    path = BeamPath(ScanPhysics(scatter=ScatterModel()), GEOM, Beam(TubeSpec(120.0)))
    water = _chords(GEOM, 175.0).view(1, -1, 1).float().expand(400, -1, -1)
    noisy = path.measure(water, ("water",), 2e4, 0.0, torch.Generator().manual_seed(0))
    clean = path.measure(water[:1], ("water",), None)[0]
    c = GEOM.n_det // 2
    signal = torch.exp(-noisy[:, c].double()) * 2e4  # photons, incident-beam equivalents
    expected = float(torch.exp(-clean[c].double())) * 2e4
    assert float(signal.mean()) == pytest.approx(expected, rel=0.03)
    # Poisson: variance ~ mean (the Swank factor of energy integration is not modelled).
    assert float(signal.var()) == pytest.approx(expected, rel=0.25)
