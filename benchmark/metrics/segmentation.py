"""Downstream segmentation scores: per-class IoU and mIoU of a frozen segmenter's labels.

A segmenter trained on GSI images (:mod:`benchmark.segmentation`) is applied to an image (a
method's output, GSI, the ideal image) and its label map is compared with the dataset's
``labels``: 0 background, 1 metal implant, 2 left pelvis, 3 right pelvis, 4 left femur,
5 right femur.

Definitions (pure functions, no model here):

- per slice and class c: the intersection ``|P_c ∩ R_c|`` and union ``|P_c ∪ R_c|`` in pixels
  of the native label grid (:func:`slice_counts`);
- dataset-level IoU of class c: the sum of intersections over the sum of unions across the
  scored slices (the usual segmentation-benchmark definition, as in Cityscapes / Pascal VOC;
  not a mean of per-slice IoUs), :func:`seg_summary`;
- mIoU: the mean of the five foreground classes' IoUs (background is not averaged).

A class absent from both the prediction and the reference on a slice has intersection 0 and
union 0 there, so it contributes nothing to the sums: it neither raises nor lowers the IoU.
A class whose union is 0 over all scored slices (e.g. the pelvis classes on spinal slices)
has an undefined IoU (NaN) and is left out of the mIoU; the mIoU is NaN only when no
foreground class occurs at all.

Per-slice rows keep the counts (``seg_inter.<class>``, ``seg_union.<class>``) rather than
ratios, so any grouping (per patient, per implant type, the whole split) is recomputed
exactly from them with :func:`seg_summary`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from ..results import SEG_CLASSES, SEG_INTER, SEG_UNION
from .registry import METRICS, SEG_CLASS_TITLES, MetricSpec

if TYPE_CHECKING:  # torch is imported where counts are computed: declarations need none
    import torch

#: The label values of the dataset's ``labels`` column, in order (value = index).
CLASS_NAMES: tuple[str, ...] = ("background", "metal", "left_pelvis", "right_pelvis",
                                "left_femur", "right_femur")
#: Short keys of the five foreground classes (metric names ``iou.<key>``), paper Table 2 order
#: (defined with the results schema, which stores the per-slice counts under these keys).
CLASS_KEYS: tuple[str, ...] = SEG_CLASSES
#: Human-readable column titles of the five foreground classes.
CLASS_TITLES: tuple[str, ...] = SEG_CLASS_TITLES
NUM_CLASSES = len(CLASS_NAMES)

INTER_PREFIX = SEG_INTER
UNION_PREFIX = SEG_UNION
#: Names of the summary metrics: ``iou.<class>`` for the five classes, then ``miou``.
SUMMARY_KEYS: tuple[str, ...] = (*(f"iou.{k}" for k in CLASS_KEYS), "miou")
#: Names of the per-slice count columns.
COUNT_KEYS: tuple[str, ...] = (*(f"{INTER_PREFIX}{k}" for k in CLASS_KEYS),
                               *(f"{UNION_PREFIX}{k}" for k in CLASS_KEYS))


#: The metrics this module's counts feed (declared in the registry): mIoU and each class's IoU.
SEGMENTATION_METRICS: tuple[MetricSpec, ...] = tuple(
    s for s in METRICS.values() if s.group == "segmentation")


def slice_counts(pred: torch.Tensor, target: torch.Tensor,
                 num_classes: int = NUM_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice, per-class intersection and union pixel counts.

    Args:
        pred, target: (B, H, W) integer label maps (values 0..num_classes-1), same shape.
        num_classes: number of label values (background included).

    Returns:
        (inter, union): two (B, num_classes) int64 tensors, pixels. A class absent from both
        maps of a slice has 0 and 0 there.
    """
    import torch

    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"slice_counts: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} must both be (B, H, W) label maps")
    p = pred.long().flatten(1)
    t = target.long().flatten(1)
    for name, x in (("pred", p), ("target", t)):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
            raise ValueError(f"slice_counts: {name} holds labels {int(x.min())}..{int(x.max())}"
                             f", outside 0..{num_classes - 1}")
    b = p.shape[0]
    offs = torch.arange(b, device=p.device).unsqueeze(1) * num_classes

    def count(x: torch.Tensor) -> torch.Tensor:
        return torch.bincount((x + offs).flatten(), minlength=b * num_classes).view(
            b, num_classes)

    inter = _inter_counts(p, t, num_classes)
    union = count(p) + count(t) - inter
    return inter, union


def _inter_counts(p: torch.Tensor, t: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C) pixels where both maps hold class c (p, t: (B, N) int64)."""
    import torch

    b = p.shape[0]
    # Pixels where the maps disagree go to an extra bin C, dropped afterwards.
    agree = torch.where(p == t, p, torch.full_like(p, num_classes))
    offs = torch.arange(b, device=p.device).unsqueeze(1) * (num_classes + 1)
    counts = torch.bincount((agree + offs).flatten(), minlength=b * (num_classes + 1))
    return counts.view(b, num_classes + 1)[:, :num_classes]


def count_rows(inter: torch.Tensor, union: torch.Tensor) -> list[dict[str, float]]:
    """(B, 6) counts -> B rows ``{"seg_inter.metal": ..., "seg_union.metal": ..., ...}`` for
    the five foreground classes (floats, as results files store scores)."""
    rows = []
    for i in range(inter.shape[0]):
        row = {f"{INTER_PREFIX}{k}": float(inter[i, c + 1]) for c, k in enumerate(CLASS_KEYS)}
        row.update({f"{UNION_PREFIX}{k}": float(union[i, c + 1])
                    for c, k in enumerate(CLASS_KEYS)})
        rows.append(row)
    return rows


def iou_from_sums(inter: float, union: float) -> float:
    """IoU from summed counts: ``inter / union``, NaN when ``union`` is 0 (class never seen)."""
    return inter / union if union > 0 else math.nan


def mean_iou(ious: Iterable[float]) -> float:
    """Mean of the defined (non-NaN) class IoUs; NaN when none is defined."""
    vals = [v for v in ious if not math.isnan(v)]
    return math.fsum(vals) / len(vals) if vals else math.nan


# The dataset-level sums live with the results schema, so the leaderboard (which reads only
# that module) recomputes them with the very same code.
from ..results import seg_summary, seg_summary_by  # noqa: E402

__all__ = ["CLASS_KEYS", "CLASS_NAMES", "SEGMENTATION_METRICS", "SegmentationScorer",
           "count_rows", "iou_from_sums", "mean_iou", "seg_summary", "seg_summary_by",
           "slice_counts"]


class Segmenter(Protocol):
    """What the scorer needs of a segmenter (:class:`benchmark.segmentation.Segmenter`)."""

    def predict(self, images_hu: torch.Tensor) -> torch.Tensor:  # (B,1,H,W) HU -> (B,H,W)
        ...


class SegmentationScorer:
    """Applies a frozen segmenter to images and accumulates per-slice IoU counts.

    Args:
        segmenter: has ``predict((B, 1, H, W) float32 HU) -> (B, H, W)`` label maps on the
            input grid (:class:`benchmark.segmentation.Segmenter`), moved to ``device``.
        device: where the segmenter runs.

    Example::

        scorer = SegmentationScorer(load_segmenter("data/segmenter/gsi"), "cpu")
        rows = scorer.update(pred_hu, labels, patient_ids, slice_ids)
        scorer.summary()["miou"], scorer.per_patient()["P001"]["iou.metal"]
    """

    def __init__(self, segmenter: Segmenter, device: torch.device | str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        to = getattr(segmenter, "to", None)
        self.segmenter = to(self.device) if callable(to) else segmenter
        self._rows: list[dict[str, float]] = []
        self._patients: list[str] = []
        self._slices: list[str] = []

    def update(self, images_hu: torch.Tensor, labels: torch.Tensor,
               patient_ids: Sequence[str], slice_ids: Sequence[str | int]
               ) -> list[dict[str, float]]:
        """Segment a batch and return (and keep) one row of counts per slice.

        Args:
            images_hu: (B, 1, H, W) float32 HU, the image to segment.
            labels: (B, H, W) uint8 reference labels on the same grid.
            patient_ids, slice_ids: B identifiers (kept for :meth:`per_patient`).

        Returns:
            B rows ``{"seg_inter.<class>": pixels, "seg_union.<class>": pixels}``.
        """
        if images_hu.ndim != 4 or images_hu.shape[1] != 1:
            raise ValueError(f"SegmentationScorer.update: images must be (B, 1, H, W), got "
                             f"{tuple(images_hu.shape)}")
        b = images_hu.shape[0]
        if tuple(labels.shape) != (b, *images_hu.shape[2:]):
            raise ValueError(f"SegmentationScorer.update: labels {tuple(labels.shape)} must be "
                             f"(B, H, W) = {(b, *images_hu.shape[2:])}, the images' grid")
        if len(patient_ids) != b or len(slice_ids) != b:
            raise ValueError(f"SegmentationScorer.update: {len(patient_ids)} patient ids and "
                             f"{len(slice_ids)} slice ids for a batch of {b}")
        import torch

        with torch.no_grad():
            pred = self.segmenter.predict(images_hu.to(self.device, torch.float32))
        inter, union = slice_counts(pred.cpu(), labels.cpu())
        rows = count_rows(inter, union)
        self._rows.extend(rows)
        self._patients.extend(str(p) for p in patient_ids)
        self._slices.extend(str(s) for s in slice_ids)
        return [dict(r) for r in rows]

    def per_slice(self) -> list[dict[str, float]]:
        """Every row so far (copies), in update order."""
        return [dict(r) for r in self._rows]

    def summary(self) -> dict[str, float]:
        """Dataset-level IoU per class and mIoU over every slice so far."""
        return seg_summary(self._rows)

    def per_patient(self) -> dict[str, dict[str, float]]:
        """:meth:`summary` per patient id."""
        return seg_summary_by(self._rows, self._patients)
