"""Pairing an ordinary CT series with its GSI series: slice matching (paper Eq. 1) and in-plane
affine registration (paper Eq. 2).

Coordinates are DICOM patient coordinates in mm (``x`` patient left = image columns, ``y``
posterior = image rows, ``z`` superior), so two series reconstructed on different fields of
view and centres are first related by their DICOM geometry alone; registration then only has
to recover the patient's motion between the scans.

1. :func:`resample_to_grid` puts each ordinary slice on the GSI grid with the DICOM geometry
   (identity transform in patient coordinates).
2. :func:`match_slices` (Eq. 1): for each ordinary slice, the GSI slice of maximal normalised
   cross-correlation (NCC), searched in a window around the z-nearest GSI slice (after one
   z shift per series) and weighted by a small z prior when the two series share a frame of
   reference, and made strictly monotone in z by dynamic programming that changes as few
   per-slice maxima as possible (:func:`monotone_assignment`). :func:`register_series`
   matches twice: with the DICOM geometry, then after compensating the in-plane motion
   found on the best pair.
3. :func:`register_slice` (Eq. 2): a 2D affine transform found by SimpleITK (correlation
   metric, which suits two CT images of one patient on one HU scale; 3-level pyramid;
   regular-step gradient descent), with HU clipped to [-1000, 1500] and metal
   (> ``metal_hu``, dilated) masked out of the metric, so that metal and its blooming, which
   differ between the two scans, do not drive it. The transform maps GSI (fixed) points to
   ordinary (moving) points.

Quality is recorded per slice (``match_score``, the 6 affine parameters, ``registration_ncc``)
and slices under the thresholds of :class:`RegistrationConfig` are flagged, not kept silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ArtifactGSIError
from .physics.geometry import ImageGrid
from .schema import METAL_THRESHOLD_HU

#: HU window used by every similarity measure here: air to dense cortical bone. Metal
#: (thousands of HU) would otherwise dominate the correlation.
CLIP_HU = (-1000.0, 1500.0)


class RegistrationError(ArtifactGSIError, ValueError):
    """The two series cannot be paired (too little overlap, incompatible grids)."""


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of slice matching and registration (HU, mm, pixels as named).

    Attributes:
        metal_hu: pixels above this (in either image) are masked out of the metric; also the
            paper's Eq. 8 metal threshold used by the builder.
        metal_dilation_px: dilation of that mask, in pixels of the GSI grid.
        window_slices: slice matching searches this many GSI slices either side of the
            z-nearest one (when z positions are comparable).
        z_prior: NCC given up per GSI slice step of distance from the z-predicted slice
            (:func:`match_slices`).
        skip_penalty: cost of leaving an ordinary slice unmatched, in NCC units, against the
            loss of NCC from moving a match off its maximum (:func:`monotone_assignment`).
        min_overlap: fewest matched slices, as a fraction of the shorter series, before the
            pair of series is refused (:class:`RegistrationError`).
        min_match_score, min_ncc: slices whose Eq. 1 NCC or post-registration NCC fall below
            these are flagged.
        max_displacement_mm: slices whose registration moves some body pixel further than this
            are flagged (the search diverged).
        shrink_factors, smoothing_px: the multi-resolution pyramid.
        iterations: optimiser iterations per level.
        sampling: fraction of fixed pixels sampled by the metric at every level (``1.0``:
            all; ``None``: all up to 256 x 256 pixels, then a fixed-seed random 256 x 256
            worth, which keeps 512-pixel slices fast with the same accuracy).
        learning_rate, min_step: regular-step gradient descent (steps in mm of physical
            shift, :meth:`SetOptimizerScalesFromPhysicalShift`).
        threads: ITK threads per registration (1: results independent of the machine).
    """

    metal_hu: float = METAL_THRESHOLD_HU
    metal_dilation_px: int = 2
    window_slices: int = 1
    z_prior: float = 0.02
    skip_penalty: float = 0.02
    min_overlap: float = 0.5
    min_match_score: float = 0.5
    min_ncc: float = 0.6
    max_displacement_mm: float = 30.0
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_px: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 200
    sampling: float | None = None
    learning_rate: float = 1.0
    min_step: float = 1e-3
    threads: int = 1


# ---------------------------------------------------------------------------------------------
# Images and similarity
# ---------------------------------------------------------------------------------------------
def to_sitk(image: np.ndarray, grid: ImageGrid):
    """A 2D ``(H, W)`` array on ``grid`` as a float32 SimpleITK image in patient mm."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(image, np.float32))
    img.SetOrigin(tuple(float(v) for v in grid.origin_mm()))
    img.SetSpacing((float(grid.pixel_mm), float(grid.pixel_mm)))
    return img


def resample_to_grid(volume: np.ndarray, src: ImageGrid, dst: ImageGrid,
                     default_hu: float = -1024.0, affines: np.ndarray | None = None
                     ) -> np.ndarray:
    """Resample ``(S, H, W)`` slices from grid ``src`` onto ``dst`` (linear), float32.

    ``affines`` ``(S, 6)`` (see :func:`affine_params`) maps ``dst`` points to ``src`` points
    per slice; ``None`` means the identity (the DICOM geometry only). Pixels outside ``src``
    get ``default_hu`` (air).
    """
    import SimpleITK as sitk

    ref = to_sitk(np.zeros(dst.shape, np.float32), dst)
    out = np.empty((len(volume), *dst.shape), np.float32)
    for k, sl in enumerate(volume):
        tr = sitk.Transform(2, sitk.sitkIdentity) if affines is None else affine_transform(
            affines[k])
        res = sitk.Resample(to_sitk(sl, src), ref, tr, sitk.sitkLinear, float(default_hu),
                            sitk.sitkFloat32)
        out[k] = sitk.GetArrayFromImage(res)
    return out


def metal_free(image_hu: np.ndarray, metal_hu: float, dilation_px: int) -> np.ndarray:
    """Boolean mask of pixels away from metal (``> metal_hu``, dilated by ``dilation_px``)."""
    from scipy import ndimage

    metal = np.asarray(image_hu) > metal_hu
    if dilation_px > 0 and metal.any():
        metal = ndimage.binary_dilation(metal, iterations=dilation_px)
    return ~metal


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two images over ``mask`` (all pixels if ``None``).

    HU are clipped to :data:`CLIP_HU` first. Returns a value in [-1, 1]; 0 if either image
    is constant over the mask.
    """
    a = np.clip(np.asarray(a, np.float64), *CLIP_HU)
    b = np.clip(np.asarray(b, np.float64), *CLIP_HU)
    if mask is not None:
        a, b = a[mask], b[mask]
    else:
        a, b = a.ravel(), b.ravel()
    if a.size < 2:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Slice matching (Eq. 1)
# ---------------------------------------------------------------------------------------------
@dataclass
class SliceMatch:
    """Result of :func:`match_slices`.

    Attributes:
        gsi_index: ``(S_o,)`` int, the GSI slice matched to each ordinary slice, -1 if none.
        score: ``(S_o,)`` NCC of each match (NaN where unmatched): the Eq. 1 value.
        scores: ``(S_o, S_g)`` NCC of the pairs evaluated (NaN: not evaluated).
        z_offset_mm: the patient's estimated shift along z (GSI z - ordinary z), NaN if none.
    """

    gsi_index: np.ndarray
    score: np.ndarray
    scores: np.ndarray
    z_offset_mm: float = float("nan")

    @property
    def matched(self) -> np.ndarray:
        """Indices of the ordinary slices that have a match."""
        return np.flatnonzero(self.gsi_index >= 0)


def monotone_assignment(scores: np.ndarray, skip_penalty: float) -> np.ndarray:
    """Strictly increasing assignment of rows to columns that stays closest to per-row maxima.

    Minimises ``sum over matched rows of (max_j S[i, j] - S[i, j_i]) + skip_penalty * skipped
    - 1e-3 * sum of matched S`` subject to ``j_i`` strictly increasing over matched rows
    (NaN = not allowed). When the per-row maxima are already strictly increasing, they are
    returned unchanged; a conflict (two ordinary slices claiming one GSI slice at the end of
    the overlap) is resolved by leaving out the weaker match. The tiny last term breaks ties
    towards higher scores. O(S_o * S_g) dynamic programming.

    Returns:
        ``(S_o,)`` int column per row, -1 for skipped rows (and rows with no allowed column).
    """
    s = np.asarray(scores, np.float64)
    n, m = s.shape
    allowed = np.isfinite(s)
    s0 = np.where(allowed, s, 0.0)
    best = np.where(allowed, s, -np.inf).max(axis=1, initial=-np.inf)
    cost = np.where(allowed, best[:, None] - s0 - 1e-3 * s0, np.inf)
    # g[i, j]: least cost for rows < i using columns < j; move 0: column j-1 unused,
    # 1: row i-1 skipped, 2: row i-1 matched to column j-1.
    g = np.full((n + 1, m + 1), np.inf)
    move = np.zeros((n + 1, m + 1), np.int8)
    g[0, :] = 0.0
    for i in range(1, n + 1):
        g[i, 0] = g[i - 1, 0] + skip_penalty
        move[i, 0] = 1
        for j in range(1, m + 1):
            options = (g[i, j - 1], g[i - 1, j] + skip_penalty,
                       g[i - 1, j - 1] + cost[i - 1, j - 1])
            k = 2 if options[2] <= min(options[0], options[1]) else int(np.argmin(options[:2]))
            g[i, j] = options[k]
            move[i, j] = k
    out = np.full(n, -1, np.int64)
    i, j = n, m
    while i > 0:
        k = move[i, j]
        if k == 0:
            j -= 1
        else:
            if k == 2:
                out[i - 1] = j - 1
                j -= 1
            i -= 1
    return out


def _body(image_hu: np.ndarray) -> np.ndarray:
    return np.asarray(image_hu) > -500.0


def _step(z: np.ndarray) -> float:
    return float(np.median(np.abs(np.diff(z)))) if len(z) > 1 else 1.0


def _nearest(z_gsi: np.ndarray, z: float, step: float) -> int:
    """Index of the GSI slice nearest to ``z``, -1 if none is within half a slice step."""
    j = int(np.argmin(np.abs(z_gsi - z)))
    return j if abs(z_gsi[j] - z) <= 0.5 * step + 1e-6 else -1


def match_slices(ordinary_on_gsi: np.ndarray, gsi: np.ndarray, z_ord: np.ndarray,
                 z_gsi: np.ndarray, cfg: RegistrationConfig = RegistrationConfig(),
                 same_frame: bool = True) -> SliceMatch:
    """Paper Eq. 1 with a z prior and a monotone constraint: match each ordinary slice to a
    GSI slice.

    Eq. 1 alone (the GSI slice of maximal NCC) is ill-posed where anatomy barely changes along
    z (a femoral shaft: neighbouring slices differ by less than the noise and the artifacts),
    so the match maximises ``NCC(O_i, G_j) - z_prior * |z_j - z_i - dz| / step``:

    1. ``dz``, the patient's shift along z between the scans, is the offset that maximises the
       mean NCC over all slices paired by it, minus the same prior on ``|dz|``. It is searched
       over whole GSI slice steps within ``window_slices`` when both series share a frame of
       reference (``same_frame``: their z positions are comparable), else over every offset
       that pairs enough slices, without prior.
    2. Each ordinary slice whose shifted position lies inside the GSI series picks, among the
       GSI slices within ``window_slices`` of that position, the one of best prior-weighted
       NCC, and :func:`monotone_assignment` makes the picks strictly increasing.

    With ``z_prior = 0`` step 2 is exactly Eq. 1 in the window.

    Args:
        ordinary_on_gsi: ``(S_o, H, W)`` ordinary HU already on the GSI grid
            (:func:`resample_to_grid`), slices ascending in z.
        gsi: ``(S_g, H, W)`` GSI HU, ascending in z.
        z_ord, z_gsi: slice positions (mm), each series' own.

    NCC is taken over the body (either image > -500 HU) away from metal in either image.
    """
    o = np.asarray(ordinary_on_gsi, np.float32)
    g = np.asarray(gsi, np.float32)
    if o.shape[1:] != g.shape[1:]:
        raise RegistrationError(f"ordinary slices {o.shape[1:]} are not on the GSI grid "
                                f"{g.shape[1:]}; resample them first")
    z_o = np.asarray(z_ord, np.float64)
    z_g = np.asarray(z_gsi, np.float64)
    n_o, n_g = len(o), len(g)
    step = _step(z_g)
    free_o = [metal_free(x, cfg.metal_hu, cfg.metal_dilation_px) for x in o]
    free_g = [metal_free(x, cfg.metal_hu, cfg.metal_dilation_px) for x in g]
    body_o = [_body(x) for x in o]
    body_g = [_body(x) for x in g]
    scores = np.full((n_o, n_g), np.nan)

    def score(i: int, j: int) -> float:
        if np.isnan(scores[i, j]):
            mask = (body_o[i] | body_g[j]) & free_o[i] & free_g[j]
            scores[i, j] = ncc(o[i], g[j], mask)
        return float(scores[i, j])

    need = max(1, int(np.ceil(cfg.min_overlap * min(n_o, n_g))))
    if same_frame:
        offsets = [k * step for k in range(-cfg.window_slices, cfg.window_slices + 1)]
    else:
        offsets = sorted({round(float(d) / (step / 8)) * (step / 8)
                          for d in (z_g[None, :] - z_o[:, None]).ravel()})
    best_dz, best_value = None, -np.inf
    for dz in offsets:
        pairs = [(i, _nearest(z_g, z_o[i] + dz, step)) for i in range(n_o)]
        pairs = [(i, j) for i, j in pairs if j >= 0]
        if len(pairs) < need:
            continue
        value = float(np.mean([score(i, j) for i, j in pairs]))
        if same_frame:
            value -= cfg.z_prior * abs(dz) / step
        if value > best_value + 1e-12:
            best_dz, best_value = dz, value
    idx = np.full(n_o, -1, np.int64)
    if best_dz is not None:
        weighted = np.full((n_o, n_g), np.nan)
        for i in range(n_o):
            centre = _nearest(z_g, z_o[i] + best_dz, step)
            if centre < 0:
                continue
            for j in range(max(0, centre - cfg.window_slices),
                           min(n_g, centre + cfg.window_slices + 1)):
                off = abs(z_g[j] - z_o[i] - best_dz) / step
                weighted[i, j] = score(i, j) - cfg.z_prior * off
        idx = monotone_assignment(weighted, cfg.skip_penalty)
    match_score = np.array([scores[i, j] if j >= 0 else np.nan for i, j in enumerate(idx)])
    return SliceMatch(gsi_index=idx, score=match_score, scores=scores,
                      z_offset_mm=float(best_dz) if best_dz is not None else float("nan"))


# ---------------------------------------------------------------------------------------------
# In-plane registration (Eq. 2)
# ---------------------------------------------------------------------------------------------
def affine_params(transform) -> np.ndarray:
    """A SimpleITK 2D affine/Euler transform as 6 floats ``[a11, a12, b1, a21, a22, b2]``.

    Meaning: a GSI (fixed) point ``p = (x, y)`` mm is found in the ordinary (moving) series at
    ``A p + b`` (``A = [[a11, a12], [a21, a22]]``), in patient coordinates, centre removed.
    """
    import SimpleITK as sitk

    tr = sitk.AffineTransform(2)
    tr.SetMatrix(transform.GetMatrix())
    tr.SetTranslation(transform.GetTranslation())
    tr.SetCenter(transform.GetCenter())
    a = np.array(tr.GetMatrix(), np.float64).reshape(2, 2)
    c = np.array(tr.GetCenter(), np.float64)
    b = np.array(tr.GetTranslation(), np.float64) + c - a @ c
    return np.array([a[0, 0], a[0, 1], b[0], a[1, 0], a[1, 1], b[1]])


def affine_transform(params: np.ndarray):
    """Inverse of :func:`affine_params`: 6 floats -> ``sitk.AffineTransform`` (centre 0)."""
    import SimpleITK as sitk

    p = np.asarray(params, np.float64)
    tr = sitk.AffineTransform(2)
    tr.SetMatrix((p[0], p[1], p[3], p[4]))
    tr.SetTranslation((p[2], p[5]))
    return tr


def apply_affine(params: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` GSI points (mm) into ordinary coordinates with 6 affine parameters."""
    p = np.asarray(params, np.float64)
    a = np.array([[p[0], p[1]], [p[3], p[4]]])
    return np.asarray(points_mm, np.float64) @ a.T + np.array([p[2], p[5]])


def grid_points(grid: ImageGrid) -> np.ndarray:
    """``(H * W, 2)`` pixel centres ``(x, y)`` mm of a grid, row-major."""
    ys, xs = np.meshgrid(grid.y_mm().numpy(), grid.x_mm().numpy(), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@dataclass
class SliceRegistration:
    """Result of :func:`register_slice`.

    Attributes:
        affine: 6 parameters (:func:`affine_params`), GSI mm -> ordinary mm.
        image: ``(H, W)`` float32 ordinary HU resampled onto the GSI grid through ``affine``.
        ncc_before: NCC with the DICOM geometry only; ncc: after registration (both over the
            body away from metal, HU clipped to :data:`CLIP_HU`).
        max_displacement_mm: largest movement of a body pixel relative to the identity.
    """

    affine: np.ndarray
    image: np.ndarray
    ncc_before: float
    ncc: float
    max_displacement_mm: float


def register_slice(ordinary: np.ndarray, ordinary_grid: ImageGrid, gsi: np.ndarray,
                   gsi_grid: ImageGrid, cfg: RegistrationConfig = RegistrationConfig(),
                   initial: np.ndarray | None = None) -> SliceRegistration:
    """Affine registration of one ordinary slice (moving) onto its GSI slice (fixed), Eq. 2.

    Args:
        ordinary: ``(H_o, W_o)`` HU on its own grid; gsi: ``(H, W)`` HU on ``gsi_grid``.
        initial: 6 affine parameters to start from (:func:`affine_params`); default identity
            (the DICOM geometry).
    """
    import SimpleITK as sitk

    ordinary = np.asarray(ordinary, np.float32)
    gsi = np.asarray(gsi, np.float32)
    fixed = to_sitk(np.clip(gsi, *CLIP_HU), gsi_grid)
    moving = to_sitk(np.clip(ordinary, *CLIP_HU), ordinary_grid)
    fixed_mask = to_sitk(metal_free(gsi, cfg.metal_hu, cfg.metal_dilation_px).astype(np.float32),
                         gsi_grid)
    moving_mask = to_sitk(
        metal_free(ordinary, cfg.metal_hu, cfg.metal_dilation_px).astype(np.float32),
        ordinary_grid)

    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(cfg.threads)
    reg.SetMetricAsCorrelation()
    reg.SetMetricFixedMask(sitk.Cast(fixed_mask, sitk.sitkUInt8))
    reg.SetMetricMovingMask(sitk.Cast(moving_mask, sitk.sitkUInt8))
    sampling = cfg.sampling if cfg.sampling is not None else min(1.0, 256 * 256 / gsi.size)
    if sampling < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, 12345)  # fixed seed: reproducible
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=cfg.learning_rate, minStep=cfg.min_step, numberOfIterations=cfg.iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(cfg.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(cfg.smoothing_px))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    # Rotate about the GSI field's centre: shifts and rotations then decouple.
    c = np.array(gsi_grid.centre_mm, np.float64)
    p0 = np.array([1, 0, 0, 0, 1, 0], np.float64) if initial is None else np.asarray(initial)
    a0 = np.array([[p0[0], p0[1]], [p0[3], p0[4]]])
    init = sitk.AffineTransform(2)
    init.SetCenter(tuple(c))
    init.SetMatrix(tuple(a0.ravel()))
    # A p + b = A (p - c) + c + t  =>  t = b + A c - c
    init.SetTranslation(tuple(np.array([p0[2], p0[5]]) + a0 @ c - c))
    reg.SetInitialTransform(init, inPlace=True)
    # The pyramid's filters follow ITK's global thread count, and sums split over threads
    # change the last bits: fix it so results do not depend on the machine or on workers.
    prev_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(cfg.threads)
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as err:  # e.g. "All samples map outside moving image buffer"
        raise RegistrationError(f"SimpleITK registration failed: "
                                f"{str(err).strip().splitlines()[-1]}") from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(prev_threads)
    params = affine_params(init)  # optimised in place

    ref = to_sitk(np.zeros(gsi.shape, np.float32), gsi_grid)
    ord_sitk = to_sitk(ordinary, ordinary_grid)
    reg_img = sitk.GetArrayFromImage(sitk.Resample(ord_sitk, ref, affine_transform(params),
                                                   sitk.sitkLinear, -1024.0, sitk.sitkFloat32))
    geo_img = sitk.GetArrayFromImage(sitk.Resample(ord_sitk, ref, sitk.Transform(2,
                                                   sitk.sitkIdentity), sitk.sitkLinear,
                                                   -1024.0, sitk.sitkFloat32))
    free_g = metal_free(gsi, cfg.metal_hu, cfg.metal_dilation_px)
    body = _body(gsi)
    mask_after = (body | _body(reg_img)) & free_g & metal_free(reg_img, cfg.metal_hu,
                                                               cfg.metal_dilation_px)
    mask_before = (body | _body(geo_img)) & free_g & metal_free(geo_img, cfg.metal_hu,
                                                                cfg.metal_dilation_px)
    pts = grid_points(gsi_grid)[body.ravel()] if body.any() else grid_points(gsi_grid)
    disp = np.linalg.norm(apply_affine(params, pts) - pts, axis=1)
    return SliceRegistration(
        affine=params, image=reg_img, ncc_before=ncc(geo_img, gsi, mask_before),
        ncc=ncc(reg_img, gsi, mask_after), max_displacement_mm=float(disp.max()),
    )


# ---------------------------------------------------------------------------------------------
# Series
# ---------------------------------------------------------------------------------------------
@dataclass
class PairedSlice:
    """One registered pair (an ordinary slice on the GSI grid and its GSI slice)."""

    ordinary_index: int
    gsi_index: int
    match_score: float
    affine: np.ndarray
    ncc_before: float
    registration_ncc: float
    max_displacement_mm: float
    image: np.ndarray  # (H, W) float32 registered ordinary HU on the GSI grid
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.flags


@dataclass
class SeriesRegistration:
    """All pairs of one patient, in ascending GSI slice order, plus the unmatched slices."""

    pairs: list[PairedSlice]
    match: SliceMatch
    unmatched_ordinary: list[int]


def register_series(ordinary: np.ndarray, ordinary_grid: ImageGrid, z_ord: np.ndarray,
                    gsi: np.ndarray, gsi_grid: ImageGrid, z_gsi: np.ndarray,
                    cfg: RegistrationConfig = RegistrationConfig(), same_frame: bool = True,
                    where: str = "series") -> SeriesRegistration:
    """Match (Eq. 1) and register (Eq. 2) an ordinary series onto a GSI series.

    Two passes, because in-plane motion lowers the NCC that matching relies on: slices are
    matched with the DICOM geometry alone, the best-matching pair is registered, all ordinary
    slices are resampled through that motion and matched again, and every matched pair is
    registered starting from it.

    Args:
        ordinary: ``(S_o, H_o, W_o)`` HU on ``ordinary_grid``, ascending z.
        gsi: ``(S_g, H, W)`` HU on ``gsi_grid``, ascending z.
        z_ord, z_gsi: slice positions in mm.
        same_frame: the two series share a frame of reference (their z are comparable).
        where: names the patient in error messages.

    Raises:
        RegistrationError: fewer than ``cfg.min_overlap`` of the shorter series' slices match.
    """
    need = max(1, int(np.ceil(cfg.min_overlap * min(len(ordinary), len(gsi)))))

    def check(match: SliceMatch) -> None:
        if len(match.matched) < need:
            raise RegistrationError(
                f"{where}: only {len(match.matched)} of {len(ordinary)} ordinary slices match "
                f"one of the {len(gsi)} GSI slices (need {need}); the series do not overlap "
                "enough in z")

    match = match_slices(resample_to_grid(ordinary, ordinary_grid, gsi_grid), gsi, z_ord, z_gsi,
                         cfg, same_frame)
    check(match)
    ref = int(match.matched[np.nanargmax(match.score[match.matched])])
    motion = register_slice(ordinary[ref], ordinary_grid, gsi[match.gsi_index[ref]], gsi_grid,
                            cfg).affine
    on_gsi = resample_to_grid(ordinary, ordinary_grid, gsi_grid,
                              affines=np.tile(motion, (len(ordinary), 1)))
    match = match_slices(on_gsi, gsi, z_ord, z_gsi, cfg, same_frame)
    check(match)
    pairs = []
    for i in match.matched:
        j = int(match.gsi_index[i])
        r = register_slice(ordinary[i], ordinary_grid, gsi[j], gsi_grid, cfg, initial=motion)
        flags = []
        if not match.score[i] >= cfg.min_match_score:
            flags.append(f"match_score {match.score[i]:.3f} < {cfg.min_match_score}")
        if not r.ncc >= cfg.min_ncc:
            flags.append(f"registration_ncc {r.ncc:.3f} < {cfg.min_ncc}")
        if r.max_displacement_mm > cfg.max_displacement_mm:
            flags.append(f"displacement {r.max_displacement_mm:.1f} mm > "
                         f"{cfg.max_displacement_mm} mm")
        pairs.append(PairedSlice(
            ordinary_index=int(i), gsi_index=j, match_score=float(match.score[i]),
            affine=r.affine, ncc_before=r.ncc_before, registration_ncc=r.ncc,
            max_displacement_mm=r.max_displacement_mm, image=r.image, flags=flags))
    unmatched = [int(i) for i in np.flatnonzero(match.gsi_index < 0)]
    return SeriesRegistration(pairs=pairs, match=match, unmatched_ordinary=unmatched)
