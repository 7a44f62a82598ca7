"""Bowtie filter: a thickness profile across the fan that attenuates and hardens the beam
towards the fan's edges, where the patient is thin, and its calibrations.

The filter is thin at the centre and thick at the edges, shaped to partly compensate a water
cylinder: at fan angle ``gamma`` the ray passes ``r = SID sin(gamma)`` from the isocentre and
its path through a cylinder of diameter ``D`` is ``chord = 2 sqrt((D/2)^2 - r^2)``; the filter
adds ``compensation * (mu_water / mu_filter) * (D - chord)`` to its centre thickness (attenuation
ratio at 60 keV), up to ``max_mm``. With the defaults (aluminium, 2.5 mm at the centre, 36 mm
at the edges, half-compensating 320 mm) the profile is close to the "large" body bowtie that
XCIST ships.

It sets the noise pattern across the body: edge rays carry fewer photons. The scanner's
calibration divides it out: the air scan (a reading with nothing in the beam) is taken through
the same filter, and its water beam-hardening correction is fitted per channel through the
filter's thickness there (:class:`ChannelWaterBHC`), since each channel sees its own, harder,
spectrum. For the GSI decomposition the filter is aluminium, whose attenuation the water /
cortical-bone basis represents to within 0.06 mm of water at 70 keV (checked up to 36 mm Al
under 350 mm of water and 30 mm of bone): the scanner adds the air-scan attenuation back,
decomposes filter and patient together with its one table, and subtracts the filter's own
basis thicknesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .geometry import FanBeamGeometry
from .materials import mu_matrix
from .polychromatic import Beam, WaterBHC, measure

#: Energy at which the shape's water-to-filter attenuation ratio is taken (keV).
SHAPE_KEV = 60.0


@dataclass(frozen=True)
class Bowtie:
    """A bowtie filter (see the module docstring); thicknesses in mm along the ray."""

    material: str = "aluminium"
    centre_mm: float = 2.5
    max_mm: float = 36.0
    cylinder_diameter_mm: float = 320.0
    compensation: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.centre_mm <= self.max_mm:
            raise ValueError(f"Bowtie: need 0 <= centre_mm <= max_mm, got {self.centre_mm}, "
                             f"{self.max_mm}")
        if self.cylinder_diameter_mm <= 0 or self.compensation < 0:
            raise ValueError("Bowtie: cylinder_diameter_mm must be > 0 and compensation >= 0")
        mu_matrix((self.material,), np.array([SHAPE_KEV]))  # unknown material: KeyError

    def thickness_mm(self, geom: FanBeamGeometry, u_mm: torch.Tensor) -> torch.Tensor:
        """Filter path (mm) of the rays to flat-detector positions ``u_mm`` (float64)."""
        gamma = torch.atan(u_mm / geom.sdd_mm)
        r = geom.sid_mm * torch.sin(gamma).abs()
        half = self.cylinder_diameter_mm / 2
        chord = 2 * torch.sqrt((half**2 - r**2).clamp_min(0.0))
        mu = mu_matrix(("water", self.material), np.array([SHAPE_KEV]))[:, 0]
        t = self.centre_mm + self.compensation * (mu[0] / mu[1]) * (2 * half - chord)
        return t.clamp(max=self.max_mm)


class ChannelWaterBHC:
    """Water beam-hardening correction fitted per channel through the bowtie.

    Like :class:`~artifactgsi.physics.polychromatic.WaterBHC` (a polynomial without constant
    term, fitted to noise-free water slabs 0-600 mm), but one polynomial per channel, each
    fitted to what that channel measures behind its bowtie thickness after the air-scan
    normalisation, so that every channel maps water onto the same line of slope
    :attr:`mu_water_eff` (the unfiltered beam's, so HU keep their meaning).

    Args:
        beam: the tube spectrum (without the bowtie).
        air_log: ``(D,)`` the air scan's log attenuation per channel (filter only).
        measure_slabs: ``f(water_mm (S,)) -> (S, D)`` noise-free log readings (filter and water,
            before the air normalisation), made by the same measurement as the scan.
        degree: polynomial degree.
    """

    def __init__(self, beam: Beam, air_log: torch.Tensor, measure_slabs, degree: int = 5,
                 max_water_mm: float = 600.0) -> None:
        self.mu_water_eff = WaterBHC(beam, degree=degree).mu_water_eff
        t = torch.linspace(0, max_water_mm, 241, dtype=torch.float64)
        p = (measure_slabs(t).double() - air_log.double()[None, :]).T  # (D, S)
        a = torch.stack([p**k for k in range(1, degree + 1)], dim=-1)  # (D, S, degree)
        target = (self.mu_water_eff * t)[None, :, None].expand(p.shape[0], -1, 1)
        # Columns scaled to unit norm: the powers of p span 16 decades at degree 5.
        scale = a.norm(dim=1, keepdim=True).clamp_min(1e-300)
        sol = torch.linalg.lstsq(a / scale, target).solution[..., 0]  # (D, degree)
        self.coefficients = sol / scale[:, 0, :]

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        """Correct ``(..., D)`` air-normalised log readings (channel on the last axis)."""
        c = self.coefficients.to(p.device, p.dtype)
        out = torch.zeros_like(p)
        for k in range(c.shape[1], 0, -1):  # Horner, per channel
            out = (out + c[:, k - 1]) * p
        return out


@lru_cache(maxsize=64)
def photon_transmission(beam: Beam, material: str, thickness_mm: float) -> float:
    """Fraction of the beam's photons that pass ``thickness_mm`` of ``material``."""
    from .spectra import energy_grid_kev

    mu = mu_matrix((material,), energy_grid_kev())[0]
    return float((beam.photon_weights * np.exp(-mu * thickness_mm)).sum())


def measure_filtered(lines: torch.Tensor, materials: tuple[str, ...], bowtie_mm: torch.Tensor,
                     bowtie: Bowtie, beam: Beam, **kw) -> torch.Tensor:
    """:func:`~artifactgsi.physics.polychromatic.measure` with the bowtie's path ``(D',)``
    appended to each ray of ``lines`` ``(..., D', M)`` as one more material."""
    extra = bowtie_mm.to(lines.device, lines.dtype).expand(*lines.shape[:-1])[..., None]
    return measure(torch.cat([lines, extra], dim=-1), (*materials, bowtie.material), beam, **kw)
