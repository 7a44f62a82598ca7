"""Hallucination: lesion-like structures in a method's image that the truth does not have.

Two measures, both on the lesion-absent scans of a lesion study (docs/detect.md):

1. **False-positive fraction at the ideal operating point** (:func:`ideal_operating_point`,
   :func:`false_positive_fraction`): the method's own CHO (the observer of the detectability
   study, trained on the method's images) reads the method's lesion-absent ROIs; its threshold
   is set on the ideal images, midway between its responses to the ideal lesion-present and
   lesion-absent ROIs (it reports a lesion where it sees at least half of what the true lesion
   gives). The score is the fraction of the method's lesion-absent ROIs reported as lesions:
   0 for the ideal images; noise, streaks and painted blobs raise it.
2. **Band-pass difference map** (:func:`bandpass_lesion_hu`, :func:`hallucination_map`): the
   difference from the ideal image (on the image's HU scale), band-passed at the lesion scale
   by a difference of Gaussians scaled so that a disc lesion of contrast ``c`` reads ``c`` at
   its centre ("lesion-equivalent HU"). A pixel is flagged where the method's map reaches the
   threshold (the faintest lesion contrast of the study) but the uncorrected input's map does
   not: a lesion-sized structure the method added. The score is the flagged fraction of the
   body pixels in each distance band.

A method that returns its input unchanged flags nothing in (2) and scores exactly as the input
in (1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Difference-of-Gaussians widths relative to the lesion radius: centre and surround.
DOG_CENTRE = 0.5
DOG_SURROUND = 2.0


def dog_gain(radius: float, sigma_centre: float, sigma_surround: float) -> float:
    """Centre value of ``(G(sigma_c) - G(sigma_s)) * disc(radius)`` for a unit disc (closed
    form: the Gaussian mass inside a circle is ``1 - exp(-R^2 / 2 s^2)``)."""
    return math.exp(-radius ** 2 / (2 * sigma_surround ** 2)) - \
        math.exp(-radius ** 2 / (2 * sigma_centre ** 2))


def bandpass_lesion_hu(diff_hu: np.ndarray, radius_px: float) -> np.ndarray:
    """Band-pass ``(H, W)`` HU at the scale of a disc of ``radius_px`` pixels, in
    lesion-equivalent HU: a disc of contrast ``c`` and that radius reads ``c`` at its centre.
    """
    from scipy import ndimage

    sc, ss = DOG_CENTRE * radius_px, DOG_SURROUND * radius_px
    img = np.asarray(diff_hu, np.float64)
    dog = ndimage.gaussian_filter(img, sc, mode="nearest") - \
        ndimage.gaussian_filter(img, ss, mode="nearest")
    return dog / dog_gain(radius_px, sc, ss)


def hallucination_map(method_hu: np.ndarray, input_hu: np.ndarray, method_reference_hu:
                      np.ndarray, input_reference_hu: np.ndarray, exclude: np.ndarray,
                      radii_px: Sequence[float], threshold_hu: float) -> np.ndarray:
    """Flag lesion-scale structures of the method that the input does not have.

    Args:
        method_hu, input_hu: ``(H, W)`` HU of the method's output and of the uncorrected input
            (one lesion-absent slice).
        method_reference_hu, input_reference_hu: the ideal image on each one's HU scale
            (:func:`benchmark.detect.calibration.hu_calibration`; the ideal image itself for an
            image at the ideal keV).
        exclude: ``(H, W)`` bool, the metal and its rim: differences there are set to 0 before
            filtering (a method may legitimately change the metal's HU).
        radii_px: lesion radii of the study in pixels (the map is the largest response over
            them).
        threshold_hu: lesion-equivalent HU at which a structure counts as lesion-like.

    Returns:
        ``(H, W)`` bool map: ``|B(method - ref)| >= threshold`` and ``|B(input - ref)| <
        threshold``, ``B`` the band-pass of :func:`bandpass_lesion_hu`.
    """
    keep = ~np.asarray(exclude, bool)

    def response(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
        d = np.where(keep, np.asarray(img, np.float64) - ref, 0.0)
        return np.max([np.abs(bandpass_lesion_hu(d, r)) for r in radii_px], axis=0)

    return (response(method_hu, method_reference_hu) >= threshold_hu) & \
        (response(input_hu, input_reference_hu) < threshold_hu)


def ideal_operating_point(w: np.ndarray, ideal_present_mean: np.ndarray,
                          ideal_absent_mean: np.ndarray) -> float:
    """The observer's threshold set on the ideal images: midway between its mean responses to
    the ideal lesion-present and lesion-absent ROIs (``w . (mu_present + mu_absent) / 2``;
    the minimum-error criterion of two equal-variance classes with equal priors).

    A quantile of the ideal lesion-absent responses cannot serve: the ideal images are noise-
    and artifact-free, so with the background known every lesion-absent ROI reads the same.
    """
    w = np.asarray(w, np.float64)
    return float(w @ (0.5 * (np.asarray(ideal_present_mean, np.float64)
                             + np.asarray(ideal_absent_mean, np.float64))))


def false_positive_fraction(t_absent: np.ndarray, threshold: float) -> float:
    """Fraction of lesion-absent statistics strictly above ``threshold`` (NaN if none)."""
    t = np.asarray(t_absent, np.float64)
    t = t[np.isfinite(t)]
    if len(t) == 0 or not math.isfinite(threshold):
        return math.nan
    return float(np.mean(t > threshold))
