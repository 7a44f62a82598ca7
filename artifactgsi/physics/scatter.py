"""X-ray scatter by a convolution-kernel model in the projection domain, and the scanner's
kernel-based scatter correction.

Model (Ohnesorge, Flohr & Klingenbeck-Regn, Eur. Radiol. 9:563, 1999; the kernel form of
Sun & Star-Lack, Phys. Med. Biol. 55:6695, 2010). Photons scattered along a ray are, to first
order, proportional to the primary photons that survive it times its scatter line integral
``p_s = sum_m mu_scatter,m L_m`` (incoherent + coherent cross-section of each material at the
beam's mean detected energy): the ray's "scatter source" ``T p_s`` (``T`` the primary
transmission). Each source spreads over the neighbouring channels by a kernel ``K``; the
anti-scatter grid passes a fraction ``T_s`` of scatter and ``T_p`` of primary; a wider
collimation along z collects proportionally more scatter (the z-extent of the kernel is far
wider than clinical collimations, so the collected part grows linearly with it). The scatter
signal, in units of the unattenuated beam, is

    S(u) = Y (c / 40 mm) (T_s / T_p) sum_u' K(u - u') T(u') p_s(u'),

with ``Y`` the scatter yield per unit ``p_s`` at 40 mm without grid. Because ``p_s`` uses the
scatter cross-section of each material, metal (mostly photo-absorption) and bone scatter less
per unit attenuation than water.

Scatter photons add Poisson noise. The scanner subtracts its own estimate: the same kernel and
amplitude, with the source computed from the measured (scatter-contaminated) signal under the
assumption that everything is water (``p_s`` from the water-equivalent thickness of its water
beam-hardening calibration), iterated a few times, and keeps at least a fraction of the
measured signal. This is exact for water and leaves a residual elsewhere: over-correction
behind bone and metal, and errors where the reading is mostly scatter (photon-starved rays
between implants).

Calibration. The default yield gives a scatter-to-primary ratio (SPR) of 0.15 at the centre of
a 350 mm water cylinder at 120 kVp with 40 mm collimation behind the default grid, the value the
XCIST simulator (GE's open-source CT simulator) states for its own kernel model; docs/simulator.md
compares the profile along the detector with XCIST and with published measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .materials import material

#: Scatter yield at 40 mm collimation without grid, per unit scatter line integral (see the
#: module docstring; calibrated with benchmarks/validate_simulator.py's SPR check: SPR 0.15
#: at the centre of a 350 mm water cylinder, 120 kVp, 40 mm, behind the default grid).
DEFAULT_YIELD = 0.131


@dataclass(frozen=True)
class ScatterModel:
    """Kernel scatter model of one scanner (see the module docstring).

    Attributes:
        collimation_mm: beam width along z at the isocentre.
        scatter_yield: ``Y``, scatter-to-air signal per unit scatter line integral, at 40 mm
            collimation, without grid.
        grid_primary_transmission: ``T_p`` of the anti-scatter grid (focused septa between
            channels, as on multi-row CT).
        grid_scatter_transmission: ``T_s``, the fraction of scatter the grid lets through.
        kernel_mm: decay length of the (two-sided exponential) kernel along the channels, at
            the detector; the grid's septa keep it narrow across the fan.
        correction: whether the scanner applies its kernel-based scatter correction.
        correction_iterations: fixed-point iterations of that correction.
        correction_floor: the corrected signal is kept above this fraction of the measured
            one. Where the primary is photon-starved (behind metal) the reading is mostly
            scatter and the estimate's error would otherwise drive it to zero or below (an
            infinite log); kernel corrections bound the subtraction for that reason.
    """

    collimation_mm: float = 40.0
    scatter_yield: float = DEFAULT_YIELD
    grid_primary_transmission: float = 0.85
    grid_scatter_transmission: float = 0.15
    kernel_mm: float = 12.0
    correction: bool = True
    correction_iterations: int = 2
    correction_floor: float = 0.1

    def __post_init__(self) -> None:
        checks = [
            (self.collimation_mm > 0, "collimation_mm must be > 0"),
            (self.scatter_yield >= 0, "scatter_yield must be >= 0"),
            (0 < self.grid_primary_transmission <= 1, "grid_primary_transmission in (0, 1]"),
            (0 <= self.grid_scatter_transmission <= 1, "grid_scatter_transmission in [0, 1]"),
            (self.kernel_mm > 0, "kernel_mm must be > 0"),
            (self.correction_iterations >= 1, "correction_iterations must be >= 1"),
            (0 < self.correction_floor < 1, "correction_floor must be in (0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"ScatterModel: {msg}")

    @property
    def amplitude(self) -> float:
        """``Y (c / 40 mm) (T_s / T_p)``: scatter signal per unit convolved source."""
        return (self.scatter_yield * self.collimation_mm / 40.0
                * self.grid_scatter_transmission / self.grid_primary_transmission)

    def kernel(self, det_pitch_mm: float) -> np.ndarray:
        """The normalised kernel on the channel grid (odd length, sums to 1)."""
        return _kernel(self.kernel_mm, det_pitch_mm)

    def spread(self, source: torch.Tensor, det_pitch_mm: float) -> torch.Tensor:
        """``amplitude * (K * source)`` along the last (channel) axis, ``(..., D)``; outside the
        detector the source is 0 (air)."""
        # float32 convolution (fast on CPU); scatter is a smooth few-percent signal.
        k = torch.as_tensor(self.kernel(det_pitch_mm), dtype=torch.float32, device=source.device)
        x = source.reshape(-1, 1, source.shape[-1]).float()
        half = (k.numel() - 1) // 2
        y = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (half, half)),
                                       k.view(1, 1, -1))
        return self.amplitude * y.reshape(source.shape).to(source.dtype)


@lru_cache(maxsize=32)
def _kernel(kernel_mm: float, pitch_mm: float) -> np.ndarray:
    # exp(-|u| / lambda) integrated over each channel's width (exact for any pitch), cut at
    # 6 decay lengths (0.25 % of the area).
    n = max(1, math.ceil(6 * kernel_mm / pitch_mm))
    lo = (np.arange(-n, n + 1) - 0.5) * pitch_mm
    hi = lo + pitch_mm

    def cdf(x):
        return np.where(x < 0, 0.5 * np.exp(x / kernel_mm), 1 - 0.5 * np.exp(-x / kernel_mm))

    k = cdf(hi) - cdf(lo)
    return k / k.sum()


def mu_scatter(names: tuple[str, ...] | list[str], kev: float) -> np.ndarray:
    """Scatter (incoherent + coherent) attenuation in 1/mm at ``kev`` for each material,
    from xraydb's Elam tables and the compositions of :mod:`artifactgsi.physics.materials`."""
    return np.array([_mu_scatter(n, float(kev)) for n in names])


@lru_cache(maxsize=256)
def _mu_scatter(name: str, kev: float) -> float:
    import xraydb  # imported here: only the physics needs it

    m = material(name)
    total = sum(w for _, w in m.composition)
    mass = sum(w / total * (float(xraydb.mu_elam(el, kev * 1000.0, kind="incoh"))
                            + float(xraydb.mu_elam(el, kev * 1000.0, kind="coh")))
               for el, w in m.composition)
    return mass * m.density_g_cm3 / 10.0
