"""Segmentation IoU / mIoU against torchmetrics and hand-computed cases, including a class
absent from a slice, an empty class over the whole split, and all classes present."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.segmentation import MeanIoU

from benchmark.metrics.segmentation import (
    CLASS_KEYS,
    CLASS_NAMES,
    COUNT_KEYS,
    SEGMENTATION_METRICS,
    SUMMARY_KEYS,
    SegmentationScorer,
    count_rows,
    seg_summary,
    seg_summary_by,
    slice_counts,
)


def _random_maps(seed: int, b: int = 6, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky random label maps (so classes overlap partly, not like noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 6, (2, b, size // 4, size // 4), generator=g)
    maps = coarse.repeat_interleave(4, -1).repeat_interleave(4, -2)
    noise = torch.randint(0, 6, maps.shape, generator=g)
    flip = torch.rand(maps.shape, generator=g) < 0.2
    maps = torch.where(flip, noise, maps)
    return maps[0], maps[1]


def test_class_names_match_the_dataset_builder():
    from artifactgsi.build import LABEL_NAMES

    assert tuple(LABEL_NAMES) == CLASS_NAMES


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dataset_iou_equals_torchmetrics_jaccard(seed):
    pred, target = _random_maps(seed)
    inter, union = slice_counts(pred, target)
    got = seg_summary(count_rows(inter, union))
    # JaccardIndex accumulates one confusion matrix over all pixels of all slices: the
    # dataset-level (sum of intersections / sum of unions) definition.
    ref = MulticlassJaccardIndex(num_classes=6, average="none")(pred, target)
    for c, k in enumerate(CLASS_KEYS, start=1):
        assert got[f"iou.{k}"] == pytest.approx(float(ref[c]), abs=1e-6)
    assert got["miou"] == pytest.approx(float(ref[1:].mean()), abs=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
def test_per_slice_counts_equal_torchmetrics_meaniou(seed):
    pred, target = _random_maps(seed, b=4)
    inter, union = slice_counts(pred, target)
    # MeanIoU(per_class=True) on one slice at a time: that slice's IoU per class.
    for i in range(pred.shape[0]):
        m = MeanIoU(num_classes=6, per_class=True, input_format="index")
        ref = m(pred[i:i + 1], target[i:i + 1])
        for c in range(6):
            if union[i, c] > 0:
                assert float(inter[i, c] / union[i, c]) == pytest.approx(float(ref[c]), abs=1e-6)


def test_hand_computed_case():
    # 1 x 4 x 4 slice. Reference: metal in the top-left 2x2, left pelvis in the bottom row.
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    target[0, :2, :2] = 1
    target[0, 3, :] = 2
    pred = torch.zeros(1, 4, 4, dtype=torch.uint8)
    pred[0, :2, :3] = 1          # metal: 4 right + 2 extra -> IoU 4/6
    pred[0, 3, :2] = 2           # pelvis: 2 of 4 -> IoU 2/4
    pred[0, 2, 3] = 4            # a false-positive left-femur pixel -> IoU 0/1
    s = seg_summary(count_rows(*slice_counts(pred, target)))
    assert s["iou.metal"] == pytest.approx(4 / 6)
    assert s["iou.l_pelvis"] == pytest.approx(2 / 4)
    assert s["iou.l_femur"] == 0.0
    # right pelvis and right femur occur nowhere: undefined, left out of the mean.
    assert math.isnan(s["iou.r_pelvis"]) and math.isnan(s["iou.r_femur"])
    assert s["miou"] == pytest.approx((4 / 6 + 2 / 4 + 0.0) / 3)


def test_absent_class_on_a_slice_contributes_nothing():
    """A slice where a class is in neither map adds 0 / 0 to that class: the dataset IoU of
    the other slices is unchanged (unlike averaging per-slice IoUs with 0 or 1 for it)."""
    pred, target = _random_maps(7, b=3)
    base = seg_summary(count_rows(*slice_counts(pred, target)))
    # An extra slice holding only background and metal, predicted exactly.
    extra_t = torch.zeros(1, *pred.shape[1:], dtype=torch.long)
    extra_t[0, :5, :5] = 1
    both_p = torch.cat([pred, extra_t])
    both_t = torch.cat([target, extra_t])
    inter, union = slice_counts(both_p, both_t)
    assert (inter[-1, 2:] == 0).all() and (union[-1, 2:] == 0).all()
    after = seg_summary(count_rows(inter, union))
    for k in CLASS_KEYS[1:]:
        assert after[f"iou.{k}"] == pytest.approx(base[f"iou.{k}"])
    assert after["iou.metal"] >= base["iou.metal"]


def test_all_classes_present_and_perfect():
    _, target = _random_maps(5)
    assert set(torch.unique(target).tolist()) == set(range(6))
    s = seg_summary(count_rows(*slice_counts(target, target)))
    assert all(s[k] == 1.0 for k in SUMMARY_KEYS)


def test_empty_class_over_whole_split_is_nan_and_left_out():
    pred, target = _random_maps(6)
    pred = torch.where(pred == 5, 0, pred)
    target = torch.where(target == 5, 0, target)
    s = seg_summary(count_rows(*slice_counts(pred, target)))
    assert math.isnan(s["iou.r_femur"])
    ref = MulticlassJaccardIndex(num_classes=6, average="none")(pred, target)
    assert s["miou"] == pytest.approx(float(ref[1:5].mean()), abs=1e-6)
    # Nothing at all of the five classes: mIoU undefined.
    zero = torch.zeros(2, 8, 8, dtype=torch.long)
    assert math.isnan(seg_summary(count_rows(*slice_counts(zero, zero)))["miou"])


def test_per_patient_and_bad_input():
    pred, target = _random_maps(8, b=4)
    rows = count_rows(*slice_counts(pred, target))
    by = seg_summary_by(rows, ["A", "A", "B", "B"])
    ref_a = MulticlassJaccardIndex(num_classes=6, average="none")(pred[:2], target[:2])
    assert by["A"]["iou.metal"] == pytest.approx(float(ref_a[1]), abs=1e-6)
    assert set(rows[0]) == set(COUNT_KEYS)
    with pytest.raises(ValueError, match="outside 0..5"):
        slice_counts(torch.full((1, 2, 2), 6), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(KeyError, match="row 0 has no seg_inter.metal"):
        seg_summary([{"psnr": 30.0}])


class _Oracle:
    """A 'segmenter' that thresholds HU: > 2500 metal, > 300 left pelvis, else background."""

    def predict(self, images_hu: torch.Tensor) -> torch.Tensor:
        x = images_hu[:, 0]
        out = torch.zeros(x.shape, dtype=torch.uint8)
        out[x > 300] = 2
        out[x > 2500] = 1
        return out


def test_scorer_accumulates_rows_and_patients():
    img = torch.full((2, 1, 8, 8), -1000.0)
    img[:, 0, :2, :2] = 3000.0
    img[1, 0, 4:, 4:] = 700.0
    labels = torch.zeros(2, 8, 8, dtype=torch.uint8)
    labels[:, :2, :2] = 1
    labels[1, 4:, 4:6] = 2
    sc = SegmentationScorer(_Oracle(), "cpu")
    rows = sc.update(img, labels, ["P1", "P2"], [0, 3])
    assert rows[0]["seg_inter.metal"] == 4 and rows[0]["seg_union.l_pelvis"] == 0
    assert rows[1]["seg_inter.l_pelvis"] == 8 and rows[1]["seg_union.l_pelvis"] == 16
    s = sc.summary()
    assert s["iou.metal"] == 1.0 and s["iou.l_pelvis"] == 0.5
    assert s["miou"] == pytest.approx(0.75)
    assert sc.per_patient()["P1"]["miou"] == 1.0
    with pytest.raises(ValueError, match="labels"):
        sc.update(img, labels[:, :4], ["P1", "P2"], [0, 1])


def test_metric_declarations():
    names = [m.name for m in SEGMENTATION_METRICS]
    assert names == ["miou", *(f"iou.{k}" for k in CLASS_KEYS)]
    assert all(m.higher_is_better and m.group == "segmentation" and m.unit == ""
               and set(m.needs) == {"labels", "segmenter"} for m in SEGMENTATION_METRICS)


def test_results_module_summary_agrees():
    """benchmark.results keeps a torch-free copy of seg_summary for the leaderboard: the two
    must give the same numbers (NaN for an empty class included)."""
    from benchmark import results

    pred, target = _random_maps(9)
    pred = torch.where(pred == 3, 0, pred)
    target = torch.where(target == 3, 0, target)
    rows = count_rows(*slice_counts(pred, target))
    a, b = seg_summary(rows), results.seg_summary(rows)
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k]
