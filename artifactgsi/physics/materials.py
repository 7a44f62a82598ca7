"""Materials and their linear attenuation coefficients from xraydb (Elam tables).

Mixtures are built by mass fraction from elemental mass attenuation coefficients
(``xraydb.mu_elam``, total cross-section including coherent scattering), as
``mu(E) = rho * sum_i w_i (mu/rho)_i(E)``. Compositions and densities:

- ICRU Report 44 (1989) tissues: adipose tissue, skeletal muscle ("soft_tissue"), whole
  blood, lung (tissue composition at inflated density 0.26 g/cm3), cortical bone.
- Trabecular bone: ICRU 46 "spongiosa" (Woodard & White 1986), 1.18 g/cm3.
- Ti-6Al-4V: ASTM F136 nominal (Ti 90, Al 6, V 4 wt %), 4.43 g/cm3.
- CoCrMo: ASTM F75 nominal (Co 65.5, Cr 28.5, Mo 6 wt %), 8.29 g/cm3.
- Stainless steel 316L: ASTM F138 nominal (Fe bal., Cr 17, Ni 12, Mo 2.5, Mn 2, Si 0.75,
  C 0.03 wt %), 8.00 g/cm3.
- Aluminium (pure, 2.699 g/cm3): the bowtie filter's material (physics/bowtie.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Material:
    """A material: name, composition (element -> mass fraction) and density in g/cm3."""

    name: str
    composition: tuple[tuple[str, float], ...]
    density_g_cm3: float

    def mass_attenuation_cm2_g(self, energies_kev: np.ndarray) -> np.ndarray:
        """(mu/rho)(E) in cm2/g, shape like ``energies_kev``."""
        e_ev = np.asarray(energies_kev, dtype=np.float64) * 1000.0
        total = sum(w for _, w in self.composition)
        return sum(w / total * _mu_elam(el, tuple(np.atleast_1d(e_ev))) for el, w in
                   self.composition).reshape(np.shape(energies_kev))

    def mu_per_mm(self, energies_kev: np.ndarray) -> np.ndarray:
        """Linear attenuation coefficient in 1/mm at the given energies (keV)."""
        return self.mass_attenuation_cm2_g(energies_kev) * self.density_g_cm3 / 10.0


@lru_cache(maxsize=512)
def _mu_elam(element: str, energies_ev: tuple[float, ...]) -> np.ndarray:
    import xraydb  # imported here: only the physics needs it

    return np.asarray(xraydb.mu_elam(element, np.asarray(energies_ev), kind="total"))


def _m(name: str, density: float, **fractions: float) -> Material:
    return Material(name, tuple(fractions.items()), density)


MATERIAL_TABLE: dict[str, Material] = {
    m.name: m
    for m in (
        _m("air", 0.001205, C=0.000124, N=0.755268, O=0.231781, Ar=0.012827),
        _m("water", 1.0, H=0.111894, O=0.888106),
        _m("adipose", 0.95, H=0.114, C=0.598, N=0.007, O=0.278, Na=0.001, S=0.001, Cl=0.001),
        _m("soft_tissue", 1.05, H=0.102, C=0.143, N=0.034, O=0.710, Na=0.001, P=0.002, S=0.003,
           Cl=0.001, K=0.004),
        _m("blood", 1.06, H=0.102, C=0.110, N=0.033, O=0.745, Na=0.001, P=0.001, S=0.002,
           Cl=0.003, K=0.002, Fe=0.001),
        _m("lung", 0.26, H=0.103, C=0.105, N=0.031, O=0.749, Na=0.002, P=0.002, S=0.003,
           Cl=0.003, K=0.002),
        _m("trabecular_bone", 1.18, H=0.085, C=0.404, N=0.028, O=0.367, Na=0.001, Mg=0.001,
           P=0.034, S=0.002, Cl=0.002, K=0.001, Ca=0.074, Fe=0.001),
        _m("cortical_bone", 1.92, H=0.034, C=0.155, N=0.042, O=0.435, Na=0.001, Mg=0.002,
           P=0.103, S=0.003, Ca=0.225),
        _m("ti6al4v", 4.43, Ti=0.90, Al=0.06, V=0.04),
        _m("cocrmo", 8.29, Co=0.655, Cr=0.285, Mo=0.06),
        _m("steel316l", 8.00, Fe=0.6572, Cr=0.17, Ni=0.12, Mo=0.025, Mn=0.02, Si=0.0075,
           C=0.0003),
        _m("aluminium", 2.699, Al=1.0),
    )
}

METALS = ("ti6al4v", "cocrmo", "steel316l")


def material(name: str) -> Material:
    """Look a material up by name; unknown names raise ``KeyError`` listing the known ones."""
    try:
        return MATERIAL_TABLE[name]
    except KeyError:
        raise KeyError(f"unknown material {name!r}; known: {sorted(MATERIAL_TABLE)}") from None


def mu_matrix(names: tuple[str, ...] | list[str], energies_kev: np.ndarray) -> np.ndarray:
    """Linear attenuation in 1/mm, shape ``(len(names), len(energies_kev))``."""
    return np.stack([material(n).mu_per_mm(energies_kev) for n in names])


def hounsfield(mu_per_mm: np.ndarray | float, mu_water_per_mm: float) -> np.ndarray | float:
    """HU = 1000 (mu - mu_water) / mu_water (air, mu ~ 0, reads -1000)."""
    return 1000.0 * (mu_per_mm - mu_water_per_mm) / mu_water_per_mm
