"""A row's HU scale against the ideal image's (:func:`hu_calibration`): the ideal background
is subtracted from each ROI on the row's own scale (docs/detect.md)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Body pixels at least this far from the metal fit a row's HU scale (:func:`hu_calibration`).
CALIBRATION_MIN_DISTANCE_MM = 30.0
#: Width of the ideal-HU bins of the calibration.
CALIBRATION_BIN_HU = 20.0
#: Pixels a calibration bin needs (fewer: the bin is interpolated from its neighbours).
CALIBRATION_MIN_PIXELS = 30


def hu_calibration(ideal_hu: np.ndarray, row_hu: np.ndarray,
                   bin_hu: float = CALIBRATION_BIN_HU, min_pixels: int = CALIBRATION_MIN_PIXELS
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """The HU a row shows for a given ideal HU: the median row HU of the pixels in each bin
    of ideal HU, interpolated linearly between bins (and shifted by the nearest bin's offset
    outside them).

    The ideal image is a monochromatic image at the GSI keV; the ordinary image and the
    methods that keep its look show tissues at the 120 kVp scale (fat darker, bone brighter).
    Subtracting the ideal background on the row's own scale keeps that difference, which is
    the same with and without a lesion, out of the observer's way. Medians ignore zero-mean
    noise.
    """
    x = np.asarray(ideal_hu, np.float64).ravel()
    y = np.asarray(row_hu, np.float64).ravel()
    if len(x) == 0:
        return lambda a: np.asarray(a, np.float64)
    idx = np.floor(x / bin_hu).astype(np.int64)
    order = np.argsort(idx, kind="stable")
    idx, xs, ys = idx[order], x[order], y[order]
    _, start, count = np.unique(idx, return_index=True, return_counts=True)
    cx, cy = [], []
    for s0, n in zip(start, count, strict=True):
        if n >= min_pixels:
            cx.append(float(np.median(xs[s0:s0 + n])))
            cy.append(float(np.median(ys[s0:s0 + n])))
    if not cx:
        off = float(np.median(y - x))
        return lambda a: np.asarray(a, np.float64) + off
    cx_a, cy_a = np.asarray(cx), np.asarray(cy)
    lo_off, hi_off = cy_a[0] - cx_a[0], cy_a[-1] - cx_a[-1]

    def f(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        out = np.interp(a, cx_a, cy_a)
        out = np.where(a < cx_a[0], a + lo_off, out)
        return np.where(a > cx_a[-1], a + hi_off, out)

    return f
