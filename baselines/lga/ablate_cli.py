"""``marbench ablate``: the paper's Table 1 for LGA (plugged into ``marbench`` through the
``marbench.commands`` entry-point group, so the harness does not know about LGA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def ablate(
    config: str = typer.Option("lga-cpu", help="base config (lga-cpu, lga-paper or a YAML "
                                                "file); each row = it + the row's switches"),
    data: str = typer.Option(..., "--data", "-d", help="built dataset folder or Hub repo id"),
    out: Path = typer.Option(Path("results/ablation"), "--out", "-o",
                             help="output folder (OUT/<row>/run, OUT/<row>/results, "
                                  "ablation.json, ablation.md)"),
    rows: str = typer.Option(None, help="comma-separated subset: baseline, arvae, "
                                        "arvae-loss, arvae-an, full (default: all five)"),
    max_steps: int = typer.Option(None, min=1, help="cap on optimiser steps per stage"),
    resume: bool = typer.Option(False, help="continue rows already started in OUT"),
    split: str = typer.Option("test", help="split to score"),
    device: str = typer.Option("cpu", help="device for scoring"),
    limit: int = typer.Option(None, min=1, help="score only the first N slices"),
    lpips_weights: Path = typer.Option(None, help="AlexNet weights file for LPIPS"),
    no_lpips: bool = typer.Option(False, "--no-lpips", help="skip LPIPS (reported missing)"),
) -> None:
    """Train and score the five rows of the paper's Table 1 for LGA (Baseline, +ARVAE,
    +ARVAE+Loss, +ARVAE+AN, full) and print them beside the paper's numbers."""
    from artifactgsi.cli_common import cli_errors
    from baselines.lga.ablate import run_ablation
    from baselines.lga.train import TrainError
    from benchmark.errors import MARBenchError

    lpips: Any = None if no_lpips else (lpips_weights or "auto")
    with cli_errors(MARBenchError, TrainError, ValueError, path=out):
        run_ablation(config, data, out, rows=rows, max_steps=max_steps, resume=resume,
                     split=split, device=device, lpips=lpips, limit=limit)
