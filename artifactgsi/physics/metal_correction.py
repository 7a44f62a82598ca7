"""Vendor-style projection-based metal correction for the GSI series ("GSI MARs"-like).

Clinical dual-energy metal protocols read a high-keV VMI with the vendor's projection-based
metal artifact reduction on top. This models that step on the *measured* VMI sinogram (which
the image-domain baselines never see): metal is segmented in a first reconstruction and
forward-projected to find its trace; the trace is inpainted by normalised interpolation
(NMAR, Meyer et al. 2010: divide by the projection of a tissue-class prior, interpolate along
the channels, multiply back); the corrected sinogram is reconstructed and the metal pixels of
the first reconstruction are put back. Only the GSI series ever gets it; the ordinary series
never does (DESIGN.md 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .geometry import ImageGrid
from .inpaint import interpolate_trace
from .projector import FanBeamProjector


@dataclass(frozen=True)
class MetalCorrection:
    """Settings of the projection-based metal correction (HU at the VMI energy)."""

    metal_hu: float = 2500.0  # segmentation threshold of the first reconstruction
    bone_hu: float = 350.0  # prior: above this, keep the (smoothed) image
    air_hu: float = -500.0  # prior: below this, air
    trace_dilation: int = 1  # channels added on each side of the metal trace
    filter: str = "hann"


def _dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    if px <= 0:
        return mask
    k = 2 * px + 1
    return F.max_pool2d(mask.float(), k, stride=1, padding=px) > 0


def correct(projector: FanBeamProjector, p: torch.Tensor, mu_water: float, grid: ImageGrid,
            setup: MetalCorrection = MetalCorrection()) -> torch.Tensor:
    """Metal-corrected reconstruction of monochromatic line integrals.

    Args:
        projector: the scanner's projector (its object grid is where metal is segmented).
        p: ``(B, 1, V, D)`` line integrals at one energy.
        mu_water: water attenuation at that energy in 1/mm (for the HU thresholds).
        grid: output grid.

    Returns:
        ``(B, 1, H, W)`` attenuation in 1/mm on ``grid``.
    """
    first = projector.fbp(p, None, filter=setup.filter)  # object grid
    hu = 1000.0 * (first - mu_water) / mu_water
    metal = _dilate(hu > setup.metal_hu, 1)
    has_metal = metal.flatten(1).any(1)
    if not bool(has_metal.any()):
        return projector.fbp(p, grid, filter=setup.filter)
    # Tissue-class prior: air 0, soft tissue water, bone kept (smoothed), metal as water.
    smooth = F.avg_pool2d(first, 3, stride=1, padding=1, count_include_pad=False)
    shu = 1000.0 * (smooth - mu_water) / mu_water
    prior = torch.where(shu < setup.air_hu, torch.zeros_like(smooth),
                        torch.where(shu > setup.bone_hu, smooth, torch.full_like(smooth,
                                                                                 mu_water)))
    prior = torch.where(metal, torch.full_like(prior, mu_water), prior)
    sinos = projector.forward(torch.cat([metal.float(), prior], dim=1))
    trace = sinos[:, :1] > 1e-3 * projector.geom.object_grid.pixel_mm
    if setup.trace_dilation:
        k = 2 * setup.trace_dilation + 1
        trace = F.max_pool2d(trace.float(), (1, k), stride=1,
                             padding=(0, setup.trace_dilation)) > 0
    # Normalise by the prior's projection (+ 1 mm water keeps grazing rays finite).
    norm = sinos[:, 1:] + mu_water
    p_corr = interpolate_trace(p / norm, trace) * norm
    both = projector.fbp(torch.cat([p, p_corr], dim=1), grid, filter=setup.filter)
    orig, corr = both[:, :1], both[:, 1:]
    metal_out = 1000.0 * (orig - mu_water) / mu_water > setup.metal_hu
    out = torch.where(metal_out, orig, corr)
    return torch.where(has_metal[:, None, None, None], out, orig)
