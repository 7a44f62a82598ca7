"""Protocol ``aapm-ctmar-2024``: the AAPM CT Metal Artifact Reduction Grand Challenge's eight
metrics, their per-case 0-4 scores and the final score (pure numpy / scipy / skimage).

The challenge (2023-24; Haneda et al., Med Phys 2025; scoring program in the public
``xcist/example`` repository, ``AAPM_datachallenge/scoring``, BSD-3) scores each case with
eight metrics, maps each to a score from 0 (as the ground truth) over about 2 (the NMAR
reference) to 4 (no better than the uncorrected image) by piecewise-linear interpolation on a
per-case axis, and averages the eight with equal weight: lower is better. This module is this
toolkit's own implementation (nothing is copied); docs/protocol.md lists, metric by metric,
where it differs from the challenge's program and why.

All images are 2-D float arrays in HU on one grid (the dataset's native grid: this protocol
does not resample); masks are bool arrays of the same shape; lengths are in mm, with square
pixels of ``pixel_mm``. The regions come from :mod:`benchmark.protocol.aapm_structures`.

Metric functions (raw values, units in the names):

========================== ===== ========================================================
key                        unit  definition
========================== ===== ========================================================
``aapm_ct_rmse_hu``        HU    RMSE of image - reference in the body outside the metal
                                 dilated twice (:func:`ct_rmse`)
``aapm_noise_sd_hu``       HU    SD in a homogeneous disc least affected by the metal
                                 (:func:`noise_sd`)
``aapm_sharpness``         1     90th percentile of the Sobel magnitude in the soft-tissue /
                                 bone and soft-tissue / fat edge ROIs, relative to the
                                 reference, averaged over the ROIs (:func:`sharpness_ratio`)
``aapm_streak_hu``         HU    mean of the top 5 % minus mean of the bottom 5 % of
                                 image - reference in the streak ROI (:func:`streak_amplitude`)
``aapm_ssim``              1     SSIM map (Gaussian sigma 1.5, data range 5000 HU, dilated
                                 metal set to 100 HU in both) averaged over the body outside
                                 the dilated metal (:func:`masked_ssim`)
``aapm_bone_*``            1     relative volume change and Dice of bone (150 <= HU < 2500)
                                 outside the dilated metal (:func:`bone_integrity`)
``aapm_metal_*``           1     relative volume change and Dice of the metal (HU above the
                                 case's metal threshold, inside the metal region) against the
                                 true metal (:func:`metal_integrity`)
``aapm_range_shift_pct``   %     largest water-equivalent-thickness change along the proton
                                 beam paths, relative to the longest reference path
                                 (:func:`proton_range_shift`)
========================== ===== ========================================================

Scores: :func:`score_knots` builds a metric's axis for one case (values of scores 0..4),
:func:`score_value` interpolates on it, :func:`final_score` averages the sub-scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..metrics import clinical as _clinical

__all__ = [
    "AAPM_CTMAR_2024", "AAPMProtocol", "METRIC_KEYS", "SCORE_KEYS", "SUBSCORES",
    "beam_frame", "beam_wet_mm", "bone_integrity", "ct_rmse", "dice_volume_change",
    "final_score", "hlut_spr", "subscores",
    "masked_ssim", "metal_integrity", "noise_sd", "proton_range_shift", "score_knots",
    "score_value", "sharpness_ratio", "sobel_magnitude", "sobel_p90", "streak_amplitude",
]

#: The challenge's clinical CT-number -> stopping-power-ratio curve (MGH); outside the table
#: the stopping power is 0.
HLUT_HU: tuple[float, ...] = (-1000.0, -200.0, -120.0, -20.0, 50.0, 100.0, 140.0, 2990.0,
                              2995.0, 999960.0)
HLUT_SPR: tuple[float, ...] = (0.0, 0.788, 0.897, 1.003, 1.038, 1.084, 1.097, 2.732, 3.2, 3.2)


@dataclass(frozen=True)
class AAPMProtocol:
    """Every setting the ``aapm-ctmar-2024`` scores depend on. Units: HU, mm, pixels.

    Changing a value changes published numbers: make a new protocol version instead.
    """

    version: str = "aapm-ctmar-2024"
    # -- grid: scored where the data lives (the challenge's data are 512 x 512 already).
    grid: str = "native"
    # -- shared regions
    body_threshold_hu: float = -500.0       # body: reference above this, largest part, filled
    metal_dilation_iterations: int = 2      # "metal dilated twice" (3x3 cross), as the challenge
    # -- 1 CT-number accuracy: RMSE, no further setting
    # -- 2 noise
    noise_roi_radius_mm: float = 10.0
    noise_roi_min_radius_px: float = 2.0    # at coarse grids the disc keeps >= ~13 pixels
    noise_tissue_hu: tuple[float, float] = (-20.0, 120.0)  # soft tissue, smoothed reference
    tissue_smoothing_mm: float = 2.0        # Gaussian sigma used only to classify tissue
    noise_metal_margin_mm: float = 10.0
    noise_bone_margin_mm: float = 5.0
    noise_edge_margin_mm: float = 5.0
    # -- 3 sharpness
    sobel_percentile: float = 90.0
    sharpness_blur_px: tuple[float, float, float, float] = (0.4, 0.5, 0.75, 1.0)  # scores 1..4
    edge_fat_hu: tuple[float, float] = (-200.0, -50.0)
    edge_soft_hu: tuple[float, float] = (0.0, 100.0)
    edge_bone_hu: float = 250.0
    edge_metal_margin_mm: float = 10.0
    edge_min_pixels: int = 10
    # -- 4 streaks
    streak_outer_mm: float = 40.0
    streak_sectors: int = 8
    streak_sectors_kept: int = 2
    streak_tail_fraction: float = 0.05
    streak_min_pixels: int = 20
    # -- 5 SSIM
    ssim_sigma: float = 1.5
    ssim_data_range_hu: float = 5000.0
    ssim_metal_fill_hu: float = 100.0
    # -- 6 bone, 7 metal
    bone_hu: tuple[float, float] = (150.0, 2500.0)
    metal_margin_hu: float = 250.0          # metal threshold = highest non-metal value + this
    metal_region_mm: float = 10.0           # the metal region reaches this far from the metal
    # -- 8 proton range
    hlut_hu: tuple[float, ...] = HLUT_HU
    hlut_spr: tuple[float, ...] = HLUT_SPR
    target_radius_mm: float = 10.0
    target_min_radius_px: float = 2.0
    target_margin_mm: float = 10.0
    beam_angles_deg: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
    range_shift_knots_pct: tuple[float, float, float, float] = (0.5, 1.0, 1.5, 2.0)
    # -- the 0-4 mapping
    anchor_method: str = "nmar"             # the score-2 anchor, made through the registry
    noise_knots_fraction: tuple[float, float, float, float] = (0.25, 0.5, 0.75, 1.0)
    # Smallest step between two knots of an anchored axis, per raw metric: keeps the axis
    # increasing when NMAR or the uncorrected image is as good as the reference on a case.
    knot_floor: tuple[tuple[str, float], ...] = (
        ("aapm_ct_rmse_hu", 3.0), ("aapm_noise_sd_hu", 0.5), ("aapm_sharpness", 0.005),
        ("aapm_streak_hu", 4.0), ("aapm_ssim", 0.002), ("aapm_metal_volume_change", 0.01),
        ("aapm_metal_dice", 0.01), ("aapm_bone_volume_change", 0.002),
        ("aapm_bone_dice", 0.002), ("aapm_range_shift_pct", 0.05))

    def floor(self, key: str) -> float:
        return dict(self.knot_floor)[key]

    def to_dict(self) -> dict[str, object]:
        """Plain values for results files (tuples become lists)."""
        def plain(v: object) -> object:
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v
        return {k: plain(v) for k, v in asdict(self).items()}


#: The protocol as published by this toolkit.
AAPM_CTMAR_2024 = AAPMProtocol()

#: Raw metric keys, in the challenge's order; and whether higher is better.
METRIC_KEYS: dict[str, bool] = {
    "aapm_ct_rmse_hu": False,
    "aapm_noise_sd_hu": False,
    "aapm_sharpness": True,
    "aapm_streak_hu": False,
    "aapm_ssim": True,
    "aapm_metal_volume_change": False,
    "aapm_metal_dice": True,
    "aapm_bone_volume_change": False,
    "aapm_bone_dice": True,
    "aapm_range_shift_pct": False,
}
#: The eight sub-scores (0-4, lower is better) and the raw metrics each averages.
SUBSCORES: dict[str, tuple[str, ...]] = {
    "aapm_score_ct": ("aapm_ct_rmse_hu",),
    "aapm_score_noise": ("aapm_noise_sd_hu",),
    "aapm_score_sharpness": ("aapm_sharpness",),
    "aapm_score_streak": ("aapm_streak_hu",),
    "aapm_score_ssim": ("aapm_ssim",),
    "aapm_score_metal": ("aapm_metal_volume_change", "aapm_metal_dice"),
    "aapm_score_bone": ("aapm_bone_volume_change", "aapm_bone_dice"),
    "aapm_score_proton": ("aapm_range_shift_pct",),
}
#: Score keys: the eight sub-scores, then the final score.
SCORE_KEYS: tuple[str, ...] = (*SUBSCORES, "aapm_score")


# ----------------------------------------------------------------------------- metrics


def ct_rmse(image_hu: np.ndarray, reference_hu: np.ndarray, region: np.ndarray) -> float:
    """Metric 1, HU: root-mean-square of image - reference over ``region`` (the body outside
    the dilated metal); NaN if the region is empty."""
    if not region.any():
        return math.nan
    d = image_hu[region].astype(np.float64) - reference_hu[region].astype(np.float64)
    return float(np.sqrt(np.mean(d * d)))


def noise_sd(image_hu: np.ndarray, roi: np.ndarray) -> float:
    """Metric 2, HU: population standard deviation of the image in ``roi`` (as numpy's
    ``std``, ddof 0); NaN without an ROI."""
    if not roi.any():
        return math.nan
    return float(np.std(image_hu[roi].astype(np.float64)))


def sobel_magnitude(image_hu: np.ndarray) -> np.ndarray:
    """(H, W) gradient magnitude of ``scipy.ndimage.sobel`` along both axes (HU per pixel,
    times the Sobel kernel's gain of 8)."""
    img = image_hu.astype(np.float64)
    return np.hypot(ndimage.sobel(img, 0), ndimage.sobel(img, 1))


def sobel_p90(image_hu: np.ndarray, roi: np.ndarray, percentile: float = 90.0) -> float:
    """The ``percentile`` of the Sobel magnitude in ``roi`` (linear interpolation, numpy's
    default); NaN for an empty ROI."""
    if not roi.any():
        return math.nan
    return float(np.percentile(sobel_magnitude(image_hu)[roi], percentile))


def sharpness_ratio(image_hu: np.ndarray, reference_hu: np.ndarray,
                    rois: Sequence[np.ndarray], percentile: float = 90.0) -> float:
    """Metric 3, unitless: per edge ROI, the image's ``percentile`` of the Sobel magnitude over
    the reference's; the mean over the ROIs that are not empty (NaN if none). 1 = as sharp as
    the reference, below 1 = blurred."""
    ratios = []
    for roi in rois:
        if roi is None or not roi.any():
            continue
        ref = sobel_p90(reference_hu, roi, percentile)
        if ref > 0:
            ratios.append(sobel_p90(image_hu, roi, percentile) / ref)
    return float(np.mean(ratios)) if ratios else math.nan


# Metric 4 (streak amplitude, HU: |mean of the highest - mean of the lowest 5 %| of
# (image - reference) in the ROI) and metric 5 (masked SSIM: the dilated metal set to 100 HU
# in both images, skimage's Gaussian SSIM map at data range 5000 HU averaged over the region)
# are the same computations as marbench-v1's clinical metrics: one implementation, shared.
streak_amplitude = _clinical.streak_amplitude
masked_ssim = _clinical.masked_ssim


def dice_volume_change(mask: np.ndarray, reference_mask: np.ndarray) -> tuple[float, float]:
    """(relative volume change |1 - V / V_ref|, Dice 2|A n B| / (|A| + |B|)) of two bool
    masks (areas in pixels; the pixel area cancels). Volume change NaN for an empty
    reference; Dice NaN when both are empty."""
    a = int(mask.sum())
    r = int(reference_mask.sum())
    inter = int(np.logical_and(mask, reference_mask).sum())
    vol = abs(1.0 - a / r) if r else math.nan
    dice = 2.0 * inter / (a + r) if a + r else math.nan
    return vol, dice


def bone_integrity(image_hu: np.ndarray, reference_hu: np.ndarray, region: np.ndarray,
                   bone_hu: tuple[float, float] = (150.0, 2500.0)) -> tuple[float, float]:
    """Metrics 6: (volume change, Dice) of bone, ``bone_hu[0] <= HU < bone_hu[1]`` inside
    ``region``, of the image against the reference."""
    lo, hi = bone_hu
    return dice_volume_change(region & (image_hu >= lo) & (image_hu < hi),
                              region & (reference_hu >= lo) & (reference_hu < hi))


def metal_integrity(image_hu: np.ndarray, metal: np.ndarray, metal_region: np.ndarray,
                    threshold_hu: float) -> tuple[float, float]:
    """Metrics 7: (volume change, Dice) of the image's metal (HU > ``threshold_hu`` inside
    ``metal_region``) against the true metal ``metal``."""
    return dice_volume_change(metal_region & (image_hu > threshold_hu), metal)


def hlut_spr(image_hu: np.ndarray, hlut_hu: Sequence[float] = HLUT_HU,
             hlut_spr_: Sequence[float] = HLUT_SPR) -> np.ndarray:
    """Stopping power relative to water of each pixel: the clinical curve interpolated
    linearly, 0 outside its HU range."""
    return np.interp(image_hu.astype(np.float64), np.asarray(hlut_hu, np.float64),
                     np.asarray(hlut_spr_, np.float64), left=0.0, right=0.0)


def beam_frame(a: np.ndarray, angle_deg: float, order: int) -> np.ndarray:
    """``a`` turned so that a beam at ``angle_deg`` enters from the left (column 0) and runs
    along +columns. Multiples of 90 degrees are exact (``np.rot90``: 90 = from the top row);
    other angles use ``scipy.ndimage.rotate`` with the same sense."""
    q = angle_deg / 90.0
    if abs(q - round(q)) < 1e-9:
        return np.rot90(a, int(round(q)) % 4)
    return ndimage.rotate(a, angle_deg, reshape=False, order=order, cval=0.0)


def beam_wet_mm(spr: np.ndarray, target: np.ndarray, pixel_mm: float,
                angle_deg: float) -> np.ndarray:
    """Water-equivalent thickness (mm) of each ray of one beam, from the image's edge to the
    target's distal pixel (that pixel excluded, as the challenge), one ray per row of the
    target in the beam's frame: ``pixel_mm * sum(spr[row, :distal])``."""
    s = beam_frame(spr, angle_deg, order=1)
    t = beam_frame(target.astype(np.float64), angle_deg, order=0) > 0.5
    rows = np.flatnonzero(t.any(axis=1))
    distal = [int(np.flatnonzero(t[r])[-1]) for r in rows]
    return np.array([pixel_mm * float(s[r, :c].sum()) for r, c in zip(rows, distal,
                                                                        strict=True)])


def proton_range_shift(image_hu: np.ndarray, reference_hu: np.ndarray, target: np.ndarray,
                       body: np.ndarray, excluded: np.ndarray, pixel_mm: float,
                       beam_angles_deg: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
                       hlut_hu: Sequence[float] = HLUT_HU,
                       hlut_spr_: Sequence[float] = HLUT_SPR) -> float:
    """Metric 8, percent: for each beam, max over its rays of |WET(image) - WET(reference)|
    relative to its longest reference WET; the largest over the beams. Stopping power is 0
    outside ``body`` and inside ``excluded`` (the dilated metal) in both images. NaN without
    a target."""
    if not target.any():
        return math.nan
    keep = body & ~excluded
    spr_i = np.where(keep, hlut_spr(image_hu, hlut_hu, hlut_spr_), 0.0)
    spr_r = np.where(keep, hlut_spr(reference_hu, hlut_hu, hlut_spr_), 0.0)
    shifts = []
    for angle in beam_angles_deg:
        wi = beam_wet_mm(spr_i, target, pixel_mm, angle)
        wr = beam_wet_mm(spr_r, target, pixel_mm, angle)
        if wr.size and wr.max() > 0:
            shifts.append(float(np.max(np.abs(wi - wr)) / wr.max()))
    return 100.0 * max(shifts) if shifts else math.nan


# ----------------------------------------------------------------------------- 0-4 mapping


def score_knots(reference_value: float, anchor2: float | None, anchor4: float | None, *,
                higher_is_better: bool, floor: float,
                fixed_steps: Sequence[float] | None = None) -> list[float]:
    """The values of scores 0, 1, 2, 3, 4 of one metric on one case (the challenge's axis
    without its two sentinels).

    - ``fixed_steps`` given (noise, sharpness, proton range): knots are
      ``reference_value`` then ``reference_value`` moved by each step, toward "worse";
    - else anchored: score 0 at ``reference_value`` (the reference scored against itself),
      2 at ``anchor2`` (NMAR), 4 at ``anchor4`` (the uncorrected image), 1 and 3 half-way.
      If the uncorrected image is not worse than NMAR, 4 lies as far beyond NMAR as NMAR is
      from the reference (the challenge's equal steps); if NMAR is not worse than the
      reference, the uncorrected image alone spans 0..4 in four equal steps.

    Every step is at least ``floor`` (in the metric's unit), so the axis always increases in
    "worse" and a case where nothing departs from the reference still ranks methods.
    """
    sign = -1.0 if higher_is_better else 1.0
    x0 = float(reference_value)

    def bad(v: float | None) -> float:
        return math.nan if v is None or not math.isfinite(v) else sign * (float(v) - x0)

    if fixed_steps is not None:
        b = [0.0, *[abs(float(s)) for s in fixed_steps]]
    else:
        b2, b4 = bad(anchor2), bad(anchor4)
        b2 = b2 if math.isfinite(b2) else 0.0
        b4 = b4 if math.isfinite(b4) else 0.0
        if b2 > 0 and b4 > b2:
            b = [0.0, b2 / 2, b2, (b2 + b4) / 2, b4]
        elif b2 > 0:
            b = [0.0, b2 / 2, b2, 1.5 * b2, 2 * b2]
        else:
            b = [0.0, b4 / 4, b4 / 2, 3 * b4 / 4, b4] if b4 > 0 else [0.0] * 5
    for k in range(1, 5):
        b[k] = max(b[k], b[k - 1] + floor)
    return [x0 + sign * v for v in b]


def score_value(value: float, knots: Sequence[float], higher_is_better: bool) -> float:
    """Score 0-4 of ``value`` on a case's axis: piecewise-linear between the knots, 0 at or
    beyond the reference's value, 4 at or beyond the last knot (the challenge's sentinels).
    NaN for a NaN value."""
    if value is None or not math.isfinite(value):
        return math.nan
    sign = -1.0 if higher_is_better else 1.0
    x0 = knots[0]
    b = [sign * (k - x0) for k in knots]
    return float(np.interp(sign * (float(value) - x0), b, [0.0, 1.0, 2.0, 3.0, 4.0]))


def subscores(scores: Mapping[str, float]) -> dict[str, float]:
    """The eight sub-scores from the per-raw-metric scores (metal and bone: the mean of their
    volume-change and Dice scores), then ``aapm_score``: their mean over the defined ones
    (NaN only if none is defined)."""
    out: dict[str, float] = {}
    for key, parts in SUBSCORES.items():
        vals = [scores[p] for p in parts if math.isfinite(scores.get(p, math.nan))]
        out[key] = float(np.mean(vals)) if vals else math.nan
    out["aapm_score"] = final_score([out[k] for k in SUBSCORES])
    return out


def final_score(sub: Sequence[float]) -> float:
    """Mean of the defined sub-scores (equal weights, as the challenge); NaN if none."""
    vals = [float(v) for v in sub if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan
