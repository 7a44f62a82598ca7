"""One case under ``aapm-ctmar-2024``: its anchors (structures and 0-4 axes) and its scores.

The challenge fixes, for each of its cases, the value of each metric that earns each score.
This module builds that axis from the case itself (:func:`case_anchors`), as the challenge
describes its scores:

=========================== =================================================================
metric                      score 0 / 1 / 2 / 3 / 4 at
=========================== =================================================================
CT-number RMSE, streaks,    0: the reference itself; 2: the anchor method (NMAR); 4: the
SSIM, metal and bone        uncorrected image; 1 and 3 half-way (:func:`score_knots` for the
(volume change and Dice)    cases where NMAR or the uncorrected image is not worse)
noise SD                    the reference's noise times 1, 1.25, 1.5, 1.75, 2 ("a linear
                            increase from the ground-truth noise to about twice it")
sharpness                   1 (the reference), then the reference blurred by a Gaussian of
                            0.4 / 0.5 / 0.75 / 1.0 pixel
proton range shift          0, 0.5, 1, 1.5, 2 % of the longest beam range
=========================== =================================================================

Then :func:`score_case` measures any image and reads its scores off the axes. Everything here
is numpy; the runner makes the anchor method's image (:mod:`benchmark.protocol.aapm_run`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .aapm import (
    AAPM_CTMAR_2024,
    METRIC_KEYS,
    AAPMProtocol,
    bone_integrity,
    ct_rmse,
    masked_ssim,
    metal_integrity,
    noise_sd,
    proton_range_shift,
    score_knots,
    score_value,
    sharpness_ratio,
    streak_amplitude,
    subscores,
)
from .aapm_structures import CaseStructures, derive_structures

__all__ = ["IDEAL_VALUES", "CaseAnchors", "case_anchors", "raw_metrics", "score_case"]

#: The value each anchored metric takes for a perfect image (the reference itself; for the
#: metal, the true metal geometry).
IDEAL_VALUES: dict[str, float] = {
    "aapm_ct_rmse_hu": 0.0, "aapm_streak_hu": 0.0, "aapm_ssim": 1.0,
    "aapm_metal_volume_change": 0.0, "aapm_metal_dice": 1.0,
    "aapm_bone_volume_change": 0.0, "aapm_bone_dice": 1.0,
}


def raw_metrics(image_hu: np.ndarray, reference_hu: np.ndarray, s: CaseStructures,
                p: AAPMProtocol = AAPM_CTMAR_2024) -> dict[str, float]:
    """The ten raw values of :data:`benchmark.protocol.aapm.METRIC_KEYS` for one image.

    Args:
        image_hu: (H, W) the image scored, HU. reference_hu: (H, W) HU.
        s: the case's structures (:func:`derive_structures`).
    """
    img = np.asarray(image_hu, np.float64)
    ref = np.asarray(reference_hu, np.float64)
    if img.shape != ref.shape or img.shape != s.body.shape:
        raise ValueError(f"raw_metrics: image {img.shape}, reference {ref.shape} and "
                         f"structures {s.body.shape} must be one grid")
    tissue = s.body & ~s.metal_dilated
    bone_vol, bone_dice = bone_integrity(img, ref, tissue, p.bone_hu)
    if s.metal.any() and math.isfinite(s.metal_threshold_hu):
        metal_vol, metal_dice = metal_integrity(img, s.metal, s.metal_region,
                                                s.metal_threshold_hu)
    else:
        metal_vol = metal_dice = math.nan
    return {
        "aapm_ct_rmse_hu": ct_rmse(img, ref, tissue),
        "aapm_noise_sd_hu": noise_sd(img, s.noise_roi),
        "aapm_sharpness": sharpness_ratio(img, ref, (s.edge_bone, s.edge_fat),
                                          p.sobel_percentile),
        "aapm_streak_hu": (streak_amplitude(img, ref, s.streak_roi, p.streak_tail_fraction)
                           if s.streak_roi.any() else math.nan),
        "aapm_ssim": masked_ssim(img, ref, s.metal_dilated, tissue, sigma=p.ssim_sigma,
                                 data_range=p.ssim_data_range_hu,
                                 metal_fill_hu=p.ssim_metal_fill_hu),
        "aapm_metal_volume_change": metal_vol,
        "aapm_metal_dice": metal_dice,
        "aapm_bone_volume_change": bone_vol,
        "aapm_bone_dice": bone_dice,
        "aapm_range_shift_pct": proton_range_shift(img, ref, s.target, s.body,
                                                   s.metal_dilated, s.pixel_mm,
                                                   s.beam_angles_deg, p.hlut_hu, p.hlut_spr),
    }


@dataclass
class CaseAnchors:
    """What one case is scored against.

    Attributes:
        structures: the regions.
        knots: raw metric key -> the values of scores 0..4 (5 floats).
        anchor: raw values of the anchor method's image (NMAR); uncorrected: of the image
            with metal as acquired.
        noise_baseline_hu: the noise that scores 0; noise_baseline_from: which image it was
            measured on (``reference``, or ``uncorrected`` for a noise-free reference).
        sharpness_blurred: raw sharpness of the reference blurred by each calibration sigma.
    """

    structures: CaseStructures
    knots: dict[str, list[float]]
    anchor: dict[str, float]
    uncorrected: dict[str, float]
    noise_baseline_hu: float
    noise_baseline_from: str
    sharpness_blurred: list[float] = field(default_factory=list)

    def to_state(self) -> dict[str, np.ndarray]:
        """Named arrays (what :mod:`benchmark.refcache` stores exactly); inverse of
        :meth:`from_state`."""
        s = self.structures
        keys = list(METRIC_KEYS)
        return {
            "bits": s.to_bits(),
            "knots": np.array([self.knots[k] for k in keys], np.float64),
            "anchor": np.array([self.anchor[k] for k in keys], np.float64),
            "uncorrected": np.array([self.uncorrected[k] for k in keys], np.float64),
            "noise_baseline_hu": np.asarray(self.noise_baseline_hu, np.float64),
            "noise_from_uncorrected": np.asarray(self.noise_baseline_from == "uncorrected"),
            "sharpness_blurred": np.asarray(self.sharpness_blurred, np.float64),
            "metal_threshold_hu": np.asarray(s.metal_threshold_hu, np.float64),
            "pixel_mm": np.asarray(s.pixel_mm, np.float64),
            "beam_angles_deg": np.asarray(s.beam_angles_deg, np.float64),
            "notes": np.asarray(list(s.notes), dtype=str),
        }

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray]) -> CaseAnchors:
        keys = list(METRIC_KEYS)
        angles = tuple(float(a) for a in np.asarray(st["beam_angles_deg"]).reshape(-1))
        structures = CaseStructures.from_bits(
            np.asarray(st["bits"], np.uint32), len(angles), beam_angles_deg=angles,
            metal_threshold_hu=float(st["metal_threshold_hu"]), pixel_mm=float(st["pixel_mm"]),
            notes=[str(n) for n in np.asarray(st["notes"]).reshape(-1)])
        knots = np.asarray(st["knots"], np.float64)
        return cls(structures=structures,
                   knots={k: [float(v) for v in knots[i]] for i, k in enumerate(keys)},
                   anchor={k: float(v) for k, v in zip(keys, st["anchor"], strict=True)},
                   uncorrected={k: float(v) for k, v in zip(keys, st["uncorrected"],
                                                            strict=True)},
                   noise_baseline_hu=float(st["noise_baseline_hu"]),
                   noise_baseline_from=("uncorrected" if bool(st["noise_from_uncorrected"])
                                        else "reference"),
                   sharpness_blurred=[float(v) for v in np.asarray(st["sharpness_blurred"])])

    def to_json(self) -> dict[str, Any]:
        """Plain values (NaN as None) for the structures file."""
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return v if math.isfinite(v) else None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            return v
        s = self.structures
        return clean({"knots": self.knots, "anchor": self.anchor,
                      "uncorrected": self.uncorrected,
                      "noise_baseline_hu": self.noise_baseline_hu,
                      "noise_baseline_from": self.noise_baseline_from,
                      "sharpness_blurred": self.sharpness_blurred,
                      "metal_threshold_hu": s.metal_threshold_hu, "pixel_mm": s.pixel_mm,
                      "beam_angles_deg": list(s.beam_angles_deg), "notes": list(s.notes)})


def case_anchors(reference_hu: np.ndarray, uncorrected_hu: np.ndarray,
                 anchor_hu: np.ndarray, metal_mask: np.ndarray, pixel_mm: float,
                 p: AAPMProtocol = AAPM_CTMAR_2024, *,
                 noise_free_reference: bool = False) -> CaseAnchors:
    """Structures and 0-4 axes of one case.

    Args:
        reference_hu: (H, W) reference HU. uncorrected_hu: (H, W) the image with metal.
        anchor_hu: (H, W) the anchor method's (NMAR's) output for the case.
        metal_mask: (H, W) bool true metal. pixel_mm: pixel size in mm.
        noise_free_reference: the reference has no acquisition noise (a simulated ideal
            image); the noise that scores 0 is then the uncorrected image's in the noise ROI.
    """
    ref = np.asarray(reference_hu, np.float64)
    unc = np.asarray(uncorrected_hu, np.float64)
    s = derive_structures(ref, unc, metal_mask, pixel_mm, p)
    anchor = raw_metrics(anchor_hu, ref, s, p)
    uncorr = raw_metrics(unc, ref, s, p)
    knots: dict[str, list[float]] = {}
    for key, hib in METRIC_KEYS.items():
        if key in IDEAL_VALUES:
            knots[key] = score_knots(IDEAL_VALUES[key], anchor[key], uncorr[key],
                                     higher_is_better=hib, floor=p.floor(key))
    base_from = "uncorrected" if noise_free_reference else "reference"
    base = noise_sd(unc if noise_free_reference else ref, s.noise_roi)
    base_ok = base if math.isfinite(base) else 0.0
    knots["aapm_noise_sd_hu"] = score_knots(
        base_ok, None, None, higher_is_better=False, floor=p.floor("aapm_noise_sd_hu"),
        fixed_steps=[base_ok * f for f in p.noise_knots_fraction])
    blurred = [sharpness_ratio(ndimage.gaussian_filter(ref, sigma), ref,
                               (s.edge_bone, s.edge_fat), p.sobel_percentile)
               for sigma in p.sharpness_blur_px]
    knots["aapm_sharpness"] = score_knots(
        1.0, None, None, higher_is_better=True, floor=p.floor("aapm_sharpness"),
        fixed_steps=[1.0 - b if math.isfinite(b) else 0.0 for b in blurred])
    knots["aapm_range_shift_pct"] = score_knots(
        0.0, None, None, higher_is_better=False, floor=p.floor("aapm_range_shift_pct"),
        fixed_steps=list(p.range_shift_knots_pct))
    knots = {k: knots[k] for k in METRIC_KEYS}
    return CaseAnchors(structures=s, knots=knots, anchor=anchor, uncorrected=uncorr,
                       noise_baseline_hu=base, noise_baseline_from=base_from,
                       sharpness_blurred=blurred)


def score_case(image_hu: np.ndarray, reference_hu: np.ndarray, anchors: CaseAnchors,
               p: AAPMProtocol = AAPM_CTMAR_2024) -> dict[str, float]:
    """Raw values, per-metric scores and the sub-scores of one image.

    Returns:
        ``{raw key: value, ..., "aapm_score_ct": ..., ..., "aapm_score": final}``: the ten
        raw values, the eight sub-scores (0-4) and the final score (their mean).
    """
    raw = raw_metrics(image_hu, reference_hu, anchors.structures, p)
    per = {k: score_value(v, anchors.knots[k], METRIC_KEYS[k]) for k, v in raw.items()}
    return {**raw, **subscores(per)}
