"""The thin accumulator a runner feeds batch by batch: it computes every per-slice metric the
registry holds for the protocol (plug-ins included) and keeps one row per slice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..results import MetricSummary as Summary
from ..results import summarize
from .compute import BatchMemo, ReferenceStates, ScoreView, compute_metrics
from .image import LPIPSMetric, LPIPSUnavailable
from .protocol import MARBENCH_V1, Protocol
from .registry import MetricSpec, metrics_for_protocol

__all__ = ["Scorer"]


class Scorer:
    """Accumulates per-slice metric values against one reference.

    Every per-slice metric that :func:`metrics_for_protocol` lists is computed, unless a need
    is unmet; those are in :attr:`missing` with the reason (never a silent gap).

    Args:
        protocol: the scoring protocol.
        lpips: ``"auto"`` loads :class:`LPIPSMetric` and records the reason in ``missing`` if
            it cannot; an :class:`LPIPSMetric` instance is used as is (share one between
            scorers); ``None`` skips LPIPS (recorded as missing, "disabled").
        clinical: also compute the clinical group (needs metal masks and pixel spacing).
        device: where tensor work runs (LPIPS runs where its model is).
        reference: the reference's kind (``"gsi"``, ``"ideal"``): names cached states.
        states: a reference-state cache (:class:`benchmark.refcache.ReferenceCache`) or
            ``None`` (everything computed here).
        only: compute only these metric names (others are not reported at all).
        resources: further shared objects the computations may use (e.g. ``"aapm"``: the
            anchor provider of protocol aapm-ctmar-2024).
    """

    def __init__(self, protocol: Protocol = MARBENCH_V1, *,
                 lpips: LPIPSMetric | str | None = "auto", clinical: bool = True,
                 device: torch.device | str = "cpu", reference: str = "gsi",
                 states: ReferenceStates | None = None,
                 only: Sequence[str] | None = None,
                 resources: dict[str, Any] | None = None) -> None:
        self.protocol = protocol
        self.device = torch.device(device)
        self.clinical = clinical
        self.reference = reference
        self.states = states
        self.resources = dict(resources or {})
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
        self.metrics: dict[str, MetricSpec] = {}
        for name, spec in metrics_for_protocol(protocol.version, per_slice=True).items():
            if only is not None and name not in only:
                continue
            why = self._unmet(spec)
            if why is None:
                self.metrics[name] = spec
            else:
                self.missing.setdefault(name, why)
        self._rows: list[dict[str, float | str]] = []

    def _unmet(self, spec: MetricSpec) -> str | None:
        if spec.group == "clinical" and not self.clinical:
            return "clinical metrics disabled by the caller"
        if "lpips_weights" in spec.needs and self.lpips is None:
            return self.missing.get("lpips", "LPIPS is not available")
        for need in spec.needs:
            if need in ("labels", "segmenter"):
                return f"needs {need}, which per-slice scoring does not provide"
        return None

    @property
    def needs_regions(self) -> bool:
        """Whether some computed metric needs the metal mask and pixel spacing."""
        return any(n in ("metal_mask", "pixel_spacing_mm") for s in self.metrics.values()
                   for n in s.needs)

    def update(self, pred_hu: torch.Tensor, reference_hu: torch.Tensor, *,
               metal_mask: torch.Tensor | None = None,
               pixel_spacing_mm: torch.Tensor | Sequence[float] | None = None,
               slice_ids: Sequence[str] | None = None,
               keys: Sequence[tuple[str, int]] | None = None,
               memo: BatchMemo | None = None, rows: Sequence[int] | None = None,
               batch_size: int | None = None) -> list[dict[str, float | str]]:
        """Score a batch; return (and keep) one row per slice: ``{"slice": id, metric: value}``.

        Args:
            pred_hu, reference_hu: (B, 1, H, W) HU on the same native grid.
            metal_mask: (B, 1, H, W) bool (needed by the clinical metrics).
            pixel_spacing_mm: (B,) native pixel size in mm (needed by the clinical metrics).
            slice_ids: B labels for the rows (default: running numbers).
            keys: B (patient_id, slice_index) pairs naming the slices in the reference cache
                (needed when the scorer has ``states``).
            memo, rows, batch_size: share the scored image's derived quantities with the other
                comparisons of the batch (``rows`` index this view in a batch of
                ``batch_size``).
        """
        if pred_hu.shape != reference_hu.shape or pred_hu.ndim != 4 or pred_hu.shape[1] != 1:
            raise ValueError(f"Scorer.update: pred {tuple(pred_hu.shape)} and reference "
                             f"{tuple(reference_hu.shape)} must both be (B, 1, H, W)")
        b = pred_hu.shape[0]
        ids = list(slice_ids) if slice_ids is not None else [
            str(len(self._rows) + i) for i in range(b)]
        if len(ids) != b:
            raise ValueError(f"Scorer.update: {len(ids)} slice_ids for a batch of {b}")
        spacing = None
        if self.needs_regions:
            if metal_mask is None or pixel_spacing_mm is None:
                raise ValueError("Scorer.update: clinical metrics need metal_mask and "
                                 "pixel_spacing_mm (or build the Scorer with clinical=False)")
            if metal_mask.shape != pred_hu.shape:
                raise ValueError(f"Scorer.update: metal_mask {tuple(metal_mask.shape)} must "
                                 f"match the images {tuple(pred_hu.shape)}")
            spacing = torch.as_tensor(pixel_spacing_mm, dtype=torch.float64).reshape(-1)
            if spacing.numel() != b:
                raise ValueError(f"Scorer.update: {spacing.numel()} pixel spacings for a batch "
                                 f"of {b}")
        if self.states is not None and keys is None:
            raise ValueError("Scorer.update: a scorer with a reference cache needs keys")
        view = ScoreView(
            pred_hu=pred_hu.to(self.device), reference_hu=reference_hu.to(self.device),
            metal_mask=metal_mask, pixel_spacing_mm=spacing, protocol=self.protocol,
            reference=self.reference,
            slice_ids=list(keys) if keys is not None else [(str(i), 0) for i in ids],
            resources={**self.resources,
                       **({"lpips": self.lpips} if self.lpips is not None else {})},
            device=self.device, rows=None if rows is None else list(rows),
            batch_size=batch_size, memo=memo, states=self.states)
        values = compute_metrics(list(self.metrics.values()), view)
        out: list[dict[str, float | str]] = [
            {"slice": ids[i], **{k: float(values[k][i]) for k in self.metrics}}
            for i in range(b)]
        self._rows.extend(out)
        return out

    def add_rows(self, rows: Sequence[dict[str, float | str]]) -> None:
        """Keep rows scored earlier (served from the reference cache) as if updated here."""
        for r in rows:
            missing = [k for k in self.metrics if k not in r]
            if missing:
                raise ValueError(f"Scorer.add_rows: row {r.get('slice')!r} lacks {missing}")
        self._rows.extend(dict(r) for r in rows)

    def per_slice(self) -> list[dict[str, float | str]]:
        """Every row so far (copies), in update order."""
        return [dict(r) for r in self._rows]

    def summary(self) -> dict[str, Summary]:
        """Aggregate of each computed metric (see :func:`summarize` for inf / NaN)."""
        return {k: summarize([float(r[k]) for r in self._rows], spec.higher_is_better)
                for k, spec in self.metrics.items()}
