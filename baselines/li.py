"""Linear interpolation MAR (LI): W. A. Kalender, R. Hebel, J. Ebersberger, "Reduction of CT
artifacts caused by metallic implants", Radiology 164(2), 576-577, 1987.

The ordinary image is forward projected with the shared fan-beam projector, the metal trace
of every view is replaced by the straight line between its two edges, the change is
reconstructed by FBP and added to the image, and the original metal pixels are put back (see
:mod:`artifactgsi.physics.sinogram_inpainting` for the shared steps, and for why the change is added
to the input image instead of reconstructing the whole reprojected sinogram).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from artifactgsi.physics.projector import FanBeamProjector, FilterName
from artifactgsi.physics.sinogram_inpainting import (
    DEFAULT_KEV,
    TRACE_DILATION,
    TRACE_THRESHOLD_PX,
    hu_to_mu,
    inpaint_and_reconstruct,
    interpolate_trace,
    metal_trace,
    reinsert_metal,
    run_per_spacing,
    water_mu,
)
from baselines.errors import OptionError
from benchmark.method import MARInput, MARMethod, MAROutput


@dataclass(frozen=True)
class SinogramSetup:
    """Settings shared by LI and NMAR.

    Attributes:
        filter: FBP filter of the correction, ``"hann"`` (default: the ordinary protocol of
            ArtifactGSI-Sim and most clinical soft-tissue kernels) or ``"ramp"``.
        kev: effective energy (keV) for HU -> attenuation; cancels out (kept for units).
        trace_threshold_px: metal path (in pixels) above which a ray is in the trace.
        trace_dilation: channels added to each side of the trace in every view.
    """

    filter: FilterName = "hann"
    kev: float = DEFAULT_KEV
    trace_threshold_px: float = TRACE_THRESHOLD_PX
    trace_dilation: int = TRACE_DILATION

    def __post_init__(self) -> None:
        if self.filter not in ("hann", "ramp"):
            raise OptionError(f"filter must be 'hann' or 'ramp', got {self.filter!r}")
        water_mu(self.kev)  # validates the energy
        if self.trace_threshold_px < 0:
            raise OptionError(f"trace_threshold_px must be >= 0, got {self.trace_threshold_px}")
        if self.trace_dilation < 0:
            raise OptionError(f"trace_dilation must be >= 0 channels, got {self.trace_dilation}")


@dataclass
class Reprojection:
    """The sinogram side of one batch: reprojected image, metal trace and water attenuation.

    Attributes:
        sino: ``(B, 1, V, D)`` line integrals of the ordinary image at ``mu_water``.
        trace: ``(B, 1, V, D)`` bool metal trace.
        mu_water: water attenuation in 1/mm used for HU -> attenuation.
    """

    sino: torch.Tensor
    trace: torch.Tensor
    mu_water: float


def reproject(proj: FanBeamProjector, ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
              pixel_mm: float, setup: SinogramSetup) -> Reprojection:
    """Forward project the image (as attenuation) and the metal mask in one pass."""
    mu_w = water_mu(setup.kev)
    x = torch.cat([hu_to_mu(ordinary_hu.float(), mu_w), metal_mask.float()], dim=1)
    s = proj.forward(x)  # (B, 2, V, D): channel 0 image, channel 1 metal path in mm
    trace = metal_trace(s[:, 1:], pixel_mm, setup.trace_threshold_px, setup.trace_dilation)
    return Reprojection(s[:, :1], trace, mu_w)


def li_correct(proj: FanBeamProjector, ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
               pixel_mm: float, setup: SinogramSetup, recon_px: int | None = None
               ) -> tuple[torch.Tensor, Reprojection]:
    """LI on one batch of equal pixel spacing, metal *not* re-inserted.

    ``recon_px``: reconstruct the correction on a coarser grid (see
    :func:`~artifactgsi.physics.sinogram_inpainting.inpaint_and_reconstruct`).

    Returns:
        ``(li_hu, reprojection)``: the ``(B, 1, N, N)`` LI image in HU, whose metal pixels
        hold interpolated tissue values (NMAR segments it), and the reprojection.
    """
    rp = reproject(proj, ordinary_hu, metal_mask, pixel_mm, setup)
    li_sino = interpolate_trace(rp.sino, rp.trace)
    img = inpaint_and_reconstruct(proj, rp.sino, li_sino, ordinary_hu, metal_mask,
                                  rp.mu_water, setup.filter, recon_px)
    return img, rp


def li(ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
       pixel_spacing_mm: torch.Tensor | float, setup: SinogramSetup | None = None
       ) -> torch.Tensor:
    """Linear-interpolation MAR of a batch of slices.

    Args:
        ordinary_hu: ``(B, 1, N, N)`` float image in HU (square grid).
        metal_mask: ``(B, 1, N, N)`` bool metal pixels.
        pixel_spacing_mm: ``(B,)`` or scalar pixel size in mm.
        setup: filter, energy and trace settings (defaults: :class:`SinogramSetup`).

    Returns:
        ``(B, 1, N, N)`` float32 HU on the input's device; metal pixels are the input's and
        slices without metal are returned unchanged.
    """
    setup = SinogramSetup() if setup is None else setup

    def correct(proj, hu, mask, pixel_mm):
        img, _ = li_correct(proj, hu, mask, pixel_mm, setup)
        return reinsert_metal(img, hu, mask)

    return run_per_spacing(ordinary_hu, metal_mask, pixel_spacing_mm, correct, "li")


class LI(MARMethod):
    """Linear interpolation of the metal trace in the reprojected sinogram (Kalender 1987).

    Args:
        filter: FBP filter, ``"hann"`` (default) or ``"ramp"``.
        kev: effective energy for HU -> attenuation (cancels out).
        trace_dilation: channels added to each side of the metal trace.
    """

    name = "li"
    version = "1"

    def __init__(self, filter: FilterName = "hann", kev: float = DEFAULT_KEV,
                 trace_dilation: int = TRACE_DILATION) -> None:
        self.setup = SinogramSetup(filter=filter, kev=kev, trace_dilation=trace_dilation)
        # Every option is kept under its own name: results.json reads them back.
        self.filter, self.kev, self.trace_dilation = filter, kev, trace_dilation

    def reduce(self, batch: MARInput) -> MAROutput:
        return MAROutput(image=li(batch.ordinary, batch.metal_mask, batch.pixel_spacing_mm,
                                  self.setup))
