"""The scoring protocol ("marbench-v1") as one frozen dataclass, plus what every
metric module shares: resampling to the evaluation grid and HU scaling. Metric declarations
live in :mod:`.registry`; summaries of per-slice values in :func:`benchmark.results.summarize`
(re-exported here).

Changing any number here changes results: make a new protocol version instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from artifactgsi.schema import HU_MAX, HU_MIN, METAL_THRESHOLD_HU, hu_to_unit01

from ..results import MetricSummary as Summary
from ..results import summarize
from .registry import MetricSpec

__all__ = ["MARBENCH_V1", "MetricSpec", "Protocol", "Summary", "hu_to_unit", "resample_hu",
           "resample_mask", "summarize"]


@dataclass(frozen=True)
class Protocol:
    """Every setting that the scores depend on. Units: HU, mm, pixels."""

    version: str = "marbench-v1"
    # -- grid: every image is resampled to eval_size x eval_size before scoring (the paper
    #    reports metrics "after rescaling to 512 x 512"); bilinear, antialiased when shrinking.
    eval_size: int = 512
    resample_mode: str = "bilinear"
    # -- PSNR / SSIM / LPIPS: HU clipped to [hu_min, hu_max] (the 12-bit CT range) and scaled
    #    to [0, 1], so data_range is 1.
    hu_min: float = HU_MIN      # the dataset schema's window
    hu_max: float = HU_MAX
    data_range: float = 1.0
    ssim_window: int = 11       # Gaussian window side (skimage: 2 * int(3.5 * sigma + 0.5) + 1)
    ssim_sigma: float = 1.5
    ssim_k1: float = 0.01
    ssim_k2: float = 0.03
    lpips_net: str = "alex"     # AlexNet backbone with the v0.1 linear heads
    lpips_version: str = "0.1"
    # -- clinical metrics (AAPM CT-MAR Grand Challenge style), in HU on the evaluation grid.
    body_threshold_hu: float = -500.0      # body = reference above this, largest part, filled
    metal_dilation_iterations: int = 2     # metal dilated twice (3x3 cross), as in AAPM
    clinical_ssim_data_range_hu: float = 5000.0
    clinical_ssim_metal_fill_hu: float = 100.0
    noise_roi_radius_mm: float = 5.0
    noise_tissue_hu: tuple[float, float] = (0.0, 100.0)  # soft tissue band, smoothed reference
    noise_smoothing_mm: float = 1.0        # Gaussian sigma used only to classify tissue
    noise_metal_margin_mm: float = 10.0
    noise_bone_margin_mm: float = 5.0
    streak_inner_mm: float = 2.0           # annulus from this far outside the metal ...
    streak_outer_mm: float = 40.0          # ... to this far
    streak_tail_fraction: float = 0.05     # top / bottom 5 % of (MAR - reference)
    bone_hu: tuple[float, float] = (150.0, 2500.0)  # AAPM bone band, outside dilated metal
    metal_hu: float = METAL_THRESHOLD_HU            # metal threshold (paper Eq. 8), inside
                                                    # the dilated metal

    def to_dict(self) -> dict[str, object]:
        """Plain values for results files (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: The protocol that results and the leaderboard use.
MARBENCH_V1 = Protocol()


# ----------------------------------------------------------------------------- helpers


def resample_hu(image_hu: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(B, 1, H, W) HU -> (B, 1, size, size) HU; a no-op (same tensor) when already that size.

    Bilinear with antialiasing, so shrinking a 1024 image averages rather than aliases;
    bilinear never overshoots, so HU stay within the input range (bicubic would ring at metal).
    """
    if image_hu.ndim != 4:
        raise ValueError(f"resample_hu expects (B, 1, H, W), got {tuple(image_hu.shape)}")
    if tuple(image_hu.shape[-2:]) == (size, size):
        return image_hu
    antialias = mode in ("bilinear", "bicubic")
    return F.interpolate(image_hu.float(), size=(size, size), mode=mode, align_corners=False,
                         antialias=antialias)


def resample_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) bool -> (B, 1, size, size) bool: a pixel is set where the bilinearly
    resampled mask covers at least half of it (so area is kept, unlike nearest)."""
    if tuple(mask.shape[-2:]) == (size, size):
        return mask.bool()
    return resample_hu(mask.float(), size) >= 0.5


def hu_to_unit(image_hu: torch.Tensor, hu_min: float, hu_max: float) -> torch.Tensor:
    """Clip HU to [hu_min, hu_max] and scale to [0, 1] (same shape); the protocol's window is
    passed explicitly (:func:`artifactgsi.schema.hu_to_unit01` does the maths)."""
    return hu_to_unit01(image_hu, hu_min, hu_max)
