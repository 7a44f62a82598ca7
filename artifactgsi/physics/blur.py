"""Focal-spot and detector-aperture blur by sub-sampling, averaged in intensity.

A detector channel integrates photons over its aperture, and photons leave the tube from a
focal spot of finite width; the scanner's resolution comes from both. A single ray through
the channel centre (the simulator without blur) misses both and, near metal, also misses the
non-linear partial-volume effect: the mean of ``exp(-p)`` over sub-rays is not ``exp`` of the
mean ``p`` (the exponential edge-gradient effect that makes dark streaks at metal edges).

Model. The object is projected onto a fine detector of ``k = detector_aperture_subsamples``
sub-channels per channel (sub-ray centres spread evenly over the channel pitch). A focal-spot
offset ``s`` across the fan sends the ray to a channel through the same object point at the
isocentre as a detector offset of ``-s (SDD - SID) / SID``: the focal spot of width ``w`` acts
as a box of width ``w (SDD - SID) / SID`` at the detector (exact at the isocentre, where the
validation measures it; behind and in front of the isocentre the true focal-spot blur is
larger and smaller, and averages to about this over a rotation). The reading of a channel is
then the photon count of its sub-rays weighted by the aperture response (the channel's box of
width ``pitch`` convolved with the focal-spot box), integrated over each sub-channel: an
intensity average, taken before noise and before the log (``physics.polychromatic.measure``'s
``aperture`` hook). At the isocentre this gives the modulation transfer function

    MTF(f) = |sinc(f pitch / M) sinc(f w (M - 1) / M)|,  M = SDD / SID,

(f in cycles/mm at the isocentre), which the tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .geometry import FanBeamGeometry


@dataclass(frozen=True)
class Blur:
    """Focal-spot and detector-aperture sub-sampling.

    Attributes:
        focal_spot_mm: focal-spot width across the fan, at the source (mm; 0 = a point).
        detector_aperture_subsamples: sub-rays per channel across its aperture (1 = one ray
            through the channel centre: no aperture blur).
    """

    focal_spot_mm: float = 0.0
    detector_aperture_subsamples: int = 1

    def __post_init__(self) -> None:
        if self.focal_spot_mm < 0:
            raise ValueError(f"focal_spot_mm must be >= 0, got {self.focal_spot_mm}")
        if self.detector_aperture_subsamples < 1:
            raise ValueError("detector_aperture_subsamples must be >= 1, got "
                             f"{self.detector_aperture_subsamples}")

    @property
    def active(self) -> bool:
        """Whether the blur changes anything (a point source and one ray per channel do not)."""
        return self.focal_spot_mm > 0 or self.detector_aperture_subsamples > 1

    def fine_geometry(self, geom: FanBeamGeometry) -> FanBeamGeometry:
        """The geometry of the sub-rays: ``k`` times the channels at ``1/k`` the pitch."""
        k = self.detector_aperture_subsamples
        return geom.with_(n_det=geom.n_det * k, det_pitch_mm=geom.det_pitch_mm / k)

    def focal_spot_at_detector_mm(self, geom: FanBeamGeometry) -> float:
        """Width of the focal spot's shadow at the detector through the isocentre, mm."""
        return self.focal_spot_mm * (geom.sdd_mm - geom.sid_mm) / geom.sid_mm

    def taps(self, geom: FanBeamGeometry) -> tuple[np.ndarray, int]:
        """Aperture weights on the fine detector: ``(w, first)``; channel ``i`` reads
        ``sum_j w[j] x[k i + first + j]`` (fine index). ``w`` sums to 1."""
        return _taps(self.detector_aperture_subsamples, geom.det_pitch_mm,
                     self.focal_spot_at_detector_mm(geom))

    def reduce(self, x: torch.Tensor, geom: FanBeamGeometry) -> torch.Tensor:
        """Fine-detector values ``(..., k D, C)`` (channels on the second-last axis, e.g.
        photon and energy fractions) -> channel readings ``(..., D, C)``: the weighted sum of
        :meth:`taps`. Linear, so it averages intensities when given intensities (the
        measurement) and line integrals when given line integrals (the ideal image)."""
        k = self.detector_aperture_subsamples
        w, first = self.taps(geom)
        kd = x.shape[-2]
        if kd != k * geom.n_det:
            raise ValueError(f"Blur.reduce: expected {k * geom.n_det} fine channels, got {kd}")
        base = torch.arange(geom.n_det, device=x.device) * k + first
        out = None
        for j, wj in enumerate(w):
            # Taps reaching past the detector's ends read the edge sub-channel (air there).
            term = x.index_select(-2, (base + j).clamp(0, kd - 1)) * float(wj)
            out = term if out is None else out.add_(term)
        return out

    def reduce_lines(self, p: torch.Tensor, geom: FanBeamGeometry) -> torch.Tensor:
        """Line integrals ``(..., k D)`` -> ``(..., D)`` averaged with the aperture weights
        (linear: the resolution of the scanner without the exponential edge effect)."""
        return self.reduce(p[..., None], geom)[..., 0]

    def mtf(self, f_per_mm: np.ndarray, geom: FanBeamGeometry) -> np.ndarray:
        """Analytic MTF of the continuous apertures at the isocentre (``f`` in cycles/mm):
        ``|sinc(f pitch / M) sinc(f w (M - 1) / M)|``."""
        m = geom.sdd_mm / geom.sid_mm
        a_iso = geom.det_pitch_mm / m
        w_iso = self.focal_spot_at_detector_mm(geom) / m
        return np.abs(np.sinc(f_per_mm * a_iso) * np.sinc(f_per_mm * w_iso))


@lru_cache(maxsize=64)
def _taps(k: int, pitch_mm: float, focal_mm: float) -> tuple[np.ndarray, int]:
    """Fine-cell integrals of box(pitch) * box(focal) (the aperture response of a channel)."""
    delta = pitch_mm / k
    # Dense, even samples of the two boxes; their sums sample the convolution exactly in the
    # limit (no closed-form CDF needed: 512 x 64 points resolve 1/100 of a fine cell).
    a = ((np.arange(512) + 0.5) / 512 - 0.5) * pitch_mm
    b = ((np.arange(64) + 0.5) / 64 - 0.5) * focal_mm if focal_mm > 0 else np.zeros(1)
    x = (a[:, None] + b[None, :]).ravel()
    # Fine cell j (relative to the channel's first sub-channel) spans
    # [-pitch/2 + j delta, -pitch/2 + (j + 1) delta).
    reach = math.ceil(focal_mm / 2 / delta + 1e-9)
    edges = -pitch_mm / 2 + np.arange(-reach, k + reach + 1) * delta
    hist, _ = np.histogram(x, bins=edges)
    w = hist / hist.sum()
    nz = np.flatnonzero(w > 0)
    w = w[nz[0]: nz[-1] + 1]
    return w.astype(np.float64), int(nz[0] - reach)
