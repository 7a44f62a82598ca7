"""The regions of the ``aapm-ctmar-2024`` protocol, derived from the data of one case.

The challenge drew its structures by hand on each of its 29 cases (patient outline, noise ROI,
edge ROIs, streak ROI, metal region, proton target, beam angle). Here every structure is
derived from the reference image, the uncorrected image and the true metal mask, so any case
of any dataset can be scored, and the same pixels are used for every method:

- **body**: reference above -500 HU (or metal), the largest 8-connected part, holes filled;
- **metal**: the true metal mask; **metal_dilated**: it dilated twice with the 3x3 cross;
- **metal_region**: pixels within ``metal_region_mm`` of the metal (metal integrity is
  judged there), and the case's **metal threshold**: the highest reference value in that
  region outside the dilated metal, plus 250 HU;
- **noise_roi**: a disc of ``noise_roi_radius_mm`` in homogeneous soft tissue (Gaussian-
  smoothed reference in ``noise_tissue_hu``, away from metal, bone and the body's edge) where
  the uncorrected image departs least from the reference: the challenge's "homogeneous region
  least affected by the metal";
- **edge_bone**, **edge_fat**: the pixels next to both soft tissue and bone (resp. fat) of the
  smoothed reference, at least ``edge_metal_margin_mm`` from the metal and 2 pixels from air;
- **streak_roi**: of ``streak_sectors`` angular sectors of the annulus around the metal
  (body, outside the dilated metal, within ``streak_outer_mm``), the ``streak_sectors_kept``
  where the uncorrected image's streak amplitude is largest;
- **target**: a disc of ``target_radius_mm``, as close to the metal centre as it can be with
  ``target_margin_mm`` from the dilated metal and from the body's edge (a tumour next to the
  implant, as the challenge's cases place it), and **beams**: for each beam angle, the pixels
  its rays cross, from the image's edge to the target's distal edge.

All functions take 2-D arrays (HU or bool) of one grid and the pixel size in mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, signal

from ..metrics.clinical import largest_part_filled
from .aapm import AAPM_CTMAR_2024, AAPMProtocol, beam_frame

__all__ = [
    "STRUCTURE_NAMES", "CaseStructures", "beam_path", "body_outline", "derive_structures",
    "dilate_metal", "disc", "edge_rois", "metal_region", "metal_threshold_hu", "noise_roi",
    "proton_target", "streak_roi",
]

#: Structures in bit order of :meth:`CaseStructures.to_bits` (beams follow, one bit each).
STRUCTURE_NAMES: tuple[str, ...] = ("body", "metal", "metal_dilated", "metal_region",
                                    "noise_roi", "edge_bone", "edge_fat", "streak_roi",
                                    "target")


@dataclass
class CaseStructures:
    """Every region of one case, (H, W) bool each; ``beams`` is (n_beams, H, W)."""

    body: np.ndarray
    metal: np.ndarray
    metal_dilated: np.ndarray
    metal_region: np.ndarray
    noise_roi: np.ndarray
    edge_bone: np.ndarray
    edge_fat: np.ndarray
    streak_roi: np.ndarray
    target: np.ndarray
    beams: np.ndarray
    beam_angles_deg: tuple[float, ...] = ()
    metal_threshold_hu: float = math.nan
    pixel_mm: float = math.nan
    notes: list[str] = field(default_factory=list)

    def to_bits(self) -> np.ndarray:
        """(H, W) uint32: bit i set where structure i of :data:`STRUCTURE_NAMES` is, then one
        bit per beam (compact storage with the run)."""
        if len(STRUCTURE_NAMES) + len(self.beams) > 32:
            raise ValueError(f"{len(self.beams)} beams do not fit the 32-bit structure map")
        out = np.zeros(self.body.shape, np.uint32)
        for i, name in enumerate(STRUCTURE_NAMES):
            out |= getattr(self, name).astype(np.uint32) << np.uint32(i)
        for j, b in enumerate(self.beams):
            out |= b.astype(np.uint32) << np.uint32(len(STRUCTURE_NAMES) + j)
        return out

    @classmethod
    def from_bits(cls, bits: np.ndarray, n_beams: int, **meta) -> CaseStructures:
        """Inverse of :meth:`to_bits` (``meta``: the scalar fields)."""
        def bit(i: int) -> np.ndarray:
            return ((bits >> np.uint32(i)) & np.uint32(1)).astype(bool)

        masks = {name: bit(i) for i, name in enumerate(STRUCTURE_NAMES)}
        beams = np.stack([bit(len(STRUCTURE_NAMES) + j) for j in range(n_beams)]) if n_beams \
            else np.zeros((0, *bits.shape), bool)
        return cls(**masks, beams=beams, **meta)


# ----------------------------------------------------------------------------- helpers


def disc(shape: tuple[int, int], cy: float, cx: float, radius_px: float) -> np.ndarray:
    """(H, W) bool disc of ``radius_px`` around pixel (cy, cx)."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2


def _distance_mm(mask: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Distance in mm from each pixel to the nearest pixel of ``mask`` (inf if empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask) * pixel_mm


def _inside_mm(mask: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Distance in mm from each pixel of ``mask`` to the nearest pixel outside it, the image
    border counting as outside."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] * pixel_mm


def _smooth(reference_hu: np.ndarray, sigma_mm: float, pixel_mm: float) -> np.ndarray:
    return ndimage.gaussian_filter(reference_hu.astype(np.float64), sigma_mm / pixel_mm)


def _near(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel (8-neighbourhood) of ``mask``."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(ys.mean()), float(xs.mean())


def _first_min(score: np.ndarray, allowed: np.ndarray) -> tuple[int, int]:
    """(row, col) of the smallest ``score`` among ``allowed`` pixels (ties: the first in
    row-major order)."""
    s = np.where(allowed, score, np.inf)
    return tuple(int(v) for v in np.unravel_index(int(np.argmin(s)), s.shape))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- structures


def body_outline(reference_hu: np.ndarray, metal: np.ndarray,
                 threshold_hu: float = -500.0) -> np.ndarray:
    """The patient: reference above ``threshold_hu`` or metal, the largest 8-connected part
    (the table and anything apart drop out), holes filled."""
    return largest_part_filled((reference_hu > threshold_hu) | metal)


def dilate_metal(metal: np.ndarray, iterations: int = 2) -> np.ndarray:
    """The metal dilated ``iterations`` times with the 3x3 cross (scipy's default structure),
    as the challenge's ``binary_dilation(metal, iterations=2)``."""
    if iterations <= 0 or not metal.any():
        return metal.astype(bool)
    return ndimage.binary_dilation(metal, iterations=iterations)


def metal_region(metal: np.ndarray, pixel_mm: float, reach_mm: float) -> np.ndarray:
    """Pixels within ``reach_mm`` of the metal (the metal included)."""
    return _distance_mm(metal, pixel_mm) <= reach_mm


def metal_threshold_hu(reference_hu: np.ndarray, region: np.ndarray, dilated: np.ndarray,
                       body: np.ndarray, margin_hu: float) -> float:
    """The case's metal threshold: the highest reference value near the metal but outside the
    dilated metal (where the reference may hold the metal and its rim), plus ``margin_hu``.
    Without such pixels, the body outside the dilated metal is used; NaN without either."""
    ring = region & ~dilated & body
    if not ring.any():
        ring = body & ~dilated
    if not ring.any():
        return math.nan
    return float(reference_hu[ring].max()) + margin_hu


def noise_roi(reference_hu: np.ndarray, uncorrected_hu: np.ndarray | None, body: np.ndarray,
              metal: np.ndarray, pixel_mm: float,
              p: AAPMProtocol = AAPM_CTMAR_2024) -> np.ndarray:
    """The homogeneous soft-tissue disc least affected by the metal (empty if none fits).

    1. candidates: body pixels whose smoothed reference lies in ``noise_tissue_hu``, at
       least ``noise_metal_margin_mm`` from the metal, ``noise_bone_margin_mm`` from bone
       (smoothed reference >= 150 HU) and ``noise_edge_margin_mm`` from the body's edge;
    2. the disc (radius ``noise_roi_radius_mm``, at least ``noise_roi_min_radius_px``) must
       fit inside the candidates;
    3. among the discs that fit, the one where image - reference of the *uncorrected* image
       has the smallest variance (the farthest from the metal when no uncorrected image is
       given); ties go to the first centre in row-major order.
    """
    sm = _smooth(reference_hu, p.tissue_smoothing_mm, pixel_mm)
    lo, hi = p.noise_tissue_hu
    cand = body & (sm >= lo) & (sm <= hi)
    cand &= _distance_mm(metal, pixel_mm) >= p.noise_metal_margin_mm
    cand &= _distance_mm(body & (sm >= p.bone_hu[0]), pixel_mm) >= p.noise_bone_margin_mm
    cand &= _inside_mm(body, pixel_mm) >= p.noise_edge_margin_mm
    r_px = max(p.noise_roi_radius_mm / pixel_mm, p.noise_roi_min_radius_px)
    fits = cand & (_inside_mm(cand, pixel_mm) > r_px * pixel_mm)
    if not fits.any():
        return np.zeros_like(body)
    if uncorrected_hu is None:
        score = -_distance_mm(metal, pixel_mm)
    else:
        # Local variance of (uncorrected - reference) over the disc, by FFT convolution.
        k = int(math.ceil(r_px))
        kern = disc((2 * k + 1, 2 * k + 1), k, k, r_px).astype(np.float64)
        n = kern.sum()
        d = uncorrected_hu.astype(np.float64) - reference_hu.astype(np.float64)
        m1 = signal.fftconvolve(d, kern, mode="same") / n
        m2 = signal.fftconvolve(d * d, kern, mode="same") / n
        score = np.round(m2 - m1 * m1, 6)  # rounded: FFT noise must not break ties
    cy, cx = _first_min(score, fits)
    return disc(body.shape, cy, cx, r_px) & cand


def edge_rois(reference_hu: np.ndarray, body: np.ndarray, metal: np.ndarray, pixel_mm: float,
              p: AAPMProtocol = AAPM_CTMAR_2024) -> tuple[np.ndarray, np.ndarray]:
    """(soft tissue / bone edge, soft tissue / fat edge): pixels within one pixel of both
    classes of the smoothed reference, at least ``edge_metal_margin_mm`` from the metal and
    two pixels from air or the outside; an ROI with fewer than ``edge_min_pixels`` is empty."""
    sm = _smooth(reference_hu, p.tissue_smoothing_mm, pixel_mm)
    soft = (sm >= p.edge_soft_hu[0]) & (sm <= p.edge_soft_hu[1])
    fat = (sm >= p.edge_fat_hu[0]) & (sm <= p.edge_fat_hu[1])
    bone = sm >= p.edge_bone_hu
    outside = ~body | (sm < p.body_threshold_hu)
    ok = body & ~_near(_near(outside))
    ok &= _distance_mm(metal, pixel_mm) >= p.edge_metal_margin_mm
    rois = []
    for other in (bone, fat):
        roi = _near(other) & _near(soft) & ok
        rois.append(roi if roi.sum() >= p.edge_min_pixels else np.zeros_like(roi))
    return rois[0], rois[1]


def streak_roi(reference_hu: np.ndarray, uncorrected_hu: np.ndarray | None, body: np.ndarray,
               metal: np.ndarray, dilated: np.ndarray, pixel_mm: float,
               p: AAPMProtocol = AAPM_CTMAR_2024) -> np.ndarray:
    """ROI across the streaks: the annulus around the metal (body, outside the dilated metal,
    within ``streak_outer_mm`` of it) cut into ``streak_sectors`` angular sectors around the
    metal's centre; the ``streak_sectors_kept`` sectors (of at least ``streak_min_pixels``)
    where the uncorrected image's streak amplitude is largest. The whole annulus if no sector
    qualifies or no uncorrected image is given; empty without metal."""
    from .aapm import streak_amplitude

    if not metal.any():
        return np.zeros_like(body)
    annulus = body & ~dilated & (_distance_mm(metal, pixel_mm) <= p.streak_outer_mm)
    if uncorrected_hu is None:
        return annulus
    cy, cx = _centroid(metal)
    yy, xx = np.mgrid[: body.shape[0], : body.shape[1]]
    angle = np.arctan2(yy - cy, xx - cx)  # (-pi, pi]
    sector = np.floor((angle + np.pi) / (2 * np.pi / p.streak_sectors)).astype(int) \
        % p.streak_sectors
    found = []
    for s in range(p.streak_sectors):
        roi = annulus & (sector == s)
        if roi.sum() >= p.streak_min_pixels:
            amp = streak_amplitude(uncorrected_hu, reference_hu, roi, p.streak_tail_fraction)
            found.append((-amp, s, roi))  # largest amplitude first, then sector order
    if not found:
        return annulus if annulus.sum() >= p.streak_min_pixels else np.zeros_like(body)
    found.sort(key=lambda t: (t[0], t[1]))
    out = np.zeros_like(body)
    for _, _, roi in found[: p.streak_sectors_kept]:
        out |= roi
    return out


def proton_target(body: np.ndarray, metal: np.ndarray, dilated: np.ndarray, pixel_mm: float,
                  p: AAPMProtocol = AAPM_CTMAR_2024) -> np.ndarray:
    """The proton target: a disc of ``target_radius_mm`` (at least ``target_min_radius_px``),
    whose centre is the pixel nearest the metal's centre (the body's centre without metal)
    that keeps the disc ``target_margin_mm`` from the dilated metal and from the body's
    edge. Empty if the body has no such place."""
    r_px = max(p.target_radius_mm / pixel_mm, p.target_min_radius_px)
    need = r_px * pixel_mm + p.target_margin_mm
    cand = body & (_distance_mm(dilated, pixel_mm) >= need) & (_inside_mm(body, pixel_mm) >= need)
    if not cand.any():
        return np.zeros_like(body)
    cy, cx = _centroid(metal if metal.any() else body)
    yy, xx = np.mgrid[: body.shape[0], : body.shape[1]]
    ty, tx = _first_min((yy - cy) ** 2 + (xx - cx) ** 2, cand)
    return disc(body.shape, ty, tx, r_px)


def beam_path(target: np.ndarray, body: np.ndarray, angle_deg: float) -> np.ndarray:
    """(H, W) bool: the body pixels one beam's rays cross before the target's distal edge
    (what :func:`benchmark.protocol.aapm.beam_wet_mm` integrates), in the image's frame."""
    t = beam_frame(target.astype(np.float64), angle_deg, order=0) > 0.5
    b = beam_frame(body.astype(np.float64), angle_deg, order=0) > 0.5
    path = np.zeros_like(t)
    for r in np.flatnonzero(t.any(axis=1)):
        path[r, : int(np.flatnonzero(t[r])[-1])] = True
    path &= b
    q = angle_deg / 90.0
    if abs(q - round(q)) < 1e-9:
        return np.rot90(path, -(int(round(q)) % 4)).copy()
    return ndimage.rotate(path.astype(np.float64), -angle_deg, reshape=False, order=0) > 0.5


def derive_structures(reference_hu: np.ndarray, uncorrected_hu: np.ndarray | None,
                      metal_mask: np.ndarray, pixel_mm: float,
                      p: AAPMProtocol = AAPM_CTMAR_2024,
                      beam_angles_deg: Sequence[float] | None = None) -> CaseStructures:
    """Every structure of one case (see the module docstring).

    Args:
        reference_hu: (H, W) the reference (the image without metal, or the artifact-free
            ideal image), HU.
        uncorrected_hu: (H, W) the image with metal as acquired, HU (chooses the noise disc
            and the streak sectors; ``None``: the fallbacks described there).
        metal_mask: (H, W) bool, the true metal.
        pixel_mm: square pixel size in mm.
    """
    reference_hu = np.asarray(reference_hu, np.float64)
    metal = np.asarray(metal_mask, bool)
    if reference_hu.ndim != 2 or reference_hu.shape != metal.shape or (
            uncorrected_hu is not None and np.shape(uncorrected_hu) != metal.shape):
        raise ValueError(f"derive_structures: reference {reference_hu.shape}, metal "
                         f"{metal.shape} and uncorrected "
                         f"{None if uncorrected_hu is None else np.shape(uncorrected_hu)} "
                         "must be one 2-D grid")
    if not pixel_mm > 0:
        raise ValueError(f"derive_structures: pixel_mm must be > 0, got {pixel_mm}")
    unc = None if uncorrected_hu is None else np.asarray(uncorrected_hu, np.float64)
    angles = tuple(p.beam_angles_deg if beam_angles_deg is None else beam_angles_deg)
    body = body_outline(reference_hu, metal, p.body_threshold_hu)
    dilated = dilate_metal(metal, p.metal_dilation_iterations)
    region = metal_region(metal, pixel_mm, p.metal_region_mm) if metal.any() \
        else np.zeros_like(metal)
    notes = []
    e_bone, e_fat = edge_rois(reference_hu, body, metal, pixel_mm, p)
    target = proton_target(body, metal, dilated, pixel_mm, p)
    s = CaseStructures(
        body=body, metal=metal, metal_dilated=dilated, metal_region=region,
        noise_roi=noise_roi(reference_hu, unc, body, metal, pixel_mm, p),
        edge_bone=e_bone, edge_fat=e_fat,
        streak_roi=streak_roi(reference_hu, unc, body, metal, dilated, pixel_mm, p),
        target=target,
        beams=np.stack([beam_path(target, body, a) for a in angles]) if angles
        else np.zeros((0, *body.shape), bool),
        beam_angles_deg=angles,
        metal_threshold_hu=(metal_threshold_hu(reference_hu, region, dilated, body,
                                               p.metal_margin_hu) if metal.any() else math.nan),
        pixel_mm=float(pixel_mm), notes=notes)
    for name in ("noise_roi", "edge_bone", "edge_fat", "streak_roi", "target"):
        if not getattr(s, name).any():
            notes.append(f"no {name.replace('_', ' ')}")
    return s
