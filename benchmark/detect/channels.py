"""Channels of the channelized Hotelling observer: Laguerre-Gauss (rotationally symmetric, for
a rotationally symmetric signal at a known place) and Gabor (oriented frequency bands).

Each function returns ``(C, size, size)`` float64 channel profiles centred on the central
pixel of a ``size x size`` ROI (``size`` odd). Written here because no maintained package
provides them; the formulas are those of the CHO literature (Barrett & Myers, "Foundations of
Image Science", 2004, section 14.2; Gallas & Barrett, JOSA A 20, 2003).
"""

from __future__ import annotations

import math

import numpy as np


def _radius2(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if size < 3 or size % 2 == 0:
        raise ValueError(f"ROI size must be an odd number >= 3 of pixels, got {size}")
    c = size // 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - c
    return x, y, x * x + y * y


def laguerre_gauss(size: int, width_px: float, n_channels: int = 6) -> np.ndarray:
    """Laguerre-Gauss channels ``u_j(r) = sqrt(2)/a exp(-pi r^2/a^2) L_j(2 pi r^2/a^2)``,
    ``j = 0 .. n_channels-1``, with width ``a = width_px`` (pixels), shape ``(C, size, size)``.

    A Gaussian signal ``exp(-r^2 / (2 s^2))`` equals channel 0 up to a factor when
    ``a = s * sqrt(2 pi)``.
    """
    from scipy.special import eval_laguerre

    if not width_px > 0:
        raise ValueError(f"Laguerre-Gauss width must be > 0 px, got {width_px}")
    if n_channels < 1:
        raise ValueError(f"need at least 1 channel, got {n_channels}")
    _, _, r2 = _radius2(size)
    g = 2.0 * math.pi * r2 / width_px ** 2
    base = math.sqrt(2.0) / width_px * np.exp(-0.5 * g)
    return np.stack([base * eval_laguerre(j, g) for j in range(n_channels)])


def gabor(size: int, width_px: float, frequencies: tuple[float, ...] = (1 / 64, 1 / 32,
          1 / 16, 1 / 8), orientations: int = 4, phases: tuple[float, ...] = (0.0, math.pi / 2)
          ) -> np.ndarray:
    """Gabor channels ``exp(-4 ln2 r^2 / w^2) cos(2 pi f (x cos t + y sin t) + b)`` for every
    frequency ``f`` (cycles / pixel), orientation ``t = k pi / orientations`` and phase ``b``;
    ``w = width_px`` is the Gaussian's full width at half maximum. ``(C, size, size)``."""
    if not width_px > 0:
        raise ValueError(f"Gabor width must be > 0 px, got {width_px}")
    x, y, r2 = _radius2(size)
    env = np.exp(-4.0 * math.log(2.0) * r2 / width_px ** 2)
    out = []
    for f in frequencies:
        for k in range(orientations):
            t = k * math.pi / orientations
            arg = 2.0 * math.pi * f * (x * math.cos(t) + y * math.sin(t))
            for b in phases:
                out.append(env * np.cos(arg + b))
    return np.stack(out)


def make_channels(kind: str, size: int, width_px: float, n_channels: int = 6) -> np.ndarray:
    """``kind`` = ``"lg"`` (:func:`laguerre_gauss`) or ``"gabor"`` (:func:`gabor` at the
    default frequencies, its width ``2 * width_px``), ``(C, size, size)``."""
    if kind == "lg":
        return laguerre_gauss(size, width_px, n_channels)
    if kind == "gabor":
        return gabor(size, 2.0 * width_px)
    raise ValueError(f"channels must be 'lg' or 'gabor', got {kind!r}")


def channelize(rois: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """ROIs ``(N, size, size)`` -> channel outputs ``(N, C)``."""
    rois = np.asarray(rois, np.float64)
    if rois.ndim != 3 or rois.shape[1:] != channels.shape[1:]:
        raise ValueError(f"ROIs of shape {rois.shape} do not match channels "
                         f"{channels.shape[1:]}")
    return rois.reshape(len(rois), -1) @ channels.reshape(len(channels), -1).T
