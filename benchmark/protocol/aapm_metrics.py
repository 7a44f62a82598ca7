"""Declarations of the ``aapm-ctmar-2024`` metrics (no torch, no numpy: readers of results
files import this). The computations are in :mod:`benchmark.protocol.aapm`."""

from __future__ import annotations

from ..metrics.registry import MetricSpec, register_metric

_REFS = ("reference", "ideal", "gsi")
_NEEDS = ("metal_mask", "pixel_spacing_mm", "anchor:nmar")

#: Every metric of the protocol, in table order: ten raw values, eight sub-scores, the final.
AAPM_METRICS: dict[str, MetricSpec] = {s.name: register_metric(s) for s in (
    MetricSpec("aapm_ct_rmse_hu", False, "HU", "AAPM 1: CT-number RMSE in the body outside "
               "the metal dilated twice", "aapm", _REFS, _NEEDS, "RMSE HU"),
    MetricSpec("aapm_noise_sd_hu", False, "HU", "AAPM 2: SD in the homogeneous soft-tissue "
               "disc least affected by the metal", "aapm", _REFS, _NEEDS, "noise HU"),
    MetricSpec("aapm_sharpness", True, "", "AAPM 3: 90th percentile of the Sobel magnitude in "
               "the bone and fat edge ROIs, relative to the reference", "aapm", _REFS, _NEEDS,
               "sharpness"),
    MetricSpec("aapm_streak_hu", False, "HU", "AAPM 4: mean of the top 5 % minus mean of the "
               "bottom 5 % of (image - reference) in the streak ROI", "aapm", _REFS, _NEEDS,
               "streak HU"),
    MetricSpec("aapm_ssim", True, "", "AAPM 5: SSIM (sigma 1.5, data range 5000 HU, dilated "
               "metal set to 100 HU) over the body outside the dilated metal", "aapm", _REFS,
               _NEEDS, "SSIM"),
    MetricSpec("aapm_metal_volume_change", False, "", "AAPM 7a: |1 - metal area / true metal "
               "area|, metal = HU above the case's threshold in the metal region", "aapm",
               _REFS, _NEEDS, "metal vol."),
    MetricSpec("aapm_metal_dice", True, "", "AAPM 7b: Dice of the metal against the true "
               "metal", "aapm", _REFS, _NEEDS, "metal Dice"),
    MetricSpec("aapm_bone_volume_change", False, "", "AAPM 6a: |1 - bone area / reference "
               "bone area|, bone = 150..2500 HU outside the dilated metal", "aapm", _REFS,
               _NEEDS, "bone vol."),
    MetricSpec("aapm_bone_dice", True, "", "AAPM 6b: Dice of bone against the reference's",
               "aapm", _REFS, _NEEDS, "bone Dice"),
    MetricSpec("aapm_range_shift_pct", False, "%", "AAPM 8: largest proton range (water-"
               "equivalent thickness) change along the beam paths, relative to the longest "
               "path", "aapm", _REFS, _NEEDS, "range shift %"),
    MetricSpec("aapm_score_ct", False, "", "AAPM score 1, CT-number accuracy (0 = reference, "
               "2 = NMAR, 4 = uncorrected)", "aapm", _REFS, _NEEDS, "CT#"),
    MetricSpec("aapm_score_noise", False, "", "AAPM score 2, noise (0 = reference noise, 4 = "
               "twice it)", "aapm", _REFS, _NEEDS, "noise"),
    MetricSpec("aapm_score_sharpness", False, "", "AAPM score 3, sharpness (1-4 = the "
               "reference blurred by 0.4 / 0.5 / 0.75 / 1.0 px)", "aapm", _REFS, _NEEDS,
               "sharpness"),
    MetricSpec("aapm_score_streak", False, "", "AAPM score 4, streak amplitude", "aapm",
               _REFS, _NEEDS, "streak"),
    MetricSpec("aapm_score_ssim", False, "", "AAPM score 5, SSIM", "aapm", _REFS, _NEEDS,
               "SSIM"),
    MetricSpec("aapm_score_metal", False, "", "AAPM score 7, metal integrity (mean of volume "
               "and Dice scores)", "aapm", _REFS, _NEEDS, "metal"),
    MetricSpec("aapm_score_bone", False, "", "AAPM score 6, bone integrity (mean of volume "
               "and Dice scores)", "aapm", _REFS, _NEEDS, "bone"),
    MetricSpec("aapm_score_proton", False, "", "AAPM score 8, proton range (0-2 % shift -> "
               "0-4)", "aapm", _REFS, _NEEDS, "proton"),
    MetricSpec("aapm_score", False, "", "AAPM final score: the mean of the eight sub-scores "
               "(0 = as the reference, about 2 = NMAR, 4 = uncorrected)", "aapm", _REFS,
               _NEEDS, "final"),
)}
