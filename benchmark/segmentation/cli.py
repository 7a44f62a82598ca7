"""``marbench seg``: the downstream segmenter's checks.

- ``marbench seg sufficiency``: does the ordinary image hold the anatomy? Trains (or takes) a
  GSI-input and an ordinary-input segmenter with the same recipe and scores each on its own
  modality of the test split, beside the paper's mIoU (0.9265 GSI, 0.9213 ordinary).
- ``marbench seg score``: Table 2 for runs of ``marbench run``: the segmenter on each run's
  predictions, on GSI and on the ideal image, per class and per implant type.
- ``marbench seg figure``: label overlays of the segmenter on ordinary, method, GSI and ideal.

Each command parses, calls a function of :mod:`benchmark.segmentation.analysis` and prints. Heavy
libraries are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Downstream segmentation: information sufficiency, Table 2, figures.")


def _fail(message: str) -> None:
    from artifactgsi.cli_common import fail

    fail(message)


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

    from .analysis import sufficiency
    from .report import sufficiency_table

    try:
        res = sufficiency(data, config, out, gsi_model, ordinary_model, split)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
        return
    Console().print(Markdown(sufficiency_table(res["gsi"], res["ordinary"])))
    Console().print(f"written: {out / 'sufficiency.md'}, {out / 'sufficiency.json'}",
                    highlight=False)


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

    from ..results import atomic_write_text
    from .analysis import score_runs
    from .report import segmentation_rich, segmentation_table

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
    from .analysis import segmentation_figure_for_run

    try:
        path = segmentation_figure_for_run(run, data, segmenter, out, split, slices)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
        return
    print(path)
