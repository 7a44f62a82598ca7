"""Scoring under the "marbench-v1" protocol.

Pure functions live in :mod:`.image` (PSNR, SSIM, LPIPS) and :mod:`.clinical` (AAPM-style
metrics); :class:`Scorer` is the thin accumulator a runner feeds batch by batch, one scorer
per reference (GSI, and ideal where it exists)::

    scorer = Scorer()                       # LPIPS loaded if its real weights are present
    scorer.update(pred_hu, gsi_hu, metal_mask=mask, pixel_spacing_mm=spacing, slice_ids=ids)
    scorer.summary()["psnr"].mean, scorer.missing   # {"lpips": "reason"} if it could not run
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import segmentation as _segmentation  # noqa: E402,F401  (registers its declarations)
from .clinical import CLINICAL_METRICS, clinical_metrics
from .image import IMAGE_METRICS, LPIPSMetric, LPIPSUnavailable, image_metrics
from .lpips_weights import fetch_lpips_weights, find_lpips_weights
from .protocol import (
    MARBENCH_V1,
    MetricSpec,
    Protocol,
    Summary,
    hu_to_unit,
    resample_hu,
    resample_mask,
    summarize,
)
from .registry import METRICS, register_metric  # noqa: E402  (the one metric registry)

__all__ = [
    "CLINICAL_METRICS", "IMAGE_METRICS", "LPIPSMetric", "LPIPSUnavailable", "MARBENCH_V1",
    "METRICS", "MetricSpec", "Protocol", "register_metric", "Scorer", "Summary", "clinical_metrics",
    "fetch_lpips_weights", "find_lpips_weights", "hu_to_unit", "image_metrics", "resample_hu",
    "resample_mask", "summarize",
]


class Scorer:
    """Accumulates per-slice metric values against one reference.

    Args:
        protocol: the scoring protocol.
        lpips: ``"auto"`` loads :class:`LPIPSMetric` and records the reason in ``missing`` if
            it cannot; an :class:`LPIPSMetric` instance is used as is (share one between
            scorers); ``None`` skips LPIPS (recorded as missing, "disabled").
        clinical: also compute the clinical metrics (needs metal masks and pixel spacing).
        device: where PSNR / SSIM run (LPIPS runs where its model is).
    """

    def __init__(self, protocol: Protocol = MARBENCH_V1, *,
                 lpips: LPIPSMetric | str | None = "auto", clinical: bool = True,
                 device: torch.device | str = "cpu") -> None:
        self.protocol = protocol
        self.device = torch.device(device)
        self.clinical = clinical
        self.missing: dict[str, str] = {}
        self.lpips: LPIPSMetric | None = None
        if isinstance(lpips, LPIPSMetric):
            self.lpips = lpips
        elif lpips == "auto":
            try:
                self.lpips = LPIPSMetric(device=self.device)
            except LPIPSUnavailable as e:
                self.missing["lpips"] = str(e)
        elif lpips is None:
            self.missing["lpips"] = "disabled by the caller"
        else:
            raise ValueError(f"Scorer(lpips=...) must be 'auto', None or an LPIPSMetric, "
                             f"got {lpips!r}")
        names = ["psnr", "ssim"] + (["lpips"] if self.lpips is not None else [])
        names += list(CLINICAL_METRICS) if clinical else []
        #: The metrics this scorer computes, by key.
        self.metrics: dict[str, MetricSpec] = {k: METRICS[k] for k in names}
        self._rows: list[dict[str, float | str]] = []

    def update(self, pred_hu: torch.Tensor, reference_hu: torch.Tensor, *,
               metal_mask: torch.Tensor | None = None,
               pixel_spacing_mm: torch.Tensor | Sequence[float] | None = None,
               slice_ids: Sequence[str] | None = None) -> list[dict[str, float | str]]:
        """Score a batch; return (and keep) one row per slice: ``{"slice": id, metric: value}``.

        Args:
            pred_hu, reference_hu: (B, 1, H, W) HU on the same native grid.
            metal_mask: (B, 1, H, W) bool (needed for clinical metrics).
            pixel_spacing_mm: (B,) native pixel size in mm (needed for clinical metrics).
            slice_ids: B labels for the rows (default: running numbers).
        """
        if pred_hu.shape != reference_hu.shape or pred_hu.ndim != 4 or pred_hu.shape[1] != 1:
            raise ValueError(f"Scorer.update: pred {tuple(pred_hu.shape)} and reference "
                             f"{tuple(reference_hu.shape)} must both be (B, 1, H, W)")
        b, _, h, w = pred_hu.shape
        ids = list(slice_ids) if slice_ids is not None else [
            str(len(self._rows) + i) for i in range(b)]
        if len(ids) != b:
            raise ValueError(f"Scorer.update: {len(ids)} slice_ids for a batch of {b}")
        values = image_metrics(pred_hu.to(self.device), reference_hu.to(self.device),
                               self.protocol, self.lpips)
        rows: list[dict[str, float | str]] = [
            {"slice": ids[i], **{k: float(v[i]) for k, v in values.items()}} for i in range(b)]
        if self.clinical:
            if metal_mask is None or pixel_spacing_mm is None:
                raise ValueError("Scorer.update: clinical metrics need metal_mask and "
                                 "pixel_spacing_mm (or build the Scorer with clinical=False)")
            if metal_mask.shape != pred_hu.shape:
                raise ValueError(f"Scorer.update: metal_mask {tuple(metal_mask.shape)} must "
                                 f"match the images {tuple(pred_hu.shape)}")
            n = self.protocol.eval_size
            spacing = torch.as_tensor(pixel_spacing_mm, dtype=torch.float64).reshape(-1)
            if spacing.numel() != b:
                raise ValueError(f"Scorer.update: {spacing.numel()} pixel spacings for a batch "
                                 f"of {b}")
            p = resample_hu(pred_hu.float(), n, self.protocol.resample_mode).cpu().numpy()
            r = resample_hu(reference_hu.float(), n, self.protocol.resample_mode).cpu().numpy()
            m = resample_mask(metal_mask.bool(), n).cpu().numpy()
            for i in range(b):
                # Pixel size on the evaluation grid, per axis (row, col).
                sp = (float(spacing[i]) * h / n, float(spacing[i]) * w / n)
                rows[i].update(clinical_metrics(p[i, 0], r[i, 0], m[i, 0], sp, self.protocol))
        self._rows.extend(rows)
        return rows

    def per_slice(self) -> list[dict[str, float | str]]:
        """Every row so far (copies), in update order."""
        return [dict(r) for r in self._rows]

    def summary(self) -> dict[str, Summary]:
        """Aggregate of each computed metric (see :func:`summarize` for inf / NaN)."""
        return {k: summarize([float(r[k]) for r in self._rows], spec.higher_is_better)
                for k, spec in self.metrics.items()}
