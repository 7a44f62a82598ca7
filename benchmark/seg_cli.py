"""``marbench seg``: the downstream segmenter's checks.

- ``marbench seg sufficiency``: does the ordinary image hold the anatomy? Trains (or takes) a
  GSI-input and an ordinary-input segmenter with the same recipe and scores each on its own
  modality of the test split, beside the paper's mIoU (0.9265 GSI, 0.9213 ordinary).
- ``marbench seg score``: Table 2 for runs of ``marbench run``: the segmenter on each run's
  predictions, on GSI and on the ideal image, per class and per implant type.
- ``marbench seg figure``: label overlays of the segmenter on ordinary, method, GSI and ideal.

Heavy libraries are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Downstream segmentation: information sufficiency, Table 2, figures.")


def _fail(message: str) -> None:
    from artifactgsi.cli_common import fail

    fail(message)


def _model_or_train(model: Path | None, input_: str, config: str, data: str, out: Path,
                    resume: bool) -> Path:
    from .segmentation import train

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
    from .results import atomic_write_text
    from .seg_report import PAPER_SUFFICIENCY, sufficiency_table
    from .segmentation import evaluate_segmenter, load_segmenter, open_labelled, segmenter_identity

    out = Path(out)
    test = open_labelled(data, split)
    result: dict[str, dict[str, float]] = {}
    identity: dict[str, dict] = {}
    for input_, given in (("gsi", gsi_model), ("ordinary", ordinary_model)):
        folder = _model_or_train(given, input_, config, data, out, resume)
        seg = load_segmenter(folder)
        if seg.input != input_:
            raise ValueError(f"{folder}: this segmenter was trained on {seg.input!r} images; "
                             f"--{input_.replace('_', '-')}-model needs one trained on "
                             f"{input_!r}")
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


@app.command("sufficiency")
def sufficiency_command(
    data: str = typer.Option(..., help="built dataset folder or Hub repo id (with labels)"),
    config: str = typer.Option("seg-cpu", help="segmenter config: seg-cpu, seg-paper, a YAML"),
    out: Path = typer.Option(Path("runs/seg-sufficiency"),
                             help="folder for the two runs (gsi/, ordinary/) and the report"),
    gsi_model: Path = typer.Option(None, help="use this GSI-trained segmenter (no training)"),
    ordinary_model: Path = typer.Option(None, help="use this ordinary-trained segmenter"),
    split: str = typer.Option("test", help="split both are scored on"),
) -> None:
    """Information sufficiency: GSI-input vs ordinary-input segmenter (same recipe), each
    scored on its own modality of the test split, beside the paper's 0.9265 / 0.9213."""
    from rich.console import Console
    from rich.markdown import Markdown

    from .seg_report import sufficiency_table

    try:
        res = sufficiency(data, config, out, gsi_model, ordinary_model, split)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
        return
    Console().print(Markdown(sufficiency_table(res["gsi"], res["ordinary"])))
    Console().print(f"written: {out / 'sufficiency.md'}, {out / 'sufficiency.json'}",
                    highlight=False)


def score_runs(runs: list[Path], data: str, segmenter: str, split: str = "test",
               ideal: bool = True) -> list[tuple[str, dict]]:
    """Score each run's predictions (and GSI, ideal once) with ``segmenter``: (label, summary
    dict with ``per_implant``) pairs for :func:`benchmark.seg_report.segmentation_table`."""
    from .segmentation import evaluate_segmenter, load_segmenter, open_labelled, score_predictions

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


@app.command("score")
def score_command(
    runs: list[Path] = typer.Argument(..., help="run folders of `marbench run` "
                                                "(with predictions/)"),
    data: str = typer.Option(..., help="the dataset the runs scored (with labels)"),
    segmenter: str = typer.Option(..., help="segmenter model folder or Hub repo id"),
    split: str = typer.Option("test"),
    paper: bool = typer.Option(False, help="add the paper's Table 2 rows"),
    markdown: Path = typer.Option(None, help="also write the tables to this .md file"),
) -> None:
    """Table 2 layout: the GSI-trained segmenter on each run's output, on GSI and on the
    ideal image; per class, mIoU, and per implant type."""
    from rich.console import Console

    from .results import atomic_write_text
    from .seg_report import segmentation_rich, segmentation_table

    try:
        rows = score_runs(runs, data, segmenter, split)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
        return
    Console().print(segmentation_rich(rows, paper))
    if markdown is not None:
        atomic_write_text(markdown, segmentation_table(rows, paper))


@app.command("figure")
def figure_command(
    run: Path = typer.Argument(..., help="run folder of `marbench run` (with predictions/)"),
    data: str = typer.Option(..., help="the dataset the run scored"),
    segmenter: str = typer.Option(..., help="segmenter model folder or Hub repo id"),
    out: Path = typer.Option(None, help="PNG path (default RUN/segmentation.png)"),
    split: str = typer.Option("test"),
    slices: int = typer.Option(3, help="how many slices (the most metal, one per patient)"),
) -> None:
    """Label overlays of the segmenter on ordinary, the method's output, GSI and ideal."""
    try:
        path = segmentation_figure_for_run(run, data, segmenter, out, split, slices)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
        return
    print(path)


def segmentation_figure_for_run(run: Path, data: str, segmenter: str, out: Path | None = None,
                                split: str = "test", n: int = 3) -> Path:
    """The overlay figure for ``n`` slices of a run (most metal pixels, one per patient)."""
    import numpy as np
    import pyarrow.parquet as pq

    from .seg_figures import OverlaySlice, overlay_figure
    from .segmentation import load_segmenter, open_labelled

    seg = load_segmenter(segmenter)
    ls = open_labelled(data, split)
    run = Path(run)
    found = sorted((run / "predictions").glob(f"{split}-*.parquet"))
    if not found:
        raise FileNotFoundError(f"{run}: no predictions/{split}-*.parquet")
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
        raise ValueError(f"{found[0]}: none of its slices is a labelled row of {ls.where}")
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

