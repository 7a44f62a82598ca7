"""``artifactgsi``: simulate, build, inspect and share the ArtifactGSI dataset.

Quick start::

    artifactgsi simulate --out data/raw --patients 6 --slices 16 --size 128
    artifactgsi preview data/raw/SIM0000000 --out preview.png
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help=__doc__.split("\n\n")[0] + "\n\nQuick start: artifactgsi simulate --out "
                       "data/raw && artifactgsi build data/raw data/built")


def _fail(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="raw output folder (DESIGN 3.1 layout)"),
    patients: int = typer.Option(6, help="patients with implants"),
    slices: int = typer.Option(16, help="slices per series"),
    size: int = typer.Option(128, help="image matrix in pixels (both series)"),
    seed: int = typer.Option(0, help="dataset seed (results are deterministic on CPU)"),
    clean_patients: int = typer.Option(2, help="patients without implant (ordinary only)"),
    thickness: float = typer.Option(2.5, help="slice thickness and spacing in mm"),
    kev: float = typer.Option(None, help="GSI virtual monochromatic energy in keV"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    workers: int = typer.Option(1, help="worker processes"),
) -> None:
    """Simulate ArtifactGSI-Sim: paired ordinary / GSI DICOM series, labels, ideal images."""
    from dataclasses import replace

    from rich.console import Console

    from .physics.scan import GSIProtocol
    from .simulate import SimConfig, simulate_dataset

    gsi = GSIProtocol() if kev is None else replace(GSIProtocol(), kev=kev)
    cfg = SimConfig(patients=patients, slices=slices, size=size, seed=seed,
                    clean_patients=clean_patients, thickness_mm=thickness, device=device,
                    gsi=gsi)
    try:
        if kev is not None and not 40 <= kev <= 140:
            raise ValueError(f"--kev must be within 40..140 keV, got {kev}")
        stats = simulate_dataset(cfg, out, workers=workers)
    except ValueError as e:
        _fail(str(e))
    Console().print(f"[green]wrote[/] {stats['patients']} patients to {out} "
                    f"({stats['simulated']} simulated in {stats['seconds']:.1f} s)")


@app.command()
def preview(
    patient: Path = typer.Argument(..., help="a raw patient folder, e.g. data/raw/SIM0000000"),
    out: Path = typer.Option(None, help="PNG path (default: PATIENT/preview.png)"),
    slice_index: int = typer.Option(None, "--slice", help="slice of the GSI grid"),
) -> None:
    """Write a PNG panel ordinary | GSI | clean | labels at WL 500 / WW 2000."""
    from .preview import preview_patient

    try:
        path = preview_patient(patient, out or patient / "preview.png", slice_index)
    except (FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(str(path))


@app.command()
def download(
    repo_id: str = typer.Argument(None, help="Hub dataset repo (default: the project's)"),
    revision: str = typer.Option(None, help="branch, tag or commit"),
    local_dir: Path = typer.Option(None, help="copy into this folder instead of the HF cache"),
) -> None:
    """Download a built dataset from the Hugging Face Hub and verify it against its manifest."""
    from .hub import DatasetFolderError
    from .hub import download as _download

    try:
        typer.echo(str(_download(repo_id, revision, local_dir)))
    except DatasetFolderError as e:
        _fail(str(e))


@app.command()
def push(
    out: Path = typer.Argument(..., help="a built dataset folder"),
    repo_id: str = typer.Argument(..., help="Hub dataset repo, e.g. you/ArtifactGSI"),
    public: bool = typer.Option(False, "--public", help="create the repo public (default private)"),
    revision: str = typer.Option(None, help="branch to push to"),
) -> None:
    """Validate a built dataset folder and publish it to the Hub (private by default)."""
    from .hub import DatasetFolderError
    from .hub import push as _push

    try:
        typer.echo(_push(out, repo_id, private=not public, revision=revision))
    except DatasetFolderError as e:
        _fail(str(e))


if __name__ == "__main__":
    app()
