"""Vendor-style projection-based metal correction for the GSI series ("GSI MARs"-like).

Clinical dual-energy metal protocols read a high-keV VMI with the vendor's projection-based
metal artifact reduction on top. This models that step on the *measured* VMI sinogram (which
the image-domain baselines never see): metal is segmented in a first reconstruction and
forward-projected to find its trace; the trace is inpainted by normalised interpolation
(NMAR, Meyer et al. 2010: divide by the projection of a tissue-class prior, interpolate along
the channels, multiply back; :func:`~artifactgsi.physics.sinogram_inpainting.
normalized_interpolation`, the implementation the NMAR baseline uses too); the corrected
sinogram is reconstructed and the metal pixels of the first reconstruction are put back. Only
the GSI series ever gets it; the ordinary series never does (it is what methods correct).

Its settings (:class:`MetalCorrection`) are recorded by the simulator in every patient's
``truth.json`` and in the raw tree's ``simulation.json``, from which the dataset card quotes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..schema import METAL_THRESHOLD_HU
from .geometry import ImageGrid
from .projector import FanBeamProjector
from .sinogram_inpainting import metal_trace, normalized_interpolation


@dataclass(frozen=True)
class MetalCorrection:
    """Settings of the projection-based metal correction (HU at the VMI energy).

    Attributes:
        metal_hu: metal segmentation threshold on the first reconstruction.
        bone_hu: prior: above this (3x3 smoothed) value the smoothed image is kept (bone).
        air_hu: prior: below this, air (0 attenuation); in between, water.
        metal_dilation_px: pixels the metal segmentation is grown by before projecting it.
        trace_threshold_px: a ray is in the trace when it crosses more than this many pixels
            of metal.
        trace_dilation: channels added on each side of the metal trace.
        eps_water_mm: water path added to the prior's projection before dividing.
        filter: FBP filter of both reconstructions.
    """

    metal_hu: float = METAL_THRESHOLD_HU
    bone_hu: float = 350.0
    air_hu: float = -500.0
    metal_dilation_px: int = 1
    trace_threshold_px: float = 1e-3
    trace_dilation: int = 1
    eps_water_mm: float = 1.0
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
        setup: thresholds, trace and filter settings.

    Returns:
        ``(B, 1, H, W)`` attenuation in 1/mm on ``grid``.
    """
    first = projector.fbp(p, None, filter=setup.filter)  # object grid
    hu = 1000.0 * (first - mu_water) / mu_water
    metal = _dilate(hu > setup.metal_hu, setup.metal_dilation_px)
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
    trace = metal_trace(sinos[:, :1], projector.geom.object_grid.pixel_mm,
                        setup.trace_threshold_px, setup.trace_dilation)
    p_corr = normalized_interpolation(p, trace, sinos[:, 1:], setup.eps_water_mm * mu_water)
    both = projector.fbp(torch.cat([p, p_corr], dim=1), grid, filter=setup.filter)
    orig, corr = both[:, :1], both[:, 1:]
    metal_out = 1000.0 * (orig - mu_water) / mu_water > setup.metal_hu
    out = torch.where(metal_out, orig, corr)
    return torch.where(has_metal[:, None, None, None], out, orig)
