"""Scoring one batch: the comparisons (method vs GSI, vs the ideal image, GSI vs the ideal
image) through the metric registry with the reference cache, and the frozen segmenter."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import PairsBatch, PairsSplit
from ..method import MARMethod
from ..metrics import LPIPSMetric, LPIPSUnavailable, Protocol, Scorer
from ..metrics.compute import BatchMemo
from ..metrics.registry import metrics_for_protocol
from ..refcache import ReferenceCache
from ..results import (
    GSI_VS_IDEAL,
    METHOD_VS_GSI,
    METHOD_VS_IDEAL,
    DetectRecord,
    MetricDefinition,
    SegmentationRecord,
    SliceRecord,
    segmentation_summaries,
)


def lpips_metric_for(lpips: str | Path | LPIPSMetric | None,
                  device: torch.device) -> tuple[LPIPSMetric | None, str | None]:
    """(metric, None) or (None, reason it is missing)."""
    if lpips is None:
        return None, "disabled by the user (--no-lpips)"
    if isinstance(lpips, LPIPSMetric):
        return lpips, None
    weights = None if lpips == "auto" else Path(lpips)
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"--lpips-weights {weights}: no such file (fetch the backbone "
                                "with `marbench weights lpips`, or leave the option out)")
    try:
        return LPIPSMetric(weights=weights, device=device), None
    except LPIPSUnavailable as e:
        return None, str(e)


#: Environment variable naming the default segmenter (model folder or Hub repo id).
SEGMENTER_ENV = "MARBENCH_SEGMENTER"


def load_segmenter_for(source: str | Path | None, pairs: PairsSplit, dev: torch.device
               ) -> tuple[Any, SegmentationRecord]:
    """(segmenter or None, the record's skeleton: identity, or why it is missing)."""
    source = source or os.environ.get(SEGMENTER_ENV) or None
    if source is None:
        return None, SegmentationRecord(
            available=False, reason="no segmenter given (--segmenter DIR_OR_REPO or "
            f"${SEGMENTER_ENV}; train one with `marbench train segmenter`)")
    if not pairs.has_labels:
        return None, SegmentationRecord(
            available=False, reason="the split has no labels: the segmentation scores need "
            "the dataset's `labels` column")
    from ..segmentation import load_segmenter, segmenter_identity

    seg = load_segmenter(source)
    seg = seg.to(dev).eval()
    ident = segmenter_identity(seg)
    note = None
    trained_on, scored = ident.get("dataset_manifest_sha256"), pairs.source.manifest_sha256
    # Comparability by content: a segmenter that records the content of the split it trained
    # on is on this data when this dataset's train split has that content (a rebuild with
    # another pseudonymisation key has another manifest but the same images).
    from ..data import split_content_sha256

    trained_content = ident.get("train_content_sha256")
    folder = getattr(pairs.source, "folder", None)
    here = split_content_sha256(folder, "pairs", "train") if folder is not None else None
    if trained_content and here:
        trained_on, scored = trained_content, here
    if trained_on and scored and trained_on != scored:
        # Legitimate (a cross-scanner set, a Hub segmenter), but the scores then measure the
        # segmenter's domain gap too: say so in the run and in results.json.
        note = (f"the segmenter {source} was trained on another dataset, or another build of "
                f"it (manifest sha256 "
                f"{trained_on[:12]}…, this one {scored[:12]}…); its IoU is comparable only "
                "between runs scored with this same segmenter on this same data")
    return seg, SegmentationRecord(available=True, segmenter=ident, note=note)


def segment_batch(seg: Any, batch: PairsBatch, pred_hu: torch.Tensor,
                   records: list[SliceRecord], dev: torch.device,
                   cache: ReferenceCache | None = None,
                   record: SegmentationRecord | None = None) -> None:
    """Per-class intersection / union counts of the segmenter on the method's output, GSI
    and (where present) the ideal image, against the labels, into ``records``. The counts on
    GSI and the ideal image are reference states (the same for every method): with a
    ``cache`` they are computed once per dataset revision and segmenter."""
    from ..metrics.segmentation import count_rows, slice_counts

    if batch.labels is None or batch.has_labels is None:
        return
    sel = [i for i in range(len(records)) if bool(batch.has_labels[i])]
    if not sel:
        return
    t = torch.tensor(sel)
    labels = batch.labels[t]
    images = {"method": (sel, pred_hu[t]), "gsi": (sel, batch.gsi_hu[t])}
    if batch.ideal_hu is not None:
        both = [i for i in sel if bool(batch.has_ideal[i])]
        if both:
            images["ideal"] = (both, batch.ideal_hu[torch.tensor(both)])
    seg_id = (record.segmenter.get("weights_sha256") if record is not None else None) or ""

    def counts(idx: list[int], hu: torch.Tensor) -> list[dict[str, float]]:
        lab = labels if idx is sel else batch.labels[torch.tensor(idx)]
        with torch.no_grad():
            pred = seg.predict(hu.to(dev, torch.float32)).cpu()
        inter, union = slice_counts(pred, lab)
        return count_rows(inter, union)

    for image, (idx, hu) in images.items():
        if image == "method" or cache is None or not seg_id:
            rows = counts(idx, hu)
        else:
            keys = [(batch.input.patient_id[i], int(batch.input.slice_index[i])) for i in idx]
            state_key = f"segmentation-counts:{seg_id}"
            got = cache.get_many(state_key, image, keys)
            todo = [j for j, g in enumerate(got) if g is None]
            if todo:
                # The whole batch, as the uncached path does, so counts match it exactly.
                fresh = counts(idx, hu)
                cache.put_many(state_key, image, [keys[j] for j in todo],
                               [{k: np.asarray(v) for k, v in fresh[j].items()} for j in todo])
                rows = fresh
            else:
                rows = [{k: float(v) for k, v in g.items()} for g in got]  # type: ignore[union-attr]
        for i, row in zip(idx, rows, strict=True):
            if records[i].segmentation is None:
                records[i].segmentation = {}
            records[i].segmentation[image] = row


def segmentation_record(skeleton: SegmentationRecord,
                         slices: list[SliceRecord]) -> SegmentationRecord:
    if not skeleton.available:
        return skeleton
    summary, by_implant, per_patient = segmentation_summaries(slices)
    n = sum(1 for s in slices if s.segmentation)
    if n == 0:
        return SegmentationRecord(available=False, segmenter=skeleton.segmenter,
                                  reason="none of the scored slices has labels")
    return skeleton.model_copy(update={"summary": summary, "by_implant": by_implant,
                                       "per_patient": per_patient, "n_slices": n})


def score_batch(batch: PairsBatch, pred_hu: torch.Tensor, scorers: dict[str, Scorer],
                 cache: ReferenceCache | None = None) -> list[SliceRecord]:
    inp = batch.input
    b = inp.batch_size
    ids = [inp.describe_slice(i) for i in range(b)]
    keys = [(inp.patient_id[i], int(inp.slice_index[i])) for i in range(b)]
    scores: list[dict[str, dict[str, float]]] = [{} for _ in range(b)]
    memo = BatchMemo()  # the method's derived quantities, shared by its two comparisons

    def put(key: str, idx: list[int], rows: list[dict[str, float | str]]) -> None:
        for i, r in zip(idx, rows, strict=True):
            scores[i][key] = {m: float(v) for m, v in r.items() if m != "slice"}

    mask, spacing = inp.metal_mask, inp.pixel_spacing_mm
    put(METHOD_VS_GSI, list(range(b)),
        scorers[METHOD_VS_GSI].update(pred_hu, batch.gsi_hu, metal_mask=mask,
                                      pixel_spacing_mm=spacing, slice_ids=ids, keys=keys,
                                      memo=memo, rows=range(b), batch_size=b))
    if batch.ideal_hu is not None and METHOD_VS_IDEAL in scorers:
        sel = [i for i in range(b) if bool(batch.has_ideal[i])]
        t = torch.tensor(sel)
        ideal = batch.ideal_hu[t]
        kw = {"metal_mask": mask[t], "pixel_spacing_mm": spacing[t],
              "slice_ids": [ids[i] for i in sel], "keys": [keys[i] for i in sel]}
        put(METHOD_VS_IDEAL, sel, scorers[METHOD_VS_IDEAL].update(
            pred_hu[t], ideal, memo=memo, rows=sel, batch_size=b, **kw))
        put(GSI_VS_IDEAL, sel, gsi_vs_ideal(scorers[GSI_VS_IDEAL], batch.gsi_hu[t], ideal,
                                             cache, **kw))
    return [SliceRecord(patient_id=inp.patient_id[i], slice_index=int(inp.slice_index[i]),
                        z_mm=batch.z_mm[i], implant_type=inp.implant_type[i],
                        metal_pixels=int(mask[i].sum()), scores=scores[i]) for i in range(b)]


def gsi_vs_ideal(scorer: Scorer, gsi: torch.Tensor, ideal: torch.Tensor,
                  cache: ReferenceCache | None, *, keys: list[tuple[str, int]],
                  slice_ids: list[str], **kw: Any) -> list[dict[str, float | str]]:
    """GSI scored against the ideal image: the same for every method, so with a ``cache`` it
    is scored once per dataset revision (the whole batch, as the uncached path does)."""
    if cache is None or not keys:
        return scorer.update(gsi, ideal, keys=keys, slice_ids=slice_ids, **kw)
    names = list(scorer.metrics)
    state_key = "comparison:gsi_vs_ideal:" + ",".join(names)
    got = cache.get_many(state_key, "ideal", keys)
    if any(g is None for g in got):
        rows = scorer.update(gsi, ideal, keys=keys, slice_ids=slice_ids, **kw)
        todo = [j for j, g in enumerate(got) if g is None]
        cache.put_many(state_key, "ideal", [keys[j] for j in todo],
                       [{m: np.asarray(float(rows[j][m])) for m in names} for j in todo])
        return rows
    rows = [{"slice": sid, **{m: float(g[m]) for m in names}}  # type: ignore[index]
            for sid, g in zip(slice_ids, got, strict=True)]
    scorer.add_rows(rows)
    return rows


def reference_cache_for(where: str | Path | None, pairs: PairsSplit, config: str, split: str,
                     protocol: Protocol, lpips_metric: LPIPSMetric | None,
                     seg_record: SegmentationRecord) -> ReferenceCache:
    """The reference cache of this dataset revision, split and protocol (in memory only when
    switched off or when the dataset has no manifest to key it)."""
    from ..refcache import LIMIT_ENV, ReferenceCache, default_cache_root, source_fingerprint

    if where == "auto":
        root = default_cache_root()
    elif where is None or str(where).lower() == "off":
        root = None
    else:
        root = Path(where)
    manifest = pairs.source.manifest_sha256
    if manifest is None:
        root = None
    modules = {str(s.compute).partition(":")[0]
               for s in metrics_for_protocol(protocol.version, per_slice=True).values()}
    modules |= {"benchmark.metrics.protocol", "benchmark.metrics.compute",
                "benchmark.metrics.segmentation", __name__}
    try:
        gb = float(os.environ.get(LIMIT_ENV, "16"))
    except ValueError:
        raise ValueError(f"${LIMIT_ENV}={os.environ[LIMIT_ENV]!r}: give a size in GB") from None
    key = {"dataset_manifest_sha256": manifest, "config": config, "split": split,
           "protocol": protocol.to_dict(), "code": source_fingerprint(sorted(modules)),
           "lpips_weights": lpips_metric.weights_fingerprint if lpips_metric else None}
    return ReferenceCache(root, key, max_bytes=int(gb * 1e9))


def detect_block(lesions: str | Path, mar: MARMethod, dev: torch.device, batch_size: int
            ) -> tuple[DetectRecord, dict[str, MetricDefinition]]:
    """The prepared method on a lesion study (:mod:`benchmark.detect`): the ``detect`` block
    and the definitions of the registry's ``detect`` metrics."""
    from ..detect.study import detect_record
    from ..metrics.registry import metrics_in_group

    t0 = time.perf_counter()
    block = detect_record(lesions, mar, device=str(dev), batch_size=batch_size, prepared=True)
    record = DetectRecord(**block, seconds=round(time.perf_counter() - t0, 2))
    return record, {k: MetricDefinition.from_spec(s)
                    for k, s in metrics_in_group("detect").items()}
