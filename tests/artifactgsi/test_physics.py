"""Per-ray physics: attenuation tables, spectra, polychromatic measurement, water BHC and
dual-energy decomposition (no projector involved)."""

import numpy as np
import pytest
import torch

from artifactgsi.physics.materials import MATERIAL_TABLE, hounsfield, material, mu_matrix
from artifactgsi.physics.polychromatic import Beam, Decomposer, WaterBHC, measure
from artifactgsi.physics.spectra import TubeSpec, energy_grid_kev, mean_energy_kev, spectrum

# NIST XCOM total attenuation with coherent scattering, cm2/g (hand-copied reference values).
NIST_WATER = {40.0: 0.2683, 60.0: 0.2059, 80.0: 0.1837, 100.0: 0.1707, 150.0: 0.1505}
NIST_CORTICAL_BONE = {40.0: 0.6655, 60.0: 0.3148, 80.0: 0.2229, 100.0: 0.1855, 150.0: 0.1480}


@pytest.mark.parametrize("name,ref", [("water", NIST_WATER),
                                      ("cortical_bone", NIST_CORTICAL_BONE)])
def test_mass_attenuation_matches_nist(name, ref):
    e = np.array(sorted(ref))
    got = material(name).mass_attenuation_cm2_g(e)
    np.testing.assert_allclose(got, [ref[k] for k in e], rtol=0.015)


def test_metals_attenuate_more_than_bone_and_air_is_minus_1000_hu():
    e = np.array([70.0])
    mu = {n: material(n).mu_per_mm(e)[0] for n in MATERIAL_TABLE}
    assert mu["cortical_bone"] < mu["ti6al4v"] < mu["steel316l"] < mu["cocrmo"]
    assert hounsfield(mu["air"], mu["water"]) == pytest.approx(-1000, abs=2)
    assert 30 < hounsfield(mu["soft_tissue"], mu["water"]) < 70  # muscle ~ +40..60 HU
    assert -130 < hounsfield(mu["adipose"], mu["water"]) < -60


def test_unknown_material_is_named():
    with pytest.raises(KeyError, match="unobtainium"):
        material("unobtainium")


def test_spectra_are_normalised_and_harden_with_kvp():
    e = energy_grid_kev()
    means = []
    for kvp in (80, 120, 140):
        s = spectrum(TubeSpec(kvp))
        assert s.sum() == pytest.approx(1.0)
        assert s[e > kvp].sum() == 0  # no photon above the tube potential
        means.append(mean_energy_kev(TubeSpec(kvp)))
    assert 44 < means[0] < means[1] < means[2] < 70


def test_noise_free_measurement_equals_hand_computed_beer_lambert():
    beam = Beam(TubeSpec(120))
    e = energy_grid_kev()
    w = spectrum(TubeSpec(120)) * e
    w = w / w.sum()
    mu = mu_matrix(("water", "cortical_bone"), e)
    lines = np.array([[0.0, 0.0], [200.0, 0.0], [150.0, 30.0]])
    ref = -np.log((w * np.exp(-(lines @ mu))).sum(1))
    got = measure(torch.tensor(lines), ("water", "cortical_bone"), beam, None).numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-6)  # float32 transmission sums
    # beam hardening: p grows sub-linearly with thickness
    assert got[1] < 200.0 * (w * mu[0]).sum()


def test_poisson_noise_has_the_expected_variance():
    beam = Beam(TubeSpec(120))
    n0 = 1e5
    lines = torch.full((20000, 1), 200.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    p = measure(lines, ("water",), beam, n0, 0.0, g)
    clean = measure(lines[:1], ("water",), beam, None)
    e = energy_grid_kev()
    s = spectrum(TubeSpec(120))
    n_expected = n0 * (s * np.exp(-200.0 * mu_matrix(("water",), e)[0])).sum()
    # var(-ln n) ~ 1 / n for Poisson counts
    assert p.var().item() == pytest.approx(1.0 / n_expected, rel=0.08)
    assert p.mean().item() == pytest.approx(clean.item(), abs=3 * (1 / n_expected) ** 0.5)


def test_photon_starvation_is_floored_not_infinite():
    beam = Beam(TubeSpec(120))
    lines = torch.tensor([[300.0, 60.0]], dtype=torch.float64)  # far beyond the dynamic range
    p = measure(lines, ("water", "steel316l"), beam, 1e4, 5.0, torch.Generator().manual_seed(1))
    assert torch.isfinite(p).all() and p.item() <= np.log(1e4 / 0.25) + 1e-9


def test_water_bhc_linearises_water():
    beam = Beam(TubeSpec(120))
    bhc = WaterBHC(beam)
    t = torch.linspace(0, 450, 10, dtype=torch.float64)[:, None]
    p = measure(t, ("water",), beam, None)
    np.testing.assert_allclose(bhc(p).numpy(), bhc.mu_water_eff * t[:, 0].numpy(), atol=2e-3)
    # ...but not bone: bone through the water correction is still hardened
    pb = measure(torch.tensor([[0.0, 40.0]], dtype=torch.float64), ("water", "cortical_bone"),
                 beam, None)
    slope0 = float((beam.signal_weights * mu_matrix(("cortical_bone",), energy_grid_kev())[0])
                   .sum())
    assert bhc(pb).item() < 0.97 * slope0 * 40.0


def test_decomposition_recovers_basis_and_monochromatic_metal():
    d = Decomposer(TubeSpec(80), TubeSpec(140))
    lines = torch.tensor([[200.0, 10.0], [300.0, 0.0], [120.0, 60.0], [50.0, 250.0]],
                         dtype=torch.float64)
    mats = ("water", "cortical_bone")
    pl = measure(lines, mats, Beam(TubeSpec(80)), None)
    ph = measure(lines, mats, Beam(TubeSpec(140)), None)
    a = d(pl, ph).double()
    np.testing.assert_allclose(a.numpy(), lines.numpy(), atol=0.25)
    # A steel + water ray: the VMI line integral equals the true monochromatic one (the
    # decomposition removes beam hardening when no photon starvation occurs).
    metal = torch.tensor([[180.0, 6.0]], dtype=torch.float64)
    mm = ("water", "steel316l")
    a = d(measure(metal, mm, Beam(TubeSpec(80)), None),
          measure(metal, mm, Beam(TubeSpec(140)), None)).double()
    for kev in (70.0, 110.0):
        true = float(mu_matrix(mm, np.array([kev]))[:, 0] @ metal[0].numpy())
        assert d.vmi(a, kev).item() == pytest.approx(true, rel=0.01)
