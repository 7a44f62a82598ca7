"""Bowtie filter: its thickness profile, the flattening of the detected intensity across a
centred water cylinder, and the scanner calibrations that divide it out (air scan, per-channel
water beam-hardening correction, GSI decomposition)."""

import math

import numpy as np
import pytest
import torch

from artifactgsi.physics.acquisition import BeamPath, ScanPhysics
from artifactgsi.physics.bowtie import Bowtie
from artifactgsi.physics.geometry import FanBeamGeometry
from artifactgsi.physics.polychromatic import Beam, WaterBHC
from artifactgsi.physics.scan import Scanner
from artifactgsi.physics.spectra import TubeSpec

GEOM = FanBeamGeometry.scaled(64)
BOWTIE = Bowtie()  # aluminium, 2.5 -> 36 mm, half-compensating a 320 mm water cylinder
# NIST XCOM mass attenuation at 60 keV (cm^2/g): water 0.2059, aluminium 0.2778.
NIST_RATIO_60KEV = 0.2059 * 1.0 / (0.2778 * 2.699)


def _chords(geom: FanBeamGeometry, radius_mm: float) -> torch.Tensor:
    """Path (mm) of each channel's ray through a centred water cylinder (flat detector)."""
    u = geom.det_u_mm()
    r = geom.sid_mm * torch.sin(torch.atan(u / geom.sdd_mm)).abs()
    return 2 * torch.sqrt((radius_mm**2 - r**2).clamp_min(0.0))


def _cylinder(geom: FanBeamGeometry, radius_mm: float) -> torch.Tensor:
    """Area fractions (1, 1, N, N) of a centred water disc (4 x 4 sub-samples)."""
    g = geom.object_grid
    o = (torch.arange(4, dtype=torch.float64) + 0.5) / 4 - 0.5
    x = g.x_mm()[None, :, None, None] + o[None, None, :, None] * g.pixel_mm
    y = g.y_mm()[:, None, None, None] + o[None, None, None, :] * g.pixel_mm
    return ((x**2 + y**2) <= radius_mm**2).double().mean((-1, -2)).float()[None, None]


def test_thickness_follows_the_compensated_cylinder():
    u = torch.tensor([0.0, 120.0, 200.0, 420.0], dtype=torch.float64)
    t = BOWTIE.thickness_mm(GEOM, u)
    assert float(t[0]) == pytest.approx(BOWTIE.centre_mm, abs=1e-9)
    # By hand: the ray to u = 120 mm passes r = SID sin(atan(u / SDD)) from the isocentre.
    r = GEOM.sid_mm * math.sin(math.atan(120.0 / GEOM.sdd_mm))
    chord = 2 * math.sqrt(160.0**2 - r**2)
    want = BOWTIE.centre_mm + 0.5 * NIST_RATIO_60KEV * (320.0 - chord)
    assert float(t[1]) == pytest.approx(want, rel=0.02)
    assert float(t[3]) == BOWTIE.max_mm  # outside the compensated cylinder: capped
    assert bool((t.diff() >= 0).all())


def test_bowtie_flattens_the_detected_intensity_across_a_water_cylinder():
    beam = Beam(TubeSpec(120.0))
    chord = _chords(GEOM, 160.0)
    lines = chord.view(1, -1, 1).float()
    inside = chord > 0.3 * 320.0  # the cylinder's shadow, away from its very edge
    spread = {}
    for bt in (None, BOWTIE):
        path = BeamPath(ScanPhysics(bowtie=bt), GEOM, beam)
        p_raw = path.measure(lines, ("water",), None)[0]  # detected, vs the unfiltered tube
        log_i = -p_raw[inside]
        spread[bt is not None] = float(log_i.max() - log_i.min())
    # Without the filter the intensity falls e^(mu * 320 mm) ~ 10^3 from edge to centre; the
    # half-compensating bowtie takes about half of that log range away.
    assert spread[False] > 4.0
    assert spread[True] < 0.65 * spread[False]


def test_air_scan_and_per_channel_water_correction_divide_the_bowtie_out():
    """A water cylinder behind the bowtie reads water everywhere after the scanner's
    per-channel calibration; the single water polynomial of the unfiltered beam does not."""
    beam = Beam(TubeSpec(120.0))
    path = BeamPath(ScanPhysics(bowtie=BOWTIE), GEOM, beam)
    chord = _chords(GEOM, 160.0)
    p = path.correct(path.measure(chord.view(1, -1, 1).float(), ("water",), None))[0]
    inside = chord > 0
    mu = path.water_bhc().mu_water_eff
    per_channel = path.water_bhc()(p)[inside] / mu
    np.testing.assert_allclose(per_channel.numpy(), chord[inside].numpy(), atol=0.05)
    one_poly = WaterBHC(beam)(p)[inside] / mu
    assert float((one_poly - chord[inside]).abs().max()) > 2.0  # mm: what it would get wrong
    # Air reads zero after the air-scan normalisation.
    outside = path.correct(path.measure(torch.zeros(1, GEOM.n_det, 1), ("water",), None))[0]
    assert float(outside.abs().max()) < 1e-6


def test_bowtie_keeps_water_flat_and_raises_noise_only_at_the_edge():
    cyl = _cylinder(GEOM, 160.0)
    grid = GEOM.object_grid
    yy, xx = torch.meshgrid(grid.y_mm(), grid.x_mm(), indexing="ij")
    r = torch.hypot(xx, yy)
    centre, edge = r < 60, (r > 110) & (r < 150)
    out = {}
    for bt in (None, BOWTIE):
        sc = Scanner(GEOM, physics=ScanPhysics(bowtie=bt))
        lines = sc.project(cyl)
        clean = sc.ordinary(lines, ("water",), grid, noise=False)[0, 0]
        noisy = sc.ordinary(lines.expand(6, -1, -1, -1), ("water",), grid,
                            torch.Generator().manual_seed(0))[:, 0]
        sd = (noisy - clean).std(0)  # per-pixel SD over 6 noise draws
        out[bt is not None] = (clean, float(sd[centre].mean()), float(sd[edge].mean()))
    clean, sd_c, sd_e = out[True]
    assert float(clean[centre].mean()) == pytest.approx(0.0, abs=2.0)
    assert float(clean[edge].mean()) == pytest.approx(0.0, abs=3.0)
    _, sd_c0, sd_e0 = out[False]
    assert sd_c == pytest.approx(sd_c0, rel=0.15)  # same photons at the centre channel
    assert sd_e / sd_c > 1.1 * (sd_e0 / sd_c0)  # fewer photons through the edges


def test_gsi_with_bowtie_matches_gsi_without():
    """The decomposition adds the air-scan attenuation back and removes the bowtie's basis
    thicknesses: noise-free VMIs of water with a bone insert agree within 2 HU."""
    g = GEOM.object_grid
    cyl = _cylinder(GEOM, 140.0)
    yy, xx = torch.meshgrid(g.y_mm(), g.x_mm(), indexing="ij")
    bone = (torch.hypot(xx - 50, yy) < 20).float()[None, None] * cyl
    frac = torch.cat([cyl - bone, bone], 1)
    mats = ("water", "cortical_bone")
    imgs = []
    for bt in (None, BOWTIE):
        sc = Scanner(GEOM, physics=ScanPhysics(bowtie=bt))
        imgs.append(sc.gsi(sc.project(frac), mats, g, noise=False)[0, 0])
    inside = torch.hypot(xx, yy) < 130
    assert float((imgs[1] - imgs[0])[inside].abs().mean()) < 2.0
