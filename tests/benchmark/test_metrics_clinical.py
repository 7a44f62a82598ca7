"""Clinical (AAPM CT-MAR style) metrics on hand-built phantoms with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from benchmark.metrics import CLINICAL_METRICS, MARBENCH_V1, Scorer
from benchmark.metrics.clinical import (
    body_mask,
    clinical_metrics,
    dice_and_volume_change,
    dilate_metal,
    homogeneous_roi,
    masked_ssim,
    streak_amplitude,
    streak_roi,
)

N = 128
YY, XX = np.mgrid[:N, :N]


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """(reference HU, metal mask) at 1 mm pixels: a 40 HU body (radius 55) with a gas pocket,
    a bone (700 HU) and a metal rod (3000 HU), plus a separate 'table' below."""
    img = np.full((N, N), -1000.0)
    img[disc(64, 64, 55)] = 40.0
    img[disc(40, 64, 5)] = -1000.0  # gas inside the body: a hole the body mask fills
    img[disc(64, 35, 8)] = 700.0
    metal = disc(64, 90, 4)
    img[metal] = 3000.0
    img[123:126, 10:118] = 0.0  # table: not connected to the body
    return img, metal


def test_body_mask_largest_component_with_holes_filled():
    ref, _ = phantom()
    body = body_mask(ref, -500.0)
    assert np.array_equal(body, disc(64, 64, 55))  # gas pocket filled, table dropped


def test_metal_dilated_twice_with_the_cross():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    d = dilate_metal(m, 2)
    assert d.sum() == 13  # diamond of radius 2: 1 + 4 + 8
    assert d[4, 2] and d[3, 3] and not d[2, 2]


def test_perfect_image_scores_perfectly():
    ref, metal = phantom()
    m = clinical_metrics(ref, ref, metal, 1.0)
    assert set(m) == set(CLINICAL_METRICS)
    assert m["ct_rmse_hu"] == 0.0 and m["ct_mae_hu"] == 0.0
    assert m["noise_sd_hu"] == 0.0 and m["streak_amplitude_hu"] == 0.0
    assert m["masked_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert (m["bone_dice"], m["bone_volume_change"]) == (1.0, 0.0)
    assert (m["metal_dice"], m["metal_volume_change"]) == (1.0, 0.0)


def test_constant_offset_of_10_hu():
    ref, metal = phantom()
    m = clinical_metrics(ref + 10.0, ref, metal, 1.0)
    assert m["ct_rmse_hu"] == pytest.approx(10.0) and m["ct_mae_hu"] == pytest.approx(10.0)
    assert m["streak_amplitude_hu"] == pytest.approx(0.0, abs=1e-9)  # no spread, no streaks
    assert m["bone_dice"] == 1.0 and m["metal_dice"] == 1.0
    assert m["noise_sd_hu"] == pytest.approx(0.0, abs=1e-9)
    # SSIM's luminance term sees the offset: in flat 40 HU tissue it is
    # (2 * 40 * 50 + C1) / (40^2 + 50^2 + C1) with C1 = (0.01 * 5000)^2, i.e. 6500 / 6600.
    assert m["masked_ssim"] == pytest.approx(6500 / 6600, abs=2e-3)


def test_streak_amplitude_hand_cases():
    # 100 values 1..100: each 5 % tail holds 5 pixels -> means 98 and 3.
    values = np.arange(1.0, 101.0).reshape(10, 10)
    roi = np.ones((10, 10), bool)
    assert streak_amplitude(values, np.zeros((10, 10)), roi, 0.05) == pytest.approx(95.0)
    assert math.isnan(streak_amplitude(values, values, np.zeros((10, 10), bool), 0.05))
    # A streak pattern around the metal: +50 HU on half the angles, -30 HU on the other half.
    ref, metal = phantom()
    theta = np.arctan2(YY - 64, XX - 90)
    pred = ref + np.where(np.cos(6 * theta) > 0, 50.0, -30.0)
    assert clinical_metrics(pred, ref, metal, 1.0)["streak_amplitude_hu"] == pytest.approx(80.0)


def test_streak_roi_is_an_annulus_in_the_body():
    ref, metal = phantom()
    body = body_mask(ref, -500.0)
    dil = dilate_metal(metal, 2)
    roi = streak_roi(metal, body, dil, 1.0, inner_mm=2.0, outer_mm=10.0)
    d = ndimage.distance_transform_edt(~metal)
    assert roi.any() and (d[roi] > 2.0).all() and (d[roi] <= 10.0).all()
    assert not (roi & dil).any() and not (roi & ~body).any()
    assert not streak_roi(np.zeros_like(metal), body, dil, 1.0, inner_mm=2, outer_mm=10).any()


def test_noise_roi_is_a_homogeneous_disc_far_from_metal_and_bone():
    ref, metal = phantom()
    body = body_mask(ref, -500.0)
    kw = dict(radius_mm=5.0, tissue_hu=(0.0, 100.0), smoothing_mm=1.0, metal_margin_mm=10.0,
              bone_hu=150.0, bone_margin_mm=5.0)
    roi = homogeneous_roi(ref, body, dilate_metal(metal, 2), 1.0, **kw)
    assert roi is not None and roi.sum() == 81  # lattice points with dy^2 + dx^2 <= 25
    assert (ref[roi] == 40.0).all()
    assert ndimage.distance_transform_edt(~metal)[roi].min() >= 10.0
    assert ndimage.distance_transform_edt(~(ref >= 150))[roi].min() >= 5.0
    # Noise of SD 20 HU added to the body is measured as about 20 HU there.
    noisy = ref + np.random.default_rng(0).normal(0.0, 20.0, ref.shape) * body
    sd = clinical_metrics(noisy, ref, metal, 1.0)["noise_sd_hu"]
    assert 15.0 < sd < 25.0
    # No soft tissue anywhere (all bone): no ROI, NaN.
    bony = np.where(body, 700.0, -1000.0)
    assert homogeneous_roi(bony, body, metal, 1.0, **kw) is None
    assert math.isnan(clinical_metrics(bony, bony, metal, 1.0)["noise_sd_hu"])


def test_masked_ssim_ignores_the_dilated_metal():
    ref, metal = phantom()
    body = body_mask(ref, -500.0)
    dil = dilate_metal(metal, 2)
    changed = ref.copy()
    changed[dil] = -500.0  # a method that wipes out the metal region
    kw = dict(data_range=5000.0, metal_fill_hu=100.0, sigma=1.5)
    assert masked_ssim(changed, ref, dil, body & ~dil, **kw) == pytest.approx(1.0, abs=1e-12)
    noisy = ref + np.random.default_rng(1).normal(0.0, 50.0, ref.shape)
    assert masked_ssim(noisy, ref, dil, body & ~dil, **kw) < 0.99


def test_dice_and_volume_change_hand_cases():
    a = np.zeros((4, 4), bool)
    r = np.zeros((4, 4), bool)
    a[0, :4] = True
    r[0, :2] = True
    assert dice_and_volume_change(a, r) == pytest.approx((2 * 2 / 6, 1.0))
    empty = np.zeros((4, 4), bool)
    d, v = dice_and_volume_change(empty, empty)
    assert math.isnan(d) and math.isnan(v)
    assert dice_and_volume_change(a, empty)[0] == 0.0


def test_bone_and_metal_integrity():
    ref, metal = phantom()
    # Bone: a 10x10 block moved 2 columns -> overlap 80, Dice 160 / 200, same area.
    ref2 = ref.copy()
    ref2[disc(64, 35, 8)] = 40.0
    ref2[30:40, 50:60] = 700.0
    pred = ref2.copy()
    pred[30:40, 50:60] = 40.0
    pred[30:40, 52:62] = 700.0
    m = clinical_metrics(pred, ref2, metal, 1.0)
    assert m["bone_dice"] == pytest.approx(0.8) and m["bone_volume_change"] == 0.0
    # Metal blooming: the rod grows from radius 4 to radius 5 (inside the dilated metal).
    bloom = ref.copy()
    bloom[disc(64, 90, 5) & dilate_metal(metal, 2)] = 3000.0
    small, big = metal.sum(), (disc(64, 90, 5) & dilate_metal(metal, 2)).sum()
    m = clinical_metrics(bloom, ref, metal, 1.0)
    assert m["metal_dice"] == pytest.approx(2 * small / (small + big))
    assert m["metal_volume_change"] == pytest.approx(big / small - 1)


def test_scorer_resamples_to_512_and_keeps_hu():
    ref, metal = phantom()
    ref_t = torch.from_numpy(ref).float()[None, None].repeat(2, 1, 1, 1)
    mask_t = torch.from_numpy(metal)[None, None].repeat(2, 1, 1, 1)
    pred_t = ref_t.clone()
    pred_t[1] += 10.0
    scorer = Scorer(MARBENCH_V1, lpips=None)
    rows = scorer.update(pred_t, ref_t, metal_mask=mask_t, pixel_spacing_mm=[4.0, 4.0],
                         slice_ids=["P0/1", "P0/2"])
    assert [r["slice"] for r in rows] == ["P0/1", "P0/2"]
    assert math.isinf(rows[0]["psnr"]) and rows[0]["ct_rmse_hu"] == 0.0
    assert rows[1]["ct_rmse_hu"] == pytest.approx(10.0, abs=1e-3)
    assert rows[1]["bone_dice"] == 1.0
    s = scorer.summary()
    assert s["psnr"].n_inf == 1 and s["psnr"].n_finite == 1
    assert s["ct_rmse_hu"].mean == pytest.approx(5.0, abs=1e-3)
    assert not s["ct_rmse_hu"].higher_is_better and s["masked_ssim"].higher_is_better
    assert scorer.missing == {"lpips": "disabled by the caller"}
    with pytest.raises(ValueError, match="need metal_mask and pixel_spacing_mm"):
        scorer.update(pred_t, ref_t)


@pytest.mark.parametrize("order", ["larger body first", "smaller body first"])
def test_comparisons_sharing_the_scored_image_match_each_scored_alone(order: str):
    """Scoring one image against two references in one batch shares its masked-SSIM moments
    (made within the first reference's box, cut to the second's when it lies inside): every
    clinical metric must equal the image scored alone against each reference."""
    from benchmark.metrics.compute import BatchMemo

    n = MARBENCH_V1.eval_size  # on the evaluation grid, so nothing is resampled
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:n, :n]

    def body(ry: float, rx: float) -> np.ndarray:
        return ((yy - n / 2) / ry) ** 2 + ((xx - n / 2) / rx) ** 2 < 1

    metal = ((yy - 250) ** 2 + (xx - 270) ** 2) < 8**2
    refs = []
    for ry, rx in [(200, 160), (150, 120)]:
        r = np.where(body(ry, rx), 40.0, -1000.0) + rng.normal(0, 5, (n, n))
        r[body(60, 60)] += 600.0  # bone
        r[metal] = 3000.0
        refs.append(r)
    if order == "smaller body first":
        refs.reverse()
    pred = refs[0] + 80.0 * np.sin(np.arctan2(yy - 250, xx - 270) * 9) * body(200, 160)
    pred[metal] = 3000.0
    t = lambda a: torch.tensor(a, dtype=torch.float32)[None, None]  # noqa: E731
    memo = BatchMemo()
    kw = {"metal_mask": torch.tensor(metal)[None, None], "pixel_spacing_mm": [0.8],
          "memo": memo, "rows": [0], "batch_size": 1}
    for kind, ref in zip(["gsi", "ideal"], refs, strict=True):
        got = Scorer(MARBENCH_V1, lpips=None, clinical=True, reference=kind).update(
            t(pred), t(ref), **kw)[0]
        want = clinical_metrics(t(pred)[0, 0].numpy(), t(ref)[0, 0].numpy(), metal, 0.8)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k


def test_metrics_on_the_body_box_equal_the_whole_slice():
    """score_clinical computes every metric but the masked SSIM (whose Gaussian window reaches
    past the regions; it has its own box) within ClinicalStructures.extent(): the same pixels
    in the same order, so the same values exactly, also when the dilated metal reaches past
    the body's edge and when a slice has no body at all."""
    from benchmark.metrics.clinical import clinical_scores, clinical_structures

    ref, _ = phantom()
    metal = disc(64, 118, 3)  # on the body's edge (radius 55 around 64, 64): sticks out
    ref = ref.copy()
    ref[metal] = 3000.0
    rng = np.random.default_rng(0)
    pred = ref + rng.normal(0, 20, ref.shape)
    pred[metal] = 2500.0
    cases = [(pred, ref, metal), (np.full((N, N), -1000.0), np.full((N, N), -1000.0), metal),
             (pred, np.full((N, N), -1000.0), np.zeros((N, N), bool))]
    for image, reference, m in cases:
        regions = clinical_structures(reference, m, 1.0)
        box = regions.extent()
        for part in (regions.body, regions.dilated, regions.tissue, regions.annulus,
                     regions.roi if regions.roi is not None else regions.body):
            inside = np.zeros_like(part)
            inside[box] = part[box]
            assert np.array_equal(inside, part)  # every region lies in the box
        whole = clinical_scores(image, reference, regions)
        cropped = clinical_scores(image[box], reference[box], regions.crop(box),
                                  masked_ssim_value=whole["masked_ssim"])
        assert set(whole) == set(cropped)
        for k, v in whole.items():
            assert cropped[k] == v or (math.isnan(v) and math.isnan(cropped[k])), k
    full = clinical_structures(ref, metal, 1.0)
    assert full.dilated[box := full.extent()].sum() == full.dilated.sum()
    assert (box[1].stop - box[1].start) < N  # the box is smaller than the image here


def _streak_by_full_sort(image: np.ndarray, reference: np.ndarray, roi: np.ndarray,
                         fraction: float) -> float:
    d = np.sort(image[roi] - reference[roi])
    k = int(d.size * fraction)
    return math.nan if k == 0 else float(abs(d[d.size - k:].mean() - d[:k].mean()))


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3, 0.5, 0.7])
def test_streak_amplitude_equals_the_full_sort(fraction: float):
    """The tails are found by partition; their means equal a full sort's bit for bit, with
    ties (integer HU), with overlapping tails (fraction > 0.5) and with NaN."""
    rng = np.random.default_rng(3)
    for trial in range(20):
        image = rng.normal(0, 50, (40, 40))
        reference = rng.normal(0, 5, (40, 40))
        if trial % 2:  # many ties
            image, reference = np.round(image), np.round(reference)
        roi = rng.random((40, 40)) < rng.uniform(0.01, 1.0)
        if trial == 0:
            image[roi.nonzero()[0][0], roi.nonzero()[1][0]] = np.nan
        got = streak_amplitude(image, reference, roi, fraction)
        want = _streak_by_full_sort(image, reference, roi, fraction)
        assert got == want or (math.isnan(got) and math.isnan(want))


def test_clinical_scores_equal_each_metric_computed_alone():
    """clinical_scores gathers the tissue once for the CT-number errors and the bone masks:
    its values equal the per-metric functions (each over the whole grid) exactly."""
    from benchmark.metrics.clinical import clinical_structures, ct_number_errors, noise_sd

    ref, metal = phantom()
    rng = np.random.default_rng(4)
    for scale in (0.0, 5.0, 400.0):
        pred = np.round(ref + rng.normal(0, scale, ref.shape))
        pred[metal] -= rng.uniform(0, 1000)
        regions = clinical_structures(ref, metal, 1.0)
        got = clinical_metrics(pred, ref, metal, 1.0)
        p = MARBENCH_V1
        want = dict(zip(("ct_rmse_hu", "ct_mae_hu"),
                        ct_number_errors(pred, ref, regions.tissue), strict=True))
        lo, hi = p.bone_hu
        t, m = regions.tissue, regions.dilated
        want.update(zip(("bone_dice", "bone_volume_change"), dice_and_volume_change(
            t & (pred >= lo) & (pred < hi), t & (ref >= lo) & (ref < hi)), strict=True))
        want.update(zip(("metal_dice", "metal_volume_change"), dice_and_volume_change(
            m & (pred > p.metal_hu), m & (ref > p.metal_hu)), strict=True))
        want["noise_sd_hu"] = noise_sd(pred, regions.roi)
        want["streak_amplitude_hu"] = _streak_by_full_sort(pred, ref, regions.annulus,
                                                           p.streak_tail_fraction)
        for k, v in want.items():
            assert got[k] == v, k
