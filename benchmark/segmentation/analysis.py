"""The downstream segmenter at work: scores of a segmenter on a split's images or on a run's
predictions, the information-sufficiency check, the paper's Table 2 rows for runs, and label
overlays of a run (what ``marbench seg ...`` prints; :mod:`benchmark.segmentation.cli` is its thin
command line).

- :func:`evaluate_segmenter`: IoU / mIoU on an image column (``gsi``, ``ordinary``,
  ``ideal``), dataset-level, per patient and per implant type.
- :func:`score_predictions`: the same on a run's predictions Parquet.
- :func:`sufficiency`: does the ordinary image hold the anatomy? A GSI-input and an
  ordinary-input segmenter with the same recipe, each scored on its own modality, beside the
  paper's mIoU (0.9265 GSI, 0.9213 ordinary).
- :func:`score_runs`: Table 2 rows for runs (each run's predictions, GSI and ideal).
- :func:`segmentation_figure_for_run`: overlays on ordinary, the method's output, GSI, ideal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics.segmentation import SegmentationScorer
from .model import (
    LabelledSplit,
    PredictionsNotFoundError,
    SegmentationDataError,
    Segmenter,
    SegmenterMismatchError,
    load_segmenter,
    open_labelled,
    segmenter_identity,
)


@torch.no_grad()
def evaluate_rows(seg: Segmenter, split: LabelledSplit, positions: Sequence[int],
                  image: str, batch_size: int = 8) -> SegmentationScorer:
    """Score ``seg`` on the ``image`` column (``"gsi"``, ``"ordinary"``, ``"ideal"``) of the
    rows at ``positions``, against their labels on the native grid."""
    if image not in split.columns:
        raise SegmentationDataError(f"{split.where} has no {image!r} column")
    dev = next(seg.parameters()).device
    scorer = SegmentationScorer(seg, dev)
    for i in range(0, len(positions), batch_size):
        pos = list(positions[i:i + batch_size])
        a = split.arrays(pos, (image, "labels"))
        imgs = torch.from_numpy(np.asarray(a[image], np.float32))[:, None]
        scorer.update(imgs, torch.from_numpy(a["labels"].astype(np.uint8)),
                      [split.patient_ids[p] for p in pos], [split.slice_index[p] for p in pos])
    return scorer


@dataclass
class SegEvaluation:
    """Scores of one segmenter on one image column of a split."""

    image: str
    n_slices: int
    summary: dict[str, float]
    per_patient: dict[str, dict[str, float]]
    per_implant: dict[str, dict[str, float]]
    rows: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "n_slices": self.n_slices, "summary": self.summary,
                "per_patient": self.per_patient, "per_implant": self.per_implant}


def evaluate_segmenter(seg: Segmenter, data: str | Path | LabelledSplit, split: str = "test",
                       image: str | None = None, batch_size: int = 8) -> SegEvaluation:
    """IoU / mIoU of ``seg`` on a split's ``image`` column (default: the image it was trained
    on), dataset-level, per patient and per implant type."""
    from ..metrics.segmentation import seg_summary_by

    ls = data if isinstance(data, LabelledSplit) else open_labelled(data, split)
    image = image or seg.input
    positions = list(range(len(ls.rows)))
    sc = evaluate_rows(seg, ls, positions, image, batch_size)
    rows = sc.per_slice()
    return SegEvaluation(image=image, n_slices=len(rows), summary=sc.summary(),
                         per_patient=sc.per_patient(),
                         per_implant=seg_summary_by(rows, ls.implant_types), rows=rows)


def score_predictions(seg: Segmenter, data: str | Path | LabelledSplit,
                      predictions: str | Path, split: str = "test",
                      batch_size: int = 8) -> SegEvaluation:
    """IoU / mIoU of ``seg`` applied to a run's predictions Parquet (``patient_id``,
    ``slice_index``, ``prediction`` int16 HU), against the labels of the same slices.

    Args:
        predictions: the Parquet file, or a run folder (``predictions/<split>-*.parquet``).

    Raises:
        SegmentationDataError: a predicted slice has no labelled row in the split.
    """
    import pyarrow.parquet as pq

    from ..metrics.segmentation import seg_summary_by

    path = Path(predictions)
    if path.is_dir():
        found = sorted((path / "predictions").glob(f"{split}-*.parquet"))
        if not found:
            raise PredictionsNotFoundError(f"{path}: no predictions/{split}-*.parquet (run "
                                    "`marbench run` without --no-save-predictions)")
        path = found[0]
    ls = data if isinstance(data, LabelledSplit) else open_labelled(data, split)
    at = {(p, s): i for i, (p, s) in enumerate(zip(ls.patient_ids, ls.slice_index,
                                                   strict=True))}
    table = pq.read_table(path)
    pids = [str(p) for p in table.column("patient_id").to_pylist()]
    sidx = [int(s) for s in table.column("slice_index").to_pylist()]
    missing = [(p, s) for p, s in zip(pids, sidx, strict=True) if (p, s) not in at]
    if missing:
        raise SegmentationDataError(f"{path}: {len(missing)} predicted slice(s) have no "
                                    f"labelled row in {ls.where}, e.g. patient "
                                    f"{missing[0][0]!r} slice {missing[0][1]}")
    dev = next(seg.parameters()).device
    scorer = SegmentationScorer(seg, dev)
    implants: list[str] = []
    for i in range(0, len(pids), batch_size):
        chunk = table.slice(i, batch_size)
        pred = np.stack([np.asarray(r, np.float32)
                         for r in chunk.column("prediction").to_pylist()])
        pos = [at[(p, s)] for p, s in zip(pids[i:i + batch_size], sidx[i:i + batch_size],
                                          strict=True)]
        labels = ls.arrays(pos, ("labels",))["labels"].astype(np.uint8)
        scorer.update(torch.from_numpy(pred)[:, None], torch.from_numpy(labels),
                      [ls.patient_ids[p] for p in pos], [ls.slice_index[p] for p in pos])
        implants += [ls.implant_types[p] for p in pos]
    rows = scorer.per_slice()
    return SegEvaluation(image=str(path), n_slices=len(rows), summary=scorer.summary(),
                         per_patient=scorer.per_patient(),
                         per_implant=seg_summary_by(rows, implants), rows=rows)



# ----------------------------------------------------------------------------- checks


def _model_or_train(model: Path | None, input_: str, config: str, data: str, out: Path,
                    resume: bool) -> Path:
    from .training import train

    if model is not None:
        return model
    run = out / input_
    if (run / "model" / "config.json").is_file():  # written once, when training finished
        return run / "model"
    return train(config, data, run, resume=resume and (run / "config.json").is_file(),
                 overrides={"input": input_})


def sufficiency(data: str, config: str = "seg-cpu", out: Path = Path("runs/seg-sufficiency"),
                gsi_model: Path | None = None, ordinary_model: Path | None = None,
                split: str = "test", resume: bool = True) -> dict[str, dict[str, float]]:
    """Train (or take) the GSI-input and ordinary-input segmenters with one recipe and score
    each on its own modality of ``split``; write ``out/sufficiency.{json,md}``.

    A run folder ``out/<input>`` that already holds a finished model is reused; an
    interrupted one resumes.

    Returns:
        ``{"gsi": summary, "ordinary": summary}`` (``iou.<class>`` and ``miou``).
    """
    from ..results import atomic_write_text
    from .report import PAPER_SUFFICIENCY, sufficiency_table

    out = Path(out)
    test = open_labelled(data, split)
    result: dict[str, dict[str, float]] = {}
    identity: dict[str, dict] = {}
    for input_, given in (("gsi", gsi_model), ("ordinary", ordinary_model)):
        folder = _model_or_train(given, input_, config, data, out, resume)
        seg = load_segmenter(folder)
        if seg.input != input_:
            raise SegmenterMismatchError(
                f"{folder}: this segmenter was trained on {seg.input!r} images; "
                f"--{input_.replace('_', '-')}-model needs one trained on {input_!r}")
        ev = evaluate_segmenter(seg, test, split, image=input_)
        result[input_] = ev.summary
        identity[input_] = {**segmenter_identity(seg), "per_implant": ev.per_implant,
                            "per_patient": ev.per_patient, "n_slices": ev.n_slices}
    md = sufficiency_table(result["gsi"], result["ordinary"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sufficiency.md", md)
    atomic_write_text(out / "sufficiency.json", json.dumps(
        {"split": split, "config": config, "scores": result, "segmenters": identity,
         "paper_miou": PAPER_SUFFICIENCY}, indent=1, allow_nan=True))
    return result


def score_runs(runs: list[Path], data: str, segmenter: str, split: str = "test",
               ideal: bool = True) -> list[tuple[str, dict]]:
    """Score each run's predictions (and GSI, ideal once) with ``segmenter``: (label, summary
    dict with ``per_implant``) pairs for
    :func:`benchmark.segmentation.report.segmentation_table`."""
    seg = load_segmenter(segmenter)
    ls = open_labelled(data, split)
    out: list[tuple[str, dict]] = []
    for run in runs:
        run = Path(run)
        name = run.name
        res_file = run / "results.json" if run.is_dir() else run
        if res_file.is_file():
            name = json.loads(res_file.read_text(encoding="utf-8"))["method"]["name"]
        ev = score_predictions(seg, ls, run if run.is_dir() else run.parent, split)
        label = "identity (ordinary)" if name == "identity" else name
        out.append((label, {**ev.summary, "per_implant": ev.per_implant,
                            "n_slices": ev.n_slices}))
    images = ["gsi"] + (["ideal"] if ideal and "ideal" in ls.columns else [])
    for image in images:
        ev = evaluate_segmenter(seg, ls, split, image=image)
        out.append((f"{'GSI' if image == 'gsi' else image} (reference)",
                    {**ev.summary, "per_implant": ev.per_implant, "n_slices": ev.n_slices}))
    return out


def segmentation_figure_for_run(run: Path, data: str, segmenter: str, out: Path | None = None,
                                split: str = "test", n: int = 3) -> Path:
    """The overlay figure for ``n`` slices of a run (most metal pixels, one per patient)."""
    import pyarrow.parquet as pq

    from .figures import OverlaySlice, overlay_figure

    seg = load_segmenter(segmenter)
    ls = open_labelled(data, split)
    run = Path(run)
    found = sorted((run / "predictions").glob(f"{split}-*.parquet"))
    if not found:
        raise PredictionsNotFoundError(f"{run}: no predictions/{split}-*.parquet")
    name = run.name
    if (run / "results.json").is_file():
        name = json.loads((run / "results.json").read_text(encoding="utf-8"))["method"]["name"]
    table = pq.read_table(found[0])
    preds = {(str(p), int(s)): i for i, (p, s) in enumerate(zip(
        table.column("patient_id").to_pylist(), table.column("slice_index").to_pylist(),
        strict=True))}
    cols = [c for c in ("ordinary", "gsi", "ideal", "metal_mask") if c in ls.columns]
    best: dict[str, tuple[int, int]] = {}
    for pos in range(len(ls.rows)):
        key = (ls.patient_ids[pos], ls.slice_index[pos])
        if key not in preds:
            continue
        metal = int(ls.arrays([pos], ("labels",))["labels"][0].__eq__(1).sum())
        if metal > best.get(key[0], (-1, 0))[0]:
            best[key[0]] = (metal, pos)
    chosen = sorted(best.values(), reverse=True)[:n]
    if not chosen:
        raise SegmentationDataError(f"{found[0]}: none of its slices is a labelled row of "
                                    f"{ls.where}")
    rows = []
    for _, pos in chosen:
        a = ls.arrays([pos], [*cols, "labels"])
        key = (ls.patient_ids[pos], ls.slice_index[pos])
        pred = np.asarray(table.column("prediction")[preds[key]].as_py(), np.float32)
        imgs = {"ordinary": a["ordinary"][0], name: pred, "GSI": a["gsi"][0]}
        if "ideal" in a and a["ideal"][0] is not None and not (
                np.asarray(a["ideal"][0]).dtype == object):
            imgs["ideal"] = a["ideal"][0]
        rows.append(OverlaySlice(f"{key[0]} slice {key[1]}",
                                 {k: np.asarray(v, np.float32) for k, v in imgs.items()},
                                 np.asarray(a["labels"][0], np.uint8)))
    return overlay_figure(seg, rows, out or run / "segmentation.png",
                          title=f"segmenter labels on ordinary, {name}, GSI"
                                + (", ideal" if any("ideal" in r.images for r in rows) else ""))
