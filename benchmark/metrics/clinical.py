"""Clinical metrics after the AAPM CT-MAR Grand Challenge scoring program (pure functions).

The challenge scores a MAR image against a reference with hand-drawn, per-case ROIs
(``xcist/example``: ``AAPM_datachallenge/scoring/score.py`` and ``utils.py``). Here every ROI
is built automatically from the reference image and the metal mask, so any slice can be
scored; each builder's docstring says how. All images are 2-D float arrays in HU on one grid
(the scorer uses the protocol's 512 x 512 grid), ``pixel_spacing_mm`` is (row, col) in mm.

Regions shared by several metrics:

- body: reference > -500 HU, the largest 8-connected component, holes filled
  (:func:`body_mask`);
- dilated metal: the metal mask dilated twice with the 3x3 cross, as AAPM does
  (:func:`dilate_metal`); "outside the metal" always means outside this.

Undefined cases (no metal for a streak ROI, no soft tissue disc, no bone in the reference)
give NaN, which aggregation counts separately instead of averaging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from . import ssim as _ssim
from .protocol import MARBENCH_V1, Protocol
from .registry import MetricSpec, metrics_in_group
from .slices import map_slices

if TYPE_CHECKING:
    from .compute import ScoreView

CLINICAL_METRICS: dict[str, MetricSpec] = metrics_in_group("clinical")

Spacing = tuple[float, float]


def _spacing(pixel_spacing_mm: float | Spacing) -> Spacing:
    if isinstance(pixel_spacing_mm, tuple | list):
        return float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])
    return float(pixel_spacing_mm), float(pixel_spacing_mm)


def _distance_mm(mask: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Distance in mm from every pixel to the nearest pixel of ``mask`` (inf if it is empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=spacing)


# ----------------------------------------------------------------------------- regions


def largest_part_filled(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a (H, W) boolean mask, holes filled (the mask
    itself when it is empty)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def body_mask(reference_hu: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Body: reference > ``threshold_hu``, largest 8-connected component, holes filled."""
    return largest_part_filled(reference_hu > threshold_hu)


def dilate_metal(metal_mask: np.ndarray, iterations: int) -> np.ndarray:
    """Metal dilated ``iterations`` times with the 3x3 cross (scipy's default), as AAPM."""
    metal = metal_mask.astype(bool)
    if iterations <= 0 or not metal.any():
        return metal
    return ndimage.binary_dilation(metal, iterations=iterations)


def homogeneous_roi(reference_hu: np.ndarray, body: np.ndarray, metal_mask: np.ndarray,
                    pixel_spacing_mm: float | Spacing, *, radius_mm: float,
                    tissue_hu: tuple[float, float], smoothing_mm: float,
                    metal_margin_mm: float, bone_hu: float,
                    bone_margin_mm: float) -> np.ndarray | None:
    """The largest homogeneous soft-tissue disc, shrunk to ``radius_mm``; ``None`` if none fits.

    Construction (from the reference only, so every method is measured in the same pixels):

    1. smooth the reference with a Gaussian of ``smoothing_mm`` (only to classify tissue, so
       noise does not punch holes in the class);
    2. candidates: body pixels whose smoothed value lies in ``tissue_hu`` (soft tissue /
       water), at least ``metal_margin_mm`` from metal and ``bone_margin_mm`` from bone
       (smoothed reference >= ``bone_hu``);
    3. the centre is the candidate farthest from any non-candidate pixel (Euclidean distance
       in mm; ties go to the first in row-major order), i.e. the centre of the largest disc
       inside the candidates;
    4. the ROI is the disc of ``radius_mm`` around it, if that disc fits inside the candidates.
    """
    sp = _spacing(pixel_spacing_mm)
    smooth = ndimage.gaussian_filter(reference_hu.astype(np.float64),
                                     sigma=(smoothing_mm / sp[0], smoothing_mm / sp[1]))
    lo, hi = tissue_hu
    cand = body & (smooth >= lo) & (smooth <= hi)
    cand &= _distance_mm(metal_mask.astype(bool), sp) >= metal_margin_mm
    cand &= _distance_mm(body & (smooth >= bone_hu), sp) >= bone_margin_mm
    if not cand.any():
        return None
    # Pad so the image border counts as outside (the EDT ignores borders otherwise).
    inside = ndimage.distance_transform_edt(np.pad(cand, 1), sampling=sp)[1:-1, 1:-1]
    cy, cx = np.unravel_index(int(np.argmax(inside)), inside.shape)
    if inside[cy, cx] <= radius_mm:
        return None
    yy, xx = np.ogrid[: cand.shape[0], : cand.shape[1]]
    return ((yy - cy) * sp[0]) ** 2 + ((xx - cx) * sp[1]) ** 2 <= radius_mm**2


def streak_roi(metal_mask: np.ndarray, body: np.ndarray, dilated_metal: np.ndarray,
               pixel_spacing_mm: float | Spacing, *, inner_mm: float,
               outer_mm: float) -> np.ndarray:
    """Annulus across the streaks: body pixels outside the dilated metal whose distance to the
    nearest metal pixel is in (``inner_mm``, ``outer_mm``]. Empty when there is no metal."""
    d = _distance_mm(metal_mask.astype(bool), _spacing(pixel_spacing_mm))
    return body & ~dilated_metal & (d > inner_mm) & (d <= outer_mm)


# ----------------------------------------------------------------------------- metrics


def ct_number_errors(image_hu: np.ndarray, reference_hu: np.ndarray,
                     region: np.ndarray) -> tuple[float, float]:
    """(RMSE, MAE) in HU of image - reference over ``region``; NaN if it is empty."""
    if not region.any():
        return math.nan, math.nan
    return _errors(image_hu[region].astype(np.float64, copy=False) - reference_hu[region])


def _errors(d: np.ndarray) -> tuple[float, float]:
    """(RMSE, MAE) of the differences ``d`` (1-D float64; consumed); NaN if empty."""
    if d.size == 0:
        return math.nan, math.nan
    rmse = float(np.sqrt(np.mean(d * d)))
    return rmse, float(np.mean(np.abs(d, out=d)))


def noise_sd(image_hu: np.ndarray, roi: np.ndarray | None) -> float:
    """Population standard deviation (HU) of the image in ``roi``; NaN without an ROI."""
    if roi is None or not roi.any():
        return math.nan
    return float(np.std(image_hu[roi].astype(np.float64, copy=False)))


def streak_amplitude(image_hu: np.ndarray, reference_hu: np.ndarray, roi: np.ndarray,
                     tail_fraction: float = 0.05) -> float:
    """|mean of the highest - mean of the lowest ``tail_fraction``| of (image - reference) in
    ``roi``, in HU. Each tail holds ``int(n * tail_fraction)`` pixels (as AAPM); NaN if 0."""
    d = image_hu[roi].astype(np.float64, copy=False) - reference_hu[roi]
    k = int(d.size * tail_fraction)
    if k == 0:
        return math.nan
    # Only the tails need order: partitioned around them, each tail then sorted holds the
    # values of a full sort's tail in its order (so the means are those of a full sort, bit
    # for bit), in a fraction of the time.
    n = d.size
    if 2 * k <= n:
        d.partition((k - 1, n - k))
        low, high = np.sort(d[:k]), np.sort(d[n - k:])
    else:  # the tails overlap
        d.sort()
        low, high = d[:k], d[n - k:]
    return float(abs(high.mean() - low.mean()))


def _filled(image_hu: np.ndarray, dilated_metal: np.ndarray, fill_hu: float,
            out: np.ndarray | None = None) -> np.ndarray:
    """A float64 copy of the image (into ``out`` when given) with the dilated metal set to
    ``fill_hu``."""
    if out is None:
        out = np.array(image_hu, dtype=np.float64, copy=True)
    else:
        np.copyto(out, image_hu)
    out[dilated_metal] = fill_hu
    return out


Box = tuple[slice, slice]


def bounding_box(mask: np.ndarray) -> Box:
    """The rows and columns of a (H, W) boolean mask's bounding box (empty slices when the
    mask is empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))


def region_box(region: np.ndarray, sigma: float = 1.5) -> Box:
    """The rows and columns that a masked SSIM over ``region`` depends on: the region's
    bounding box grown by the Gaussian window's radius (within the image).

    SSIM at a pixel depends on the images within that radius, so filtering this crop gives
    the full-image values at every pixel of the region: where the crop ends inside the image
    the pixels it changes are outside the box, and where it ends at the image's edge the
    border is reflected exactly as for the whole image. The body rarely fills the field of
    view, so this is a fraction of the work."""
    r = _ssim.skimage_radius(sigma)
    rows, cols = bounding_box(region)
    if rows.start == rows.stop:
        return rows, cols
    h, w = region.shape
    return (slice(max(rows.start - r, 0), min(rows.stop + r, h)),
            slice(max(cols.start - r, 0), min(cols.stop + r, w)))


def masked_ssim_moments(image_hu: np.ndarray, dilated_metal: np.ndarray, box: Box, *,
                        metal_fill_hu: float = 100.0, sigma: float = 1.5) -> _ssim.Moments:
    """The SSIM moments of one image as the masked SSIM sees it (dilated metal set to
    ``metal_fill_hu``), within ``box`` (:func:`region_box`): what it needs from the image
    alone (:mod:`.ssim`)."""
    kernel = _ssim.gaussian_kernel(sigma, _ssim.skimage_radius(sigma))
    filled = _filled(image_hu[box], dilated_metal[box], metal_fill_hu)
    if filled.size == 0:  # an empty region: nothing to filter (its SSIM is NaN)
        return _ssim.Moments(image=filled, mean=filled, mean_sq=filled, var=filled)
    return _ssim.moments(filled, kernel)


def masked_ssim_from(image: _ssim.Moments, reference: _ssim.Moments, region: np.ndarray,
                     box: Box, *, data_range: float = 5000.0, sigma: float = 1.5) -> float:
    """:func:`masked_ssim` from the two images' :func:`masked_ssim_moments` within ``box``."""
    if not region.any():
        return math.nan
    kernel = _ssim.gaussian_kernel(sigma, _ssim.skimage_radius(sigma))
    return _ssim.ssim_pair(reference, image, kernel, data_range, region=region[box])


def masked_ssim(image_hu: np.ndarray, reference_hu: np.ndarray, dilated_metal: np.ndarray,
                region: np.ndarray, *, data_range: float = 5000.0,
                metal_fill_hu: float = 100.0, sigma: float = 1.5) -> float:
    """AAPM's masked SSIM: dilated metal set to ``metal_fill_hu`` in both images, then the
    skimage SSIM map (Gaussian ``sigma``, population covariance, ``data_range`` in HU)
    averaged over ``region``; NaN if it is empty. Equals skimage's to about 1e-15
    (:mod:`.ssim`; computed within :func:`region_box`)."""
    if not region.any():
        return math.nan
    box = region_box(region, sigma)
    kw = {"metal_fill_hu": metal_fill_hu, "sigma": sigma}
    return masked_ssim_from(masked_ssim_moments(image_hu, dilated_metal, box, **kw),
                            masked_ssim_moments(reference_hu, dilated_metal, box, **kw),
                            region, box, data_range=data_range, sigma=sigma)


def dice_and_volume_change(mask: np.ndarray, reference_mask: np.ndarray) -> tuple[float, float]:
    """(Dice, |area / reference area - 1|) of two boolean masks.

    Dice is NaN when both are empty; the volume change is NaN when the reference is empty.
    """
    # count_nonzero: the same integers as sum() on booleans, without widening each to int
    a = int(np.count_nonzero(mask))
    r = int(np.count_nonzero(reference_mask))
    inter = int(np.count_nonzero(np.logical_and(mask, reference_mask)))
    dice = 2.0 * inter / (a + r) if a + r else math.nan
    vol = abs(a / r - 1.0) if r else math.nan
    return dice, vol


def bone_integrity(image_hu: np.ndarray, reference_hu: np.ndarray, region: np.ndarray,
                   bone_hu: tuple[float, float]) -> tuple[float, float]:
    """(Dice, volume change) of bone = ``bone_hu[0] <= HU < bone_hu[1]`` within ``region``."""
    return _bone_of(image_hu[region], reference_hu[region], bone_hu)


def _bone_of(image_hu: np.ndarray, reference_hu: np.ndarray,
             bone_hu: tuple[float, float]) -> tuple[float, float]:
    """:func:`bone_integrity` of pixels already gathered from the region (1-D, HU): the
    same counts, without a pass over the whole grid."""
    lo, hi = bone_hu
    return dice_and_volume_change((image_hu >= lo) & (image_hu < hi),
                                  (reference_hu >= lo) & (reference_hu < hi))


def metal_integrity(image_hu: np.ndarray, reference_hu: np.ndarray, region: np.ndarray,
                    metal_hu: float) -> tuple[float, float]:
    """(Dice, volume change) of metal = HU > ``metal_hu`` within ``region``."""
    return dice_and_volume_change(image_hu[region] > metal_hu, reference_hu[region] > metal_hu)


@dataclass(frozen=True)
class ClinicalStructures:
    """The regions of one slice that every clinical metric uses, all built from the reference
    and the metal mask only (so they are computed once per reference and cached).

    Attributes (each (H, W) bool): ``body``; ``dilated`` metal; ``tissue`` = body outside the
    dilated metal; ``roi``: the homogeneous disc of the noise metric (``None`` if none fits);
    ``annulus``: the streak ROI.
    """

    body: np.ndarray
    dilated: np.ndarray
    tissue: np.ndarray
    roi: np.ndarray | None
    annulus: np.ndarray

    def to_state(self) -> dict[str, np.ndarray]:
        """The masks as (H, W) bool arrays (what :mod:`benchmark.refcache` stores; unpacked,
        so a cached state is read without decoding)."""
        state = {"body": self.body, "dilated": self.dilated, "tissue": self.tissue,
                 "annulus": self.annulus, "has_roi": np.asarray(self.roi is not None)}
        if self.roi is not None:
            state["roi"] = self.roi
        return state

    def extent(self) -> Box:
        """The bounding box of the body and the dilated metal: every region lies inside it
        (the tissue, the noise disc and the streak annulus are parts of the body), so the
        metrics computed on this crop equal those of the whole slice, value for value (the
        same pixels, gathered in the same order). The body rarely fills the field of view."""
        return bounding_box(self.body | self.dilated)

    def crop(self, box: Box) -> ClinicalStructures:
        """The structures within ``box`` (views)."""
        return ClinicalStructures(body=self.body[box], dilated=self.dilated[box],
                                  tissue=self.tissue[box],
                                  roi=None if self.roi is None else self.roi[box],
                                  annulus=self.annulus[box])

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ClinicalStructures:
        def mask(k: str) -> np.ndarray:
            return np.asarray(state[k], dtype=bool)

        return cls(body=mask("body"), dilated=mask("dilated"), tissue=mask("tissue"),
                   roi=mask("roi") if bool(state["has_roi"]) else None,
                   annulus=mask("annulus"))


def _as_slice(image_hu: np.ndarray, reference_hu: np.ndarray,
              metal_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image_hu = np.asarray(image_hu, dtype=np.float64)
    reference_hu = np.asarray(reference_hu, dtype=np.float64)
    metal = np.asarray(metal_mask, dtype=bool)
    if not image_hu.shape == reference_hu.shape == metal.shape or image_hu.ndim != 2:
        raise ValueError(f"clinical_metrics: image {image_hu.shape}, reference "
                         f"{reference_hu.shape} and metal mask {metal.shape} must be one 2-D "
                         "grid")
    return image_hu, reference_hu, metal


def clinical_structures(reference_hu: np.ndarray, metal_mask: np.ndarray,
                        pixel_spacing_mm: float | Spacing,
                        protocol: Protocol = MARBENCH_V1) -> ClinicalStructures:
    """The regions of :class:`ClinicalStructures` for one 2-D slice (HU, bool, mm)."""
    reference_hu = np.asarray(reference_hu, dtype=np.float64)
    metal = np.asarray(metal_mask, dtype=bool)
    sp = _spacing(pixel_spacing_mm)
    body = body_mask(reference_hu, protocol.body_threshold_hu)
    dilated = dilate_metal(metal, protocol.metal_dilation_iterations)
    roi = homogeneous_roi(reference_hu, body, dilated, sp, radius_mm=protocol.noise_roi_radius_mm,
                          tissue_hu=protocol.noise_tissue_hu,
                          smoothing_mm=protocol.noise_smoothing_mm,
                          metal_margin_mm=protocol.noise_metal_margin_mm,
                          bone_hu=protocol.bone_hu[0],
                          bone_margin_mm=protocol.noise_bone_margin_mm)
    annulus = streak_roi(metal, body, dilated, sp, inner_mm=protocol.streak_inner_mm,
                         outer_mm=protocol.streak_outer_mm)
    return ClinicalStructures(body=body, dilated=dilated, tissue=body & ~dilated, roi=roi,
                              annulus=annulus)


def clinical_scores(image_hu: np.ndarray, reference_hu: np.ndarray,
                    regions: ClinicalStructures, protocol: Protocol = MARBENCH_V1,
                    masked_ssim_value: float | None = None) -> dict[str, float]:
    """Every clinical metric of one slice, given its :class:`ClinicalStructures` and, when the
    caller computed it, the masked SSIM.

    The images and the structures may be cropped to :meth:`ClinicalStructures.extent` (the
    same values, in less time) when ``masked_ssim_value`` is given: the masked SSIM's
    Gaussian window reaches past the regions, so it needs the whole slice (or
    :func:`region_box`)."""
    image_hu = np.asarray(image_hu, dtype=np.float64)
    reference_hu = np.asarray(reference_hu, dtype=np.float64)
    tissue, dilated = regions.tissue, regions.dilated
    # The tissue's pixels gathered once, shared by ct_number_errors and bone_integrity (the
    # same values in the same order, so the same numbers)
    image_t, reference_t = image_hu[tissue], reference_hu[tissue]
    rmse, mae = _errors(image_t - reference_t)
    bone_dice, bone_vol = _bone_of(image_t, reference_t, protocol.bone_hu)
    metal_dice, metal_vol = metal_integrity(image_hu, reference_hu, dilated, protocol.metal_hu)
    return {
        "ct_rmse_hu": rmse,
        "ct_mae_hu": mae,
        "noise_sd_hu": noise_sd(image_hu, regions.roi),
        "streak_amplitude_hu": streak_amplitude(image_hu, reference_hu, regions.annulus,
                                                protocol.streak_tail_fraction),
        "masked_ssim": (
            masked_ssim(image_hu, reference_hu, dilated, tissue,
                        data_range=protocol.clinical_ssim_data_range_hu,
                        metal_fill_hu=protocol.clinical_ssim_metal_fill_hu,
                        sigma=protocol.ssim_sigma) if masked_ssim_value is None
            else masked_ssim_value),
        "bone_dice": bone_dice,
        "bone_volume_change": bone_vol,
        "metal_dice": metal_dice,
        "metal_volume_change": metal_vol,
    }


def clinical_metrics(image_hu: np.ndarray, reference_hu: np.ndarray, metal_mask: np.ndarray,
                     pixel_spacing_mm: float | Spacing,
                     protocol: Protocol = MARBENCH_V1) -> dict[str, float]:
    """Every metric of :data:`CLINICAL_METRICS` for one 2-D slice.

    Args:
        image_hu: (H, W) the image scored (a method's output), HU.
        reference_hu: (H, W) the reference (GSI or ideal), HU; all ROIs come from it.
        metal_mask: (H, W) bool, metal of the ordinary image.
        pixel_spacing_mm: pixel size in mm, one number or (row, col).
        protocol: thresholds and ROI sizes.
    """
    image_hu, reference_hu, metal = _as_slice(image_hu, reference_hu, metal_mask)
    regions = clinical_structures(reference_hu, metal, pixel_spacing_mm, protocol)
    return clinical_scores(image_hu, reference_hu, regions, protocol)


def _moments_within(outer: Box, m: _ssim.Moments, box: Box) -> _ssim.Moments | None:
    """The part of moments made within ``outer`` that covers ``box`` (views, no copy), or
    ``None`` when ``box`` is not inside ``outer``."""
    (r, c), (ro, co) = box, outer
    if not (ro.start <= r.start and r.stop <= ro.stop and co.start <= c.start
            and c.stop <= co.stop):
        return None
    sub = (slice(r.start - ro.start, r.stop - ro.start),
           slice(c.start - co.start, c.stop - co.start))
    return _ssim.Moments(image=m.image[sub], mean=m.mean[sub], mean_sq=m.mean_sq[sub],
                         var=m.var[sub])


def score_clinical(view: ScoreView) -> dict[str, np.ndarray]:
    """The clinical metrics' computation (registry ``compute``) on the evaluation grid.

    The regions and the reference's masked-SSIM moments are reference states (cached per
    dataset revision); the masked SSIM works within the box its region needs
    (:func:`region_box`)."""
    p = view.protocol
    pred = view.pred_eval_np
    ref = view.reference_eval_np
    fill = {"metal_fill_hu": p.clinical_ssim_metal_fill_hu, "sigma": p.ssim_sigma}

    def make(rows: list[int]) -> list[dict[str, np.ndarray]]:
        metal = view.metal_eval.cpu().numpy()
        return [clinical_structures(ref[i, 0], metal[i, 0], view.spacing_eval_mm(i),
                                    p).to_state() for i in rows]

    states = view.reference_state(f"clinical-regions:{p.eval_size}", make)
    regions = [ClinicalStructures.from_state(st) for st in states]
    boxes = [region_box(r.tissue, p.ssim_sigma) for r in regions]
    key = f"masked-ssim-moments:{p.eval_size}:{p.metal_dilation_iterations}:" \
          f"{p.clinical_ssim_metal_fill_hu}:{p.ssim_sigma}"

    def ref_moments(rows: list[int]) -> list[dict[str, np.ndarray]]:
        return [masked_ssim_moments(ref[i, 0], regions[i].dilated, boxes[i], **fill).to_state()
                for i in rows]

    ref_states = view.reference_state(key, ref_moments)
    # The scored image's moments, made within the first comparison's boxes and shared: a
    # later comparison whose box lies inside takes its part of them (the values within a box
    # do not depend on the crop they were filtered in), else makes its own.
    shared = view.scored_state(key, lambda: map_slices(
        lambda i: (boxes[i], masked_ssim_moments(pred[i, 0], regions[i].dilated, boxes[i],
                                                 **fill)), view.n))

    def one(i: int) -> dict[str, float]:
        box, dilated = boxes[i], regions[i].dilated
        pred_m = _moments_within(*shared[i], box)
        if pred_m is None:
            pred_m = masked_ssim_moments(pred[i, 0], dilated, box, **fill)
        filled = _filled(ref[i, 0][box], dilated[box], p.clinical_ssim_metal_fill_hu,
                         out=_ssim.scratch_array("filled", pred_m.image.shape))
        ref_m = _ssim.Moments.from_state(filled, ref_states[i], scratch=True)
        value = masked_ssim_from(pred_m, ref_m, regions[i].tissue, box,
                                 data_range=p.clinical_ssim_data_range_hu, sigma=p.ssim_sigma)
        crop = regions[i].extent()
        return clinical_scores(pred[i, 0][crop], ref[i, 0][crop], regions[i].crop(crop), p,
                               value)

    rows = map_slices(one, view.n)
    names = list(rows[0]) if rows else list(CLINICAL_METRICS)
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in names}
