"""``marbench detect``: make a lesion study, then score methods on it.

    marbench detect make --out data/lesions --patients 24 --size 128
    marbench detect run --study data/lesions --method identity --method li --method nmar \\
        --method lga -O lga.weights=weights/lga-cpu-demo --out results/detect

Only typer is imported here; the work is done in :mod:`artifactgsi.lesion_study` and
:mod:`benchmark.detect.study`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Lesion detectability (channelized Hotelling observer) and "
                       "hallucination near the metal, on paired simulated scans.\n\n"
                       "Quick start: marbench detect make --out data/lesions; marbench detect "
                       "run --study data/lesions --method identity --method li --out "
                       "results/detect")


def _fail(message: str, code: int = 2) -> typer.Exit:
    from artifactgsi.cli_common import print_error

    return print_error(message, code)


def parse_bands(text: str) -> tuple[tuple[float, float], ...]:
    """``"0-15,15-30,30-60"`` -> ``((0, 15), (15, 30), (30, 60))`` (mm)."""
    out = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            out.append((float(lo), float(hi)))
        except ValueError:
            raise ValueError(f"--bands {text!r}: expected LO-HI[,LO-HI...] in mm, e.g. "
                             "0-15,15-30,30-60") from None
        if not sep:
            raise ValueError(f"--bands {text!r}: expected LO-HI pairs")
    return tuple(out)


def split_method_options(methods: list[str], items: list[str]) -> list[tuple[str, dict]]:
    """``-O METHOD.KEY=VALUE`` sets an option of one method; ``-O KEY=VALUE`` sets it for
    every given method whose constructor takes ``KEY`` (an error when none does). Values are
    JSON when they parse (``3``, ``true``), else strings."""
    from benchmark.registry import get_method

    opts: dict[str, dict[str, Any]] = {m: {} for m in methods}
    from artifactgsi.cli_common import parse_key_values

    for item in items:
        ((key, val),) = parse_key_values([item], option="-O").items()
        target, dot, name = key.rpartition(".")
        if dot and target in opts:
            opts[target][name] = val
            continue
        import inspect

        takers = []
        for m in methods:
            params = inspect.signature(get_method(m).__init__).parameters
            if key in params:
                takers.append(m)
        if not takers:
            raise ValueError(f"-O {item!r}: none of the methods ({', '.join(methods)}) takes "
                             f"an option {key!r}; write METHOD.KEY=VALUE")
        for m in takers:
            opts[m][key] = val
    return [(m, opts[m]) for m in methods]


@app.command("make")
def make_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="new lesion study folder (replaced "
                                                      "when complete)"),
    patients: int = typer.Option(24, min=1, help="implant patients (the implant types "
                                                 "cycle)"),
    slices: int = typer.Option(13, min=1, help="slices per scan"),
    size: int = typer.Option(128, min=32, help="image matrix (pixels)"),
    seed: int = typer.Option(1, help="seed of the patients and lesion positions (the demo "
                                     "dataset's standard preset uses 2025, the earlier small "
                                     "set 0: keep another, so that methods trained on them meet "
                                     "new patients)"),
    lesion: list[str] = typer.Option([], "--lesion", help="lesion type NAME:TISSUE:"
                                     "DIAMETER_MM:CONTRAST_HU (soft or bone; repeatable) "
                                     "[default: soft_hypo:soft:10:-30, soft_hyper:soft:10:30, "
                                     "lytic:bone:10:-100, sclerotic:bone:10:100]"),
    bands: str = typer.Option("0-15,15-30,30-60", help="distance bands from the metal, mm"),
    roi_mm: float = typer.Option(40.0, help="square (mm) around each lesion that no other "
                                            "lesion enters"),
    per_slice: int = typer.Option(1, min=1, help="lesions per evaluated slice, band and "
                                                 "type at most"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
) -> None:
    """Simulate paired scans (without and with lesions, independent noise) of implant patients
    into OUT (study.json, README.md, scans/)."""
    from rich.console import Console

    from artifactgsi.lesion_study import LesionStudyConfig, make_lesion_study
    from artifactgsi.phantoms.lesions import DEFAULT_LESION_TYPES, parse_lesion_type

    try:
        types = tuple(parse_lesion_type(t) for t in lesion) or DEFAULT_LESION_TYPES
        cfg = LesionStudyConfig(patients=patients, slices=slices, size=size, seed=seed,
                                lesion_types=types, bands_mm=parse_bands(bands), roi_mm=roi_mm,
                                per_slice=per_slice, device=device)
        cfg.validate()
    except ValueError as e:
        raise _fail(str(e)) from None
    console = Console()
    from rich.progress import Progress

    with Progress(console=console) as prog:
        task = prog.add_task("simulate", total=patients)
        record = make_lesion_study(cfg, out, progress=lambda n: prog.advance(task, n))
    console.print(f"{record['n_lesions']} lesions in {patients} patients "
                  f"({record['seconds']:.0f} s): {out}")
    for name, counts in record["counts"].items():
        console.print(f"  {name}: " + ", ".join(f"{b} {n}" for b, n in counts.items()))


@app.command("run")
def run_cmd(
    study: Path = typer.Option(..., "--study", "-s", help="lesion study folder "
                                                          "(marbench detect make)"),
    method: list[str] = typer.Option([], "--method", "-m", help="registered name or "
                                     "pkg.module:Class (repeatable)"),
    option: list[str] = typer.Option([], "--option", "-O", help="METHOD.KEY=VALUE, or "
                                     "KEY=VALUE for every method that takes KEY (repeatable)"),
    out: Path = typer.Option(Path("results/detect"), "--out", "-o",
                             help="folder for detect.json, detect.md, detect.png"),
    reference: str = typer.Option(None, help="row the others are tested against [default: "
                                             "the first method]"),
    input_row: bool = typer.Option(False, "--input-row/--no-input-row",
                                   help="also score the uncorrected input as a row"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(4, min=1, help="slices per reduce() call"),
    folds: int = typer.Option(2, min=2, help="cross-validation folds over patients"),
    channels: str = typer.Option("lg", help="lg (Laguerre-Gauss) or gabor"),
    n_channels: int = typer.Option(4, min=1, help="Laguerre-Gauss channels"),
    bootstrap: int = typer.Option(2000, min=0, help="patient resamples"),
    seed: int = typer.Option(0, help="seed of the folds and resamples"),
) -> None:
    """Score the ideal image, GSI and each method on a lesion study: CHO AUC and d' per lesion
    type and distance band, hallucination scores, bootstrap intervals, paired tests."""
    from rich.console import Console
    from rich.markup import escape

    from artifactgsi.errors import ArtifactGSIError
    from benchmark.errors import MARBenchError

    from .study import DetectSettings, run_study

    console = Console()
    try:
        pairs = split_method_options(method, option)
        settings = DetectSettings(channels=channels, n_channels=n_channels, folds=folds,
                                  bootstrap=bootstrap, seed=seed)
        refs = ("ideal", "gsi", "input") if input_row else ("ideal", "gsi")

        def progress(row: str, done: int, total: int) -> None:
            if done == total or done % 16 == 0:
                console.print(f"  {escape(row)}: {done}/{total} slices", highlight=False)

        report = run_study(study, pairs, out, settings, references=refs, reference=reference,
                           device=device, batch_size=batch_size, progress=progress)
    except (MARBenchError, ArtifactGSIError, ImportError, TypeError, ValueError,
            FileNotFoundError) as e:
        raise _fail(str(e)) from None
    from .report import markdown_report

    console.print(markdown_report(report), highlight=False, markup=False)
    console.print(f"{report['timing']['total_s']:.0f} s; results: {out / 'detect.json'}",
                  highlight=False)
