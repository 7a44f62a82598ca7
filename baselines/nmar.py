"""Normalized metal artifact reduction (NMAR): E. Meyer, R. Raupach, M. Lell, B. Schmidt,
M. Kachelriess, "Normalized metal artifact reduction (NMAR) in computed tomography",
Med. Phys. 37(10), 5482-5493, 2010.

A prior image is made by classifying the (slightly smoothed) LI image into air, soft tissue
and bone: air is set to -1000 HU, soft tissue to one constant, bone is kept. The sinogram is
divided by the prior's forward projection, so that what is left to interpolate across the
metal trace is nearly flat (the bone and body edges that LI smears into streaks are in the
prior); the normalised sinogram is linearly interpolated, multiplied back, and the change is
reconstructed and added to the image; the original metal pixels are re-inserted. The shared
steps are in :mod:`artifactgsi.physics.sinogram_inpainting` (shared with the simulator's GSI
metal correction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from artifactgsi.physics.projector import FanBeamProjector, FilterName
from artifactgsi.physics.sinogram_inpainting import (
    DEFAULT_KEV,
    TRACE_DILATION,
    gaussian_blur,
    hu_to_mu,
    inpaint_and_reconstruct,
    normalized_interpolation,
    reinsert_metal,
    run_per_spacing,
)
from baselines.errors import OptionError
from baselines.li import SinogramSetup, li_correct
from benchmark.method import MARInput, MARMethod, MAROutput


@dataclass(frozen=True)
class PriorSetup:
    """Tissue classification of the LI image into the NMAR prior.

    Attributes:
        air_hu: below this (smoothed) value a pixel is air, set to -1000 HU.
        bone_hu: above this value a pixel is bone and keeps its smoothed LI value. 500 HU is
            1.5 mu_water: residual bright streaks of the LI image stay soft tissue.
        soft_tissue_hu: value of everything in between (and of the metal pixels); ``None``
            (default) uses each slice's mean over its soft-tissue class, which follows the
            scanner's calibration and the fat / muscle mix of the slice.
        sigma_mm: Gaussian smoothing of the LI image before thresholding (noise and thin
            residual streaks should not flip classes).
        eps_water_mm: added to the prior's line integrals before dividing, as this many mm of
            water: keeps the ratio finite for rays that graze the body or miss it.
        li_max_px: the LI correction the prior is segmented from is reconstructed on a grid
            of at most this many pixels (then upsampled; the input image keeps its full
            resolution), since the prior is smoothed anyway; ``None``: full size.

    The defaults (3 mm, 500 HU) were chosen on the ArtifactGSI-Sim demo *train* split (89
    slices, 128 px of 3.5 mm; NMAR has nothing to train, so the test split stays unseen).
    PSNR gain of NMAR over LI, vs GSI / vs the ideal image, dB: 1 mm and 350 HU +0.11 /
    +0.11; 3 mm and 350 HU +0.16 / +0.17; 3 mm and 500 HU +0.16 / +0.20; 5 mm and 500 HU
    +0.13 / +0.17.
    """

    air_hu: float = -500.0
    bone_hu: float = 500.0
    soft_tissue_hu: float | None = None
    sigma_mm: float = 3.0
    eps_water_mm: float = 1.0
    li_max_px: int | None = 256

    def __post_init__(self) -> None:
        if not self.air_hu < self.bone_hu:
            raise OptionError(f"PriorSetup: air_hu ({self.air_hu}) must be below bone_hu "
                              f"({self.bone_hu})")
        if self.sigma_mm < 0 or self.eps_water_mm <= 0:
            raise OptionError(f"PriorSetup: sigma_mm must be >= 0 and eps_water_mm > 0, got "
                              f"{self.sigma_mm}, {self.eps_water_mm}")
        if self.li_max_px is not None and self.li_max_px < 8:
            raise OptionError(f"PriorSetup: li_max_px must be >= 8 or None, got {self.li_max_px}")


def nmar_prior(li_hu: torch.Tensor, metal_mask: torch.Tensor, pixel_mm: float,
               setup: PriorSetup | None = None) -> torch.Tensor:
    """NMAR prior image in HU from the LI image (metal not re-inserted).

    Args:
        li_hu: ``(B, 1, N, N)`` LI image in HU.
        metal_mask: ``(B, 1, N, N)`` bool.
        pixel_mm: pixel size in mm (for the smoothing width).
        setup: thresholds and smoothing (defaults: :class:`PriorSetup`).

    Returns:
        ``(B, 1, N, N)`` HU: -1000 (air), a soft-tissue constant, or smoothed bone values.
    """
    s = PriorSetup() if setup is None else setup
    sm = gaussian_blur(li_hu, s.sigma_mm / pixel_mm)
    air = sm < s.air_hu
    bone = sm > s.bone_hu
    soft = ~air & ~bone & ~metal_mask
    if s.soft_tissue_hu is None:
        n = soft.flatten(1).sum(1).clamp_min(1)
        mean = torch.where(soft, sm, 0.0).flatten(1).sum(1) / n
        # A slice with no soft tissue at all (not a body) falls back to water.
        soft_val = torch.where(soft.flatten(1).any(1), mean, 0.0).view(-1, 1, 1, 1)
    else:
        soft_val = torch.full((li_hu.shape[0], 1, 1, 1), float(s.soft_tissue_hu),
                              dtype=li_hu.dtype, device=li_hu.device)
    prior = torch.where(bone, sm, soft_val.expand_as(sm))
    prior = torch.where(air, torch.full_like(sm, -1000.0), prior)
    # Metal is what is being removed: inside it the prior is tissue, as the image would be.
    return torch.where(metal_mask, soft_val.expand_as(sm), prior)


def nmar_correct(proj: FanBeamProjector, ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
                 pixel_mm: float, setup: SinogramSetup, prior_setup: PriorSetup
                 ) -> torch.Tensor:
    """NMAR on one batch of equal pixel spacing; metal re-inserted. ``(B, 1, N, N)`` HU."""
    li_hu, rp = li_correct(proj, ordinary_hu, metal_mask, pixel_mm, setup,
                           prior_setup.li_max_px)
    prior = nmar_prior(li_hu, metal_mask, pixel_mm, prior_setup)
    nmar_sino = normalized_interpolation(rp.sino, rp.trace,
                                         proj.forward(hu_to_mu(prior, rp.mu_water)),
                                         prior_setup.eps_water_mm * rp.mu_water)
    img = inpaint_and_reconstruct(proj, rp.sino, nmar_sino, ordinary_hu, metal_mask,
                                  rp.mu_water, setup.filter)
    return reinsert_metal(img, ordinary_hu, metal_mask)


def nmar(ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
         pixel_spacing_mm: torch.Tensor | float, setup: SinogramSetup | None = None,
         prior_setup: PriorSetup | None = None) -> torch.Tensor:
    """Normalized MAR of a batch of slices.

    Args:
        ordinary_hu: ``(B, 1, N, N)`` float image in HU (square grid).
        metal_mask: ``(B, 1, N, N)`` bool metal pixels.
        pixel_spacing_mm: ``(B,)`` or scalar pixel size in mm.
        setup: filter, energy and trace settings (defaults: :class:`SinogramSetup`).
        prior_setup: tissue classification (defaults: :class:`PriorSetup`).

    Returns:
        ``(B, 1, N, N)`` float32 HU on the input's device; metal pixels are the input's and
        slices without metal are returned unchanged.
    """
    setup = SinogramSetup() if setup is None else setup
    prior_setup = PriorSetup() if prior_setup is None else prior_setup

    def correct(proj, hu, mask, pixel_mm):
        return nmar_correct(proj, hu, mask, pixel_mm, setup, prior_setup)

    return run_per_spacing(ordinary_hu, metal_mask, pixel_spacing_mm, correct, "nmar")


class NMAR(MARMethod):
    """Normalized MAR: interpolate the sinogram normalised by a tissue-class prior (Meyer 2010).

    Args:
        filter: FBP filter, ``"hann"`` (default) or ``"ramp"``.
        kev: effective energy for HU -> attenuation (cancels out).
        trace_dilation: channels added to each side of the metal trace.
        air_hu, bone_hu, soft_tissue_hu, sigma_mm: prior classification (:class:`PriorSetup`).
    """

    name = "nmar"
    version = "2"

    def __init__(self, filter: FilterName = "hann", kev: float = DEFAULT_KEV,
                 trace_dilation: int = TRACE_DILATION, air_hu: float = -500.0,
                 bone_hu: float = 500.0, soft_tissue_hu: float | None = None,
                 sigma_mm: float = 3.0) -> None:
        self.setup = SinogramSetup(filter=filter, kev=kev, trace_dilation=trace_dilation)
        self.prior_setup = PriorSetup(air_hu=air_hu, bone_hu=bone_hu,
                                      soft_tissue_hu=soft_tissue_hu, sigma_mm=sigma_mm)
        # Every option is kept under its own name: results.json reads them back.
        self.filter, self.kev, self.trace_dilation = filter, kev, trace_dilation
        self.air_hu, self.bone_hu = air_hu, bone_hu
        self.soft_tissue_hu, self.sigma_mm = soft_tissue_hu, sigma_mm

    def reduce(self, batch: MARInput) -> MAROutput:
        return MAROutput(image=nmar(batch.ordinary, batch.metal_mask, batch.pixel_spacing_mm,
                                    self.setup, self.prior_setup))
