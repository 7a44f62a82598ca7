"""Slice matching (Eq. 1) and affine registration (Eq. 2) against known transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from artifactgsi.physics.geometry import ImageGrid
from artifactgsi.register import (
    RegistrationConfig,
    RegistrationError,
    affine_params,
    affine_transform,
    apply_affine,
    grid_points,
    match_slices,
    monotone_assignment,
    ncc,
    register_series,
    register_slice,
    resample_to_grid,
)
from artifactgsi.synthetic_raw import render

GSI_GRID = ImageGrid((64, 64), 230.0 / 64, (4.0, -3.0))
ORD_GRID = ImageGrid((64, 64), 250.0 / 64, (-2.0, 1.0))
T = 3.0  # slice spacing, mm


def _pose_affine(angle_deg: float, tx: float, ty: float) -> np.ndarray:
    """The true transform GSI -> ordinary mm for an ordinary pose (R p + t)."""
    a = math.radians(angle_deg)
    return np.array([math.cos(a), -math.sin(a), tx, math.sin(a), math.cos(a), ty])


def _mean_error_px(params: np.ndarray, truth: np.ndarray, body: np.ndarray) -> float:
    pts = grid_points(GSI_GRID)[body.ravel()]
    d = np.linalg.norm(apply_affine(params, pts) - apply_affine(truth, pts), axis=1)
    return float(d.mean() / GSI_GRID.pixel_mm)


def _pair(pose, z_gsi, z_ord_anat, seed=0):
    rng = np.random.default_rng(seed)
    o, _ = render(ORD_GRID, z_ord_anat, True, 8000.0, pose, noise_sd=15.0, streak_hu=150.0,
                  rng=rng)
    g, _ = render(GSI_GRID, z_gsi, True, 3000.0, noise_sd=8.0, rng=rng)
    return np.rint(o).astype(np.int16), np.rint(g).astype(np.int16)


# --------------------------------------------------------------------------- building blocks
def test_ncc_matches_numpy_corrcoef_and_clips():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 200, (32, 32))
    b = 0.5 * a + rng.normal(0, 900, (32, 32))  # partly outside the clip window
    mask = rng.random((32, 32)) > 0.3
    ac, bc = np.clip(a, -1000, 1500), np.clip(b, -1000, 1500)
    assert ncc(a, b, mask) == pytest.approx(np.corrcoef(ac[mask], bc[mask])[0, 1], abs=1e-12)
    assert ncc(a, -a) == pytest.approx(-1.0)
    assert ncc(a, np.zeros_like(a)) == 0.0
    c = a.copy()
    c[0, 0] = 30000.0  # metal above the clip window changes nothing once clipped
    d = a.copy()
    d[0, 0] = 1500.0
    assert ncc(c, b) == pytest.approx(ncc(d, b))


def test_affine_parameters_agree_with_simpleitk():
    rng = np.random.default_rng(1)
    tr = sitk.AffineTransform(2)
    tr.SetMatrix(tuple(np.eye(2).ravel() + rng.normal(0, 0.05, 4)))
    tr.SetTranslation(tuple(rng.normal(0, 5, 2)))
    tr.SetCenter((12.0, -30.0))
    params = affine_params(tr)
    pts = rng.normal(0, 100, (20, 2))
    expected = np.array([tr.TransformPoint(tuple(p)) for p in pts])
    np.testing.assert_allclose(apply_affine(params, pts), expected, atol=1e-9)
    back = affine_transform(params)
    np.testing.assert_allclose([back.TransformPoint(tuple(p)) for p in pts], expected, atol=1e-9)


def test_resample_to_grid_reproduces_a_linear_ramp():
    """Linear interpolation is exact for a linear function of patient mm."""
    src = ImageGrid((40, 50), 2.0, (3.0, -4.0))
    dst = ImageGrid((30, 30), 1.7, (-1.0, 2.0))

    def ramp(g: ImageGrid) -> np.ndarray:
        y, x = np.meshgrid(g.y_mm().numpy(), g.x_mm().numpy(), indexing="ij")
        return 3.0 * x - 2.0 * y + 7.0

    out = resample_to_grid(ramp(src)[None], src, dst)[0]
    np.testing.assert_allclose(out, ramp(dst), atol=1e-3)
    shifted = resample_to_grid(ramp(src)[None], src, dst,
                               affines=np.array([[1, 0, 2.0, 0, 1, -1.0]]))[0]
    np.testing.assert_allclose(shifted, ramp(dst) + 3.0 * 2.0 + 2.0 * 1.0, atol=1e-3)


@pytest.mark.parametrize("scores,expected", [
    # per-row maxima already increasing: unchanged
    ([[0.9, 0.5, np.nan], [0.6, 0.95, 0.7], [np.nan, 0.5, 0.99]], [0, 1, 2]),
    # two rows claim the last column (the end of the overlap): the weaker one is skipped
    ([[0.99, 0.8, np.nan], [0.7, 0.97, 0.9], [np.nan, 0.9, 0.96], [np.nan, np.nan, 0.9]],
     [0, 1, 2, -1]),
    # a crossing: leaving one row out (0.02) is cheaper than moving a match off its
    # maximum (0.05); of the two rows, the one with the higher score is kept
    ([[0.90, 0.95, 0.5], [0.94, 0.6, 0.5], [0.3, 0.5, 0.97]], [1, -1, 2]),
    # no allowed column at all
    ([[np.nan, np.nan]], [-1]),
])
def test_monotone_assignment_hand_cases(scores, expected):
    out = monotone_assignment(np.array(scores, float), skip_penalty=0.02)
    assert out.tolist() == expected
    matched = out[out >= 0]
    assert np.all(np.diff(matched) > 0)


# --------------------------------------------------------------------------- registration
@pytest.mark.parametrize("pose", [(1.5, 3.0, -2.0), (-2.5, -6.0, 4.5), (0.0, 0.0, 0.0)])
def test_register_slice_recovers_a_known_rigid_motion(pose):
    o, g = _pair(pose, [0.0], [0.0])
    r = register_slice(o[0], ORD_GRID, g[0], GSI_GRID)
    err = _mean_error_px(r.affine, _pose_affine(*pose), g[0] > -500)
    assert err < 0.5, err
    assert r.ncc > 0.9 and r.ncc >= r.ncc_before - 1e-3


def test_registration_is_deterministic_whatever_the_thread_count():
    """Byte-identical resumed builds need bit-identical registrations, also when ITK's
    global thread count differs (worker processes run with 1)."""
    o, g = _pair((1.0, 2.0, -1.0), [3.0], [3.0])
    prev = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    results = []
    try:
        for threads in (1, 3, 1):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            results.append(register_slice(o[0], ORD_GRID, g[0], GSI_GRID))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(prev)
    for r in results[1:]:
        assert r.affine.tobytes() == results[0].affine.tobytes()
        assert r.image.tobytes() == results[0].image.tobytes()


# --------------------------------------------------------------------------- series
CASES = [  # pose, ordinary table shift (slices), patient motion along z (mm)
    ((1.5, 3.0, -2.0), 0, 0.6),
    ((-2.0, -4.0, 3.0), 1, -0.9),
    ((0.7, 5.0, 5.0), -1, 1.1),
    ((3.0, -6.0, -5.0), 0, -1.3),
]


def test_register_series_matches_slices_and_recovers_motion():
    n = 10
    z_g = -10.0 + T * np.arange(n)
    correct = total = 0
    errors = []
    for k, (pose, shift, motion) in enumerate(CASES):
        z_o = z_g + shift * T
        z_anat = z_o - motion
        o, g = _pair(pose, z_g, z_anat, seed=k)
        res = register_series(o, ORD_GRID, z_o, g, GSI_GRID, z_g)
        truth = [int(np.argmin(np.abs(z_g - z))) if np.abs(z_g - z).min() < T / 2 else -1
                 for z in z_anat]
        correct += int(np.sum(res.match.gsi_index == np.array(truth)))
        total += n
        assert sorted(res.unmatched_ordinary) == [i for i, t in enumerate(truth) if t < 0]
        for p in res.pairs:
            errors.append(_mean_error_px(p.affine, _pose_affine(*pose), g[p.gsi_index] > -500))
            assert p.ok, p.flags
            assert p.image.shape == GSI_GRID.shape
    assert correct / total > 0.98, (correct, total)
    assert np.mean(errors) < 0.5 and np.max(errors) < 1.0, errors


def test_matching_without_a_shared_frame_uses_content_only():
    """Different frames of reference: z positions are not comparable, the offset is found
    from the images (here the ordinary z are off by 1000 mm plus two slices)."""
    z_g = -10.0 + T * np.arange(8)
    z_anat = z_g + 2 * T
    o, g = _pair((1.0, 2.0, -2.0), z_g, z_anat)
    on_gsi = resample_to_grid(o, ORD_GRID, GSI_GRID,
                              affines=np.tile(_pose_affine(1.0, 2.0, -2.0), (8, 1)))
    m = match_slices(on_gsi, g, z_anat + 1000.0, z_g, same_frame=False)
    assert m.gsi_index.tolist() == [2, 3, 4, 5, 6, 7, -1, -1]


def test_too_little_overlap_is_a_named_error():
    z_g = -10.0 + T * np.arange(6)
    z_o = z_g + 5 * T  # one slice in common
    o, g = _pair((0.0, 0.0, 0.0), z_g, z_o)
    with pytest.raises(RegistrationError, match=r"patient X: only \d of 6 ordinary slices"):
        register_series(o, ORD_GRID, z_o, g, GSI_GRID, z_g, where="patient X")


def test_low_quality_slices_are_flagged_not_kept_silently():
    z = [0.0, 3.0, 6.0]
    o, g = _pair((1.0, 1.0, 1.0), z, z)
    g = g.copy()
    g[1] = g[1] + np.random.default_rng(5).normal(0, 3000, g[1].shape)  # ruined slice
    cfg = RegistrationConfig(min_overlap=0.3, window_slices=0)  # only the z-nearest slice
    res = register_series(o, ORD_GRID, np.array(z), g, GSI_GRID, np.array(z), cfg)
    flagged = {p.gsi_index: p.flags for p in res.pairs if not p.ok}
    assert list(flagged) == [1]
    assert any("registration_ncc" in f or "match_score" in f for f in flagged[1])


def test_an_unrelated_gsi_slice_is_left_unmatched():
    z = [0.0, 3.0, 6.0]
    o, g = _pair((1.0, 1.0, 1.0), z, z)
    g = g.copy()
    g[1] = np.random.default_rng(5).integers(-1000, 1500, g[1].shape)
    res = register_series(o, ORD_GRID, np.array(z), g, GSI_GRID, np.array(z),
                          RegistrationConfig(min_overlap=0.3))
    assert res.match.gsi_index.tolist() == [0, -1, 2] and res.unmatched_ordinary == [1]
