"""Protocol aapm-ctmar-2024: each metric against an independent computation on hand-made
cases, the structures, and the 0-4 mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from benchmark.protocol import UnknownProtocolError, get_protocol
from benchmark.protocol.aapm import (
    AAPM_CTMAR_2024,
    beam_frame,
    bone_integrity,
    ct_rmse,
    dice_volume_change,
    hlut_spr,
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
from benchmark.protocol.aapm_scoring import case_anchors, score_case
from benchmark.protocol.aapm_structures import (
    CaseStructures,
    body_outline,
    derive_structures,
    dilate_metal,
    metal_threshold_hu,
    noise_roi,
    streak_roi,
)

N = 128
PX = 1.5  # mm
YY, XX = np.mgrid[:N, :N]


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def phantom(seed: int = 0, noise_hu: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """(reference HU, metal mask): a body (fat ring -100 HU around 40 HU soft tissue) with
    two bones (900 HU), a gas pocket, a table below, and a metal rod next to one bone."""
    ref = np.full((N, N), -1000.0)
    ref[disc(64, 64, 58)] = -100.0
    ref[disc(64, 64, 50)] = 40.0
    ref[disc(64, 34, 11)] = 900.0
    ref[disc(64, 94, 11)] = 900.0
    ref[disc(38, 64, 4)] = -1000.0
    ref[124:127, 8:120] = 0.0
    ref += np.random.default_rng(seed).normal(0.0, noise_hu, ref.shape) * (ref > -900)
    return ref, disc(64, 80, 3)


def with_streaks(ref: np.ndarray, metal: np.ndarray, amp: float, seed: int = 1) -> np.ndarray:
    """The reference plus radial streaks around the metal (amplitude ``amp`` HU), extra
    noise, and the metal at 6000 HU."""
    cy, cx = (float(v.mean()) for v in np.nonzero(metal))
    ang = np.arctan2(YY - cy, XX - cx)
    r = np.hypot(YY - cy, XX - cx)
    img = ref + amp * np.cos(7 * ang) * np.exp(-r / 25.0)
    img += np.random.default_rng(seed).normal(0.0, 4.0, ref.shape)
    img[metal] = 6000.0
    return img


# ----------------------------------------------------------------------------- metrics


def test_ct_rmse_is_the_root_mean_square_over_the_region_only():
    ref, metal = phantom()
    region = body_outline(ref, metal) & ~dilate_metal(metal, 2)
    img = ref + 10.0
    img[dilate_metal(metal, 2)] += 5000.0  # the excluded metal does not count
    assert ct_rmse(img, ref, region) == pytest.approx(10.0, abs=1e-9)
    d = np.zeros_like(ref)
    d[region] = np.where(np.arange(region.sum()) % 2, 3.0, -4.0)
    want = math.sqrt((3.0**2 * (region.sum() // 2) + 4.0**2 * (region.sum() - region.sum() // 2))
                     / region.sum())
    assert ct_rmse(ref + d, ref, region) == pytest.approx(want, rel=1e-12)
    assert math.isnan(ct_rmse(img, ref, np.zeros_like(region)))


def test_noise_is_the_population_sd_in_the_roi():
    rng = np.random.default_rng(3)
    img = rng.normal(0, 10, (N, N))
    roi = disc(30, 30, 6)
    v = img[roi]
    assert noise_sd(img, roi) == pytest.approx(math.sqrt(((v - v.mean()) ** 2).mean()),
                                               rel=1e-12)


@pytest.mark.parametrize("where", ["corner", "edge", "centre", "two parts", "empty"])
def test_masked_ssim_within_its_box_equals_skimage_on_the_whole_image(where: str):
    """The masked SSIM filters only the region's box grown by the window's radius; the
    region's pixels must get the whole image's values, at the image's edges too."""
    from skimage.metrics import structural_similarity

    ref, metal = phantom()
    img = with_streaks(ref, metal, 300.0)
    dil = dilate_metal(metal, 2)
    region = np.zeros((N, N), bool)
    if where == "corner":
        region[:3, -4:] = True
    elif where == "edge":
        region[50:70, :2] = True
    elif where == "centre":
        region[60:66, 40:47] = True
    elif where == "two parts":
        region[5:9, 5:9] = region[100:104, 110:120] = True
    region &= ~dil
    got = masked_ssim(img, ref, dil, region)
    if where == "empty":
        assert math.isnan(got)
        return
    a, b = ref.copy(), img.copy()
    a[dil] = b[dil] = 100.0
    _, smap = structural_similarity(a, b, data_range=5000.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, full=True)
    assert got == pytest.approx(float(smap[region].mean()), abs=1e-12)


def test_masked_ssim_equals_skimage_with_the_same_mask_and_range_and_the_formula():
    from skimage.metrics import structural_similarity

    ref, metal = phantom()
    img = with_streaks(ref, metal, 200.0)
    dil = dilate_metal(metal, 2)
    region = body_outline(ref, metal) & ~dil
    got = masked_ssim(img, ref, dil, region)
    a, b = ref.copy(), img.copy()
    a[dil] = b[dil] = 100.0
    _, smap = structural_similarity(a, b, data_range=5000.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, full=True)
    assert got == pytest.approx(float(smap[region].mean()), abs=1e-12)
    # The SSIM formula by hand (Wang et al. 2004): Gaussian moments, K1 0.01, K2 0.03.
    g = lambda x: ndimage.gaussian_filter(x, 1.5, truncate=3.5)  # noqa: E731
    mu_a, mu_b = g(a), g(b)
    va, vb, cab = g(a * a) - mu_a**2, g(b * b) - mu_b**2, g(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 5000) ** 2, (0.03 * 5000) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    assert got == pytest.approx(float(s[region].mean()), abs=1e-9)
    assert masked_ssim(ref, ref, dil, region) == pytest.approx(1.0, abs=1e-12)
    assert got < 0.99


def test_streak_amplitude_by_hand():
    ref = np.zeros((10, 10))
    roi = np.zeros((10, 10), bool)
    roi[:, :] = True
    img = np.arange(100, dtype=float).reshape(10, 10)  # differences 0..99
    # 5 % of 100 pixels: the top five (95..99, mean 97) minus the bottom five (0..4, mean 2).
    assert streak_amplitude(img, ref, roi) == pytest.approx(95.0)
    # 39 pixels: int(39 * 0.05) = 1 pixel per tail -> max - min.
    roi2 = np.zeros((10, 10), bool)
    roi2.flat[:39] = True
    assert streak_amplitude(img, ref, roi2) == pytest.approx(38.0)
    # 19 pixels: no whole pixel in a tail -> undefined.
    roi3 = np.zeros((10, 10), bool)
    roi3.flat[:19] = True
    assert math.isnan(streak_amplitude(img, ref, roi3))
    # A symmetric streak pattern +/-a gives 2a.
    rng = np.random.default_rng(0)
    signs = np.where(rng.random((10, 10)) < 0.5, 1.0, -1.0)
    signs.flat[:5], signs.flat[5:10] = 1.0, -1.0
    assert streak_amplitude(30 * signs, ref, roi) == pytest.approx(60.0)


def test_dice_and_volume_change_by_hand():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True  # 20 px
    b[2:6, 0:5] = True  # 20 px, 10 shared
    vol, dice = dice_volume_change(a, b)
    assert (vol, dice) == (pytest.approx(0.0), pytest.approx(0.5))
    b[6:8, 0:5] = True  # reference 30 px
    vol, dice = dice_volume_change(a, b)
    assert vol == pytest.approx(1 / 3) and dice == pytest.approx(2 * 10 / 50)
    assert math.isnan(dice_volume_change(a, np.zeros_like(a))[0])


def test_bone_band_and_metal_threshold_by_hand():
    ref = np.array([[100.0, 150.0, 2499.0, 2500.0]])
    img = np.array([[149.0, 150.0, 400.0, 3000.0]])
    region = np.ones_like(ref, bool)
    # bone = 150 <= HU < 2500: reference {1, 2}, image {1, 2}.
    assert bone_integrity(img, ref, region) == (pytest.approx(0.0), pytest.approx(1.0))
    metal = np.array([[False, False, False, True]])
    vol, dice = metal_integrity(img, metal, region, threshold_hu=500.0)
    assert (vol, dice) == (pytest.approx(0.0), pytest.approx(1.0))
    vol, dice = metal_integrity(img, metal, region, threshold_hu=300.0)  # 400 HU too
    assert vol == pytest.approx(1.0) and dice == pytest.approx(2 / 3)


def test_hlut_matches_the_clinical_curve_and_is_zero_outside():
    hu = np.array([-2000.0, -1000.0, -200.0, 0.0, 70.0, 3000.0, 1e6 + 1])
    want = [0.0, 0.0, 0.788, 1.003 + 20 / 70 * 0.035, 1.038 + 20 / 50 * 0.046, 3.2, 0.0]
    np.testing.assert_allclose(hlut_spr(hu), want, atol=1e-12)


def test_proton_range_shift_by_hand():
    """A water-like body at 0 HU with a target: a +70 HU strip crossed by every ray of the
    0-degree beam (from the left) lengthens each ray's WET by strip * (SPR(70) - SPR(0))."""
    n, px = 40, 2.0
    ref = np.zeros((n, n))
    body = np.ones((n, n), bool)
    target = np.zeros((n, n), bool)
    target[18:22, 25:29] = True
    img = ref.copy()
    img[:, 10:13] = 70.0  # 3 columns, every row
    spr0, spr70 = 1.003 + 20 / 70 * 0.035, 1.038 + 20 / 50 * 0.046
    wet_ref = px * spr0 * 28  # distal pixel 28 excluded: columns 0..27
    shift = px * 3 * (spr70 - spr0) / wet_ref
    got = proton_range_shift(img, ref, target, body, np.zeros_like(body), px, (0.0,))
    assert got == pytest.approx(100 * shift, rel=1e-9)
    # The 180-degree beam (from the right) crosses columns 39..29 only: no shift.
    assert proton_range_shift(img, ref, target, body, np.zeros_like(body), px,
                              (180.0,)) == pytest.approx(0.0, abs=1e-12)
    # The score is the largest over the beams.
    assert proton_range_shift(img, ref, target, body, np.zeros_like(body), px,
                              (0.0, 180.0)) == pytest.approx(100 * shift, rel=1e-9)


def test_beam_frames_agree_between_rot90_and_rotate():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(size=(33, 33)), 3)
    for angle in (90.0, 180.0, 270.0):
        exact = beam_frame(a, angle, order=1)
        interp = ndimage.rotate(a, angle, reshape=False, order=1)
        np.testing.assert_allclose(exact, interp, atol=1e-9)
    # 90 degrees: the beam enters from the top row (row 0 becomes column 0).
    assert np.array_equal(beam_frame(a, 90.0, 1)[:, 0], a[0, ::-1])


# ----------------------------------------------------------------------------- sharpness


def _sampled_blur(img: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """A Gaussian blur by hand: the sampled, normalised kernel exp(-x^2 / 2 sigma^2) over
    +/- ``radius`` pixels, applied along rows then columns with mirrored edges (numpy only,
    independent of the scipy filter the protocol uses)."""
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        p = np.pad(out, pad, mode="symmetric")
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, p)
    return out


def _fourier_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """A continuous Gaussian blur done in the frequency domain (periodic)."""
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.rfftfreq(img.shape[1])[None, :]
    h = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(img) * h, s=img.shape)


@pytest.mark.parametrize("sigma,score", [(0.4, 1.0), (0.5, 2.0), (0.75, 3.0), (1.0, 4.0)])
def test_a_blurred_reference_scores_as_the_calibration_says(sigma, score):
    ref, metal = phantom(noise_hu=0.0)
    a = case_anchors(ref, with_streaks(ref, metal, 150.0), with_streaks(ref, metal, 50.0),
                     metal, PX)
    assert a.structures.edge_bone.any() and a.structures.edge_fat.any()
    # Sigma is that of the sampled kernel (as scipy's and skimage's Gaussian filters, which
    # the challenge's Python used); a wider support changes nothing that matters.
    for radius in (int(4 * sigma + 0.5), 6):
        got = score_case(_sampled_blur(ref, sigma, radius), ref, a)["aapm_score_sharpness"]
        assert got == pytest.approx(score, abs=0.1)
    # The reference itself, and anything sharper, scores 0.
    assert score_case(ref, ref, a)["aapm_score_sharpness"] == 0.0


def test_sharpness_ratio_is_one_for_the_reference_and_falls_with_blur():
    ref, metal = phantom(noise_hu=0.0)
    s = derive_structures(ref, None, metal, PX)
    rois = (s.edge_bone, s.edge_fat)
    assert sharpness_ratio(ref, ref, rois) == pytest.approx(1.0)
    r = [sharpness_ratio(_fourier_blur(ref, sg), ref, rois) for sg in (0.4, 0.75, 1.5)]
    assert 1.0 > r[0] > r[1] > r[2] > 0.3


# ----------------------------------------------------------------------------- structures


def test_body_outline_drops_the_table_and_fills_gas():
    ref, metal = phantom(noise_hu=0.0)
    body = body_outline(ref, metal)
    assert np.array_equal(body, disc(64, 64, 58))


def test_metal_dilated_twice_with_the_cross_and_the_threshold():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    assert dilate_metal(m, 2).sum() == 13  # the diamond of radius 2
    ref, metal = phantom(noise_hu=0.0)
    s = derive_structures(ref, None, metal, PX)
    ring = s.metal_region & ~s.metal_dilated & s.body
    assert s.metal_threshold_hu == pytest.approx(ref[ring].max() + 250.0)
    assert s.metal_threshold_hu == pytest.approx(900.0 + 250.0)  # the nearby bone
    assert metal_threshold_hu(ref, np.zeros_like(metal), s.metal_dilated, s.body,
                              250.0) == pytest.approx(ref[s.body & ~s.metal_dilated].max()
                                                      + 250.0)


def test_noise_roi_is_homogeneous_tissue_where_the_metal_disturbs_least():
    ref, metal = phantom()
    body = body_outline(ref, metal)
    unc = with_streaks(ref, metal, 300.0)
    unc[:, :64] += np.random.default_rng(5).normal(0, 60, (N, 64))  # left half: very noisy
    roi = noise_roi(ref, unc, body, metal, PX)
    assert roi.sum() == disc(64, 64, 10 / PX).sum()  # a whole disc of 10 mm
    ys, xs = np.nonzero(roi)
    assert xs.min() >= 64  # the quiet half
    d_metal = ndimage.distance_transform_edt(~metal) * PX
    assert d_metal[roi].min() >= AAPM_CTMAR_2024.noise_metal_margin_mm
    assert np.all((ref[roi] > -60) & (ref[roi] < 140))  # soft tissue only


def test_streak_roi_keeps_the_sectors_with_the_strongest_streaks():
    ref, metal = phantom(noise_hu=2.0)
    body = body_outline(ref, metal)
    dil = dilate_metal(metal, 2)
    unc = ref.copy()
    band = (np.abs(YY - 64) <= 3) & (XX > 80)  # a streak to the right of the metal only
    unc[band] += 400.0 * np.sign(np.sin(XX[band]))
    roi = streak_roi(ref, unc, body, metal, dil, PX)
    assert roi.any() and (roi & band).any()
    assert not (roi & dil).any() and not (roi & ~body).any()
    ys, xs = np.nonzero(roi)
    assert xs.mean() > 80  # the kept sectors face the streak


def test_structures_round_trip_through_the_bit_map():
    ref, metal = phantom()
    s = derive_structures(ref, with_streaks(ref, metal, 200.0), metal, PX)
    back = CaseStructures.from_bits(s.to_bits(), len(s.beams))
    for name in ("body", "metal", "metal_dilated", "metal_region", "noise_roi", "edge_bone",
                 "edge_fat", "streak_roi", "target"):
        assert np.array_equal(getattr(back, name), getattr(s, name)), name
    assert np.array_equal(back.beams, s.beams)
    assert s.target.any() and not (s.target & s.metal_dilated).any()
    assert all(b.any() for b in s.beams)


# ----------------------------------------------------------------------------- mapping


def test_the_challenges_axis_is_reproduced():
    # Case 01's CT-number axis: 0 / 15 / 30 / 45 / 60 HU -> 0..4, beyond: 4.
    knots = score_knots(0.0, 30.0, 60.0, higher_is_better=False, floor=1.0)
    assert knots == [0.0, 15.0, 30.0, 45.0, 60.0]
    assert score_value(22.5, knots, False) == pytest.approx(1.5)
    assert score_value(1e5, knots, False) == 4.0
    # SSIM 1 / .99 / .98 / .97 / .96 (higher is better; above 1 scores 0).
    knots = score_knots(1.0, 0.98, 0.96, higher_is_better=True, floor=0.001)
    np.testing.assert_allclose(knots, [1.0, 0.99, 0.98, 0.97, 0.96])
    assert score_value(0.975, knots, True) == pytest.approx(2.5)
    assert score_value(1.2, knots, True) == 0.0
    assert math.isnan(score_value(math.nan, knots, True))


def test_axis_fallbacks_keep_it_increasing():
    # The uncorrected image no worse than NMAR: equal steps beyond NMAR.
    assert score_knots(0.0, 20.0, 10.0, higher_is_better=False, floor=1.0) == \
        [0.0, 10.0, 20.0, 30.0, 40.0]
    # NMAR as good as the reference: the uncorrected image spans 0..4.
    assert score_knots(0.0, 0.0, 40.0, higher_is_better=False, floor=1.0) == \
        [0.0, 10.0, 20.0, 30.0, 40.0]
    # Nothing departs from the reference: steps of the floor.
    assert score_knots(1.0, 1.0, 1.0, higher_is_better=True, floor=0.01) == \
        pytest.approx([1.0, 0.99, 0.98, 0.97, 0.96])
    # Fixed steps (noise: the reference's SD times 1.25 .. 2).
    assert score_knots(8.0, None, None, higher_is_better=False, floor=0.5,
                       fixed_steps=[2, 4, 6, 8]) == [8.0, 10.0, 12.0, 14.0, 16.0]


def test_reference_nmar_and_uncorrected_land_on_0_2_4():
    ref, metal = phantom()
    unc = with_streaks(ref, metal, 300.0, seed=1)
    nmar = with_streaks(ref, metal, 100.0, seed=2)
    a = case_anchors(ref, unc, nmar, metal, PX)
    s_ref, s_nmar, s_unc = (score_case(x, ref, a) for x in (ref, nmar, unc))
    for key in ("aapm_score_ct", "aapm_score_streak", "aapm_score_ssim"):
        assert s_ref[key] == 0.0
        assert s_nmar[key] == pytest.approx(2.0, abs=1e-9)
        assert s_unc[key] == pytest.approx(4.0, abs=1e-9)
    # The reference holds no metal: its metal integrity is as poor as it gets.
    assert s_ref["aapm_score_metal"] == 4.0
    # Noise: the reference's own SD scores 0, twice it scores 4.
    roi = a.structures.noise_roi
    assert a.knots["aapm_noise_sd_hu"][0] == pytest.approx(noise_sd(ref, roi))
    assert a.knots["aapm_noise_sd_hu"][4] == pytest.approx(2 * noise_sd(ref, roi))
    assert a.knots["aapm_range_shift_pct"] == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_noise_free_reference_takes_the_uncorrected_noise_as_baseline():
    ref, metal = phantom(noise_hu=0.0)
    unc = with_streaks(ref, metal, 300.0)
    a = case_anchors(ref, unc, unc, metal, PX, noise_free_reference=True)
    assert a.noise_baseline_from == "uncorrected"
    assert a.noise_baseline_hu == pytest.approx(noise_sd(unc, a.structures.noise_roi))
    assert a.noise_baseline_hu > 2.0


def test_final_score_is_the_mean_of_the_eight_with_metal_and_bone_halves():
    per = {"aapm_ct_rmse_hu": 1.0, "aapm_noise_sd_hu": 2.0, "aapm_sharpness": 0.0,
           "aapm_streak_hu": 4.0, "aapm_ssim": 3.0, "aapm_metal_volume_change": 1.0,
           "aapm_metal_dice": 3.0, "aapm_bone_volume_change": 0.0, "aapm_bone_dice": 1.0,
           "aapm_range_shift_pct": 2.0}
    sub = subscores(per)
    assert sub["aapm_score_metal"] == 2.0 and sub["aapm_score_bone"] == 0.5
    assert sub["aapm_score"] == pytest.approx((1 + 2 + 0 + 4 + 3 + 2 + 0.5 + 2) / 8)
    # The NMAR row the challenge published: sub-scores average to its final score.
    nmar = [2.03, 1.06, 0.58, 1.99, 2.03, 2.06, 2.05, 2.76]
    assert float(np.mean(nmar)) == pytest.approx(1.82, abs=0.005)
    # An undefined sub-score is left out of the mean.
    per["aapm_range_shift_pct"] = math.nan
    assert subscores(per)["aapm_score"] == pytest.approx((1 + 2 + 0 + 4 + 3 + 2 + 0.5) / 7)


def test_protocols_by_name():
    assert get_protocol("aapm-ctmar-2024") is AAPM_CTMAR_2024
    assert get_protocol("marbench-v1").version == "marbench-v1"
    with pytest.raises(UnknownProtocolError, match="did you mean 'aapm-ctmar-2024'"):
        get_protocol("aapm-ctmar-2023")
    assert AAPM_CTMAR_2024.to_dict()["sharpness_blur_px"] == [0.4, 0.5, 0.75, 1.0]
