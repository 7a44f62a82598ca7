"""``marbench apply``: run a method on one's own CT series, write a derived DICOM series.

Registered in the ``marbench.commands`` entry-point group; light at import time (typer only).
"""

from __future__ import annotations

from pathlib import Path

import typer


def apply(
    input_dir: Path = typer.Argument(..., metavar="INPUT",
                                     help="a DICOM series folder, or a folder of several "
                                          "series with --series UID"),
    out_dir: Path = typer.Argument(..., metavar="OUTPUT_DIR",
                                   help="folder of the derived series (must not exist "
                                        "unless --overwrite)"),
    method: str = typer.Option(..., "--method", "-m",
                               help="registered name (see `marbench ls`) or pkg.module:Class"),
    option: list[str] = typer.Option([], "--option", "-O",
                                     help="method setting KEY=VALUE (repeatable)"),
    series: str = typer.Option(None, "--series", help="SeriesInstanceUID to use when INPUT "
                                                      "holds several series"),
    implant_type: str = typer.Option(None, "--implant-type",
                                     help="none, hip_prosthesis, fracture_fixation or "
                                          "spinal_fixation (required by methods that use it, "
                                          "e.g. lga)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT_DIR"),
    deidentify: bool = typer.Option(False, "--deidentify",
                                    help="write only allow-listed technical attributes and "
                                         "keyed pseudonyms into the headers"),
    secret_file: Path = typer.Option(None, "--secret-file",
                                     help="with --deidentify: file whose bytes key the "
                                          "pseudonyms (must not be empty; default: a random "
                                          "key)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(4, min=1, help="slices per reduce() call"),
    report: Path = typer.Option(None, "--report",
                                help="also write reference-free panels and measures "
                                     "(no reference image needed) into this folder"),
) -> None:
    """Apply a MAR method to a CT series and write the corrected images as a derived DICOM
    series (same study, frame of reference and geometry; new series)."""
    from rich.console import Console
    from rich.markup import escape

    from artifactgsi.cli_common import check_device, cli_errors, parse_key_values, read_secret

    from ..errors import MARBenchError
    from .reference_free import run_reference_free
    from .series import apply_to_series, check_report_target

    with cli_errors(MARBenchError, ImportError, TypeError, ValueError, path=out_dir):
        options = parse_key_values(option)
        check_device(device)
        secret = read_secret(secret_file) if secret_file else None
        if report is not None:  # checked before the derived series is written
            report_source = out_dir_source(input_dir, series)
            check_report_target(input_dir, out_dir, report, overwrite)
        res = apply_to_series(method, input_dir, out_dir, options=options, series_uid=series,
                              implant_type=implant_type, overwrite=overwrite,
                              deidentify=deidentify, secret=secret, device=device,
                              batch_size=batch_size)
    if report is not None:
        with cli_errors(MARBenchError, ImportError, TypeError, ValueError, path=report):
            run_reference_free(method, report_source, report, options=options,
                               implant_type=implant_type, device=device,
                               batch_size=batch_size, overwrite=overwrite)
    c = Console()
    for w in res.warnings:
        c.print(f"[yellow]warning[/] {escape(w)}", highlight=False)
    sha = f", weights {res.weights_sha256[:12]}" if res.weights_sha256 else ""
    c.print(f"[green]wrote[/] {escape(str(res.out_dir))}: {res.n_slices} slices by "
            f"{escape(res.method)} v{escape(res.version)}{sha} in {res.seconds:.1f} s "
            f"(series {res.series_uid})", highlight=False)
    if report is not None:
        c.print(f"[green]wrote[/] {escape(str(report))}/reference_free.json and panels/",
                highlight=False)


def out_dir_source(input_dir: Path, series: str | None) -> Path:
    """The folder :func:`benchmark.apply.run_reference_free` reads for ``--report``: the
    folder of the series that ``apply`` selects (so both read the same slices)."""
    from .series import select_series

    folders = {f.parent for f in select_series(input_dir, series)}
    if len(folders) != 1:
        from .series import ApplyError

        raise ApplyError(f"--report needs the series ({series or 'of INPUT'}) in a folder of "
                         "its own")
    return folders.pop()


def generalization(
    data: Path = typer.Argument(..., help="a DICOM series folder, a folder of series folders "
                                          "(one per patient) or a built dataset folder"),
    out: Path = typer.Argument(..., help="output folder (reference_free.json, panels/)"),
    method: str = typer.Option(..., "--method", "-m",
                               help="registered name (see `marbench ls`) or pkg.module:Class"),
    option: list[str] = typer.Option([], "--option", "-O",
                                     help="method setting KEY=VALUE (repeatable)"),
    split: str = typer.Option("test", help="split of a built dataset"),
    implant_type: str = typer.Option(None, "--implant-type",
                                     help="implant type for DICOM input (LGA needs it)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(4, min=1, help="slices per reduce() call"),
) -> None:
    """Run a method on data without reference images (e.g. another scanner): Fig. 4b-style
    panels (ordinary | method, window L 500 / W 2000 HU) and reference-free measures."""
    from rich.console import Console
    from rich.markup import escape

    from artifactgsi.cli_common import check_device, cli_errors, parse_key_values

    from ..errors import MARBenchError
    from .reference_free import run_reference_free

    with cli_errors(MARBenchError, ImportError, TypeError, ValueError, path=out):
        check_device(device)
        doc = run_reference_free(method, data, out, options=parse_key_values(option),
                                 split=split, implant_type=implant_type, device=device,
                                 batch_size=batch_size, overwrite=overwrite)
    mean = doc["mean"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None or v != v else f"{v:.1f}"

    Console().print(
        f"[green]wrote[/] {escape(str(out))}: {len(doc['patients'])} patient(s); no reference "
        f"image: streak-band change {fmt(mean['streak_band_energy_hu2'])} HU^2, far soft-"
        f"tissue noise {fmt(mean['far_soft_tissue_sd_hu'])} HU (ordinary "
        f"{fmt(mean['far_soft_tissue_sd_ordinary_hu'])} HU)", highlight=False)
