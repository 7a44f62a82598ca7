"""``artifactgsi``: simulate, build, inspect and share the ArtifactGSI dataset.

Quick start::

    artifactgsi simulate --out data/raw --patients 6 --slices 16 --size 128
    artifactgsi preview data/raw/SIM0000000 --out preview.png
    artifactgsi import-aapm AAPM_CASES/ data/aapm     # the AAPM CT-MAR challenge's format
"""

from __future__ import annotations

from pathlib import Path

import typer

from .cli_common import (
    cli_errors,
    describe_error,
    exit_on_sigterm,
    fail,
    read_secret,
    scheduler_option,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help=__doc__.split("\n\n")[0] + "\n\nQuick start: artifactgsi simulate --out "
                       "data/raw && artifactgsi build data/raw data/built")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Errors of a Hub call a user can act on (no network, unknown repo or revision...)."""
    import huggingface_hub.errors as hf

    from .errors import ArtifactGSIError

    names = ("HfHubHTTPError", "LocalEntryNotFoundError", "RevisionResolutionError",
             "OfflineModeIsEnabled")
    return (ArtifactGSIError, OSError, *(getattr(hf, n) for n in names if hasattr(hf, n)))


def _hub_message(err: BaseException, path: Path | None = None) -> str:
    """The error printer's line, prefixed by the class name of ``huggingface_hub``'s errors
    (``RepositoryNotFoundError: ...`` says more than the bare message)."""
    from .errors import ArtifactGSIError

    line = describe_error(err, path)
    if isinstance(err, ArtifactGSIError) or (isinstance(err, OSError) and err.errno):
        return line
    return f"{type(err).__name__}: {line}"


@app.callback()
def _main() -> None:
    """A terminated command (SIGTERM) unwinds like an interrupted one and cleans up."""
    exit_on_sigterm()


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` is meant as a folder rather than a Hub repo id (``name`` or
    ``namespace/name``)."""
    import os

    return (text.startswith((".", "/", "~")) or text.endswith(("/", os.sep))
            or os.sep in text.replace("/", "") or text.count("/") > 1
            or (os.altsep is not None and os.altsep in text))


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="raw output folder (raw layout)"),
    preset: str = typer.Option(None, "--preset",
                               help="dataset size and composition: 'standard' (the paper's "
                                    "115 implant + 42 clean patients, 8 slices) or a YAML "
                                    "preset file; --patients / --clean-patients / --slices "
                                    "override it"),
    patients: int = typer.Option(None, help="patients with implants [default: 6]"),
    slices: int = typer.Option(None, help="slices per series [default: 16]"),
    size: int = typer.Option(128, help="image matrix in pixels (both series)"),
    seed: int = typer.Option(None, help="dataset seed (results are deterministic on CPU) "
                             "[default: the preset's, else 0]"),
    clean_patients: int = typer.Option(None, help="patients without implant (ordinary only) "
                                       "[default: 2]"),
    thickness: float = typer.Option(2.5, help="slice thickness and spacing in mm"),
    kev: float = typer.Option(None, help="GSI virtual monochromatic energy in keV"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    workers: int = typer.Option(1, help="worker processes (a local Dask cluster)"),
    scheduler: str = scheduler_option(),
    scanner: str = typer.Option("gsi-hd", help="scanner profile of the ordinary series: "
                                "gsi-hd (the GSI scanner, training domain), long-geometry, "
                                "low-dose-100kv, aapm (the AAPM CT-MAR challenge's "
                                "geometry; see docs/simulator.md)"),
    split_hint: str = typer.Option("", "--split-hint",
                                   help="implant patients' split_hint: '' (the builder "
                                        "splits), train, test (a held-out set), or "
                                        "generalization (ordinary series only, no GSI)"),
    ideal_scanner: bool = typer.Option(False, "--ideal-scanner",
                                       help="no bowtie, scatter or focal-spot / detector blur "
                                            "(the simulator of earlier releases)"),
) -> None:
    """Simulate ArtifactGSI-Sim: paired ordinary / GSI DICOM series, labels, ideal images."""
    from dataclasses import replace

    from rich.console import Console

    from .physics.scan import GSIProtocol
    from .presets import load_preset
    from .simulate import SimConfig, simulate_dataset

    with cli_errors(ValueError, path=out):
        if kev is not None and not 40 <= kev <= 140:
            raise ValueError(f"--kev must be within 40..140 keV, got {kev}")
        gsi = GSIProtocol() if kev is None else replace(GSIProtocol(), kev=kev)
        mix = None
        if preset is not None:
            p = load_preset(preset)
            patients = p.implant_patients if patients is None else patients
            clean_patients = p.clean_patients if clean_patients is None else clean_patients
            slices = p.slices if slices is None else slices
            seed = p.seed if seed is None and p.seed is not None else seed
            mix = p.mix_for(patients) if p.implant_mix and patients >= 0 else None
        patients = 6 if patients is None else patients
        clean_patients = 2 if clean_patients is None else clean_patients
        slices = 16 if slices is None else slices
        seed = 0 if seed is None else seed
        cfg = SimConfig(patients=patients, slices=slices, size=size, seed=seed,
                        clean_patients=clean_patients, thickness_mm=thickness, device=device,
                        gsi=gsi, scanner=scanner, split_hint=split_hint, implant_mix=mix,
                        preset=p.name if preset is not None else "",
                        scanner_physics=not ideal_scanner)
        stats = simulate_dataset(cfg, out, workers=workers, scheduler=scheduler)
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

    with cli_errors(RuntimeError, ValueError, path=out):
        path = preview_patient(patient, out or patient / "preview.png", slice_index)
    typer.echo(str(path))


@app.command()
def build(
    raw: Path = typer.Argument(..., help="raw folder: manifest.csv + <patient>/ordinary, gsi"),
    out: Path = typer.Argument(..., help="output folder of the built dataset"),
    workers: int = typer.Option(1, help="patient worker processes (a local Dask cluster)"),
    scheduler: str = scheduler_option(),
    resume: bool = typer.Option(False, help="continue an interrupted build"),
    overwrite: bool = typer.Option(False, help="replace a previous build in OUT"),
    seed: int = typer.Option(0, help="seed of the patient-level train/test split"),
    secret_file: Path = typer.Option(None, help="file whose bytes key the patient pseudonyms "
                                                "(default: a random key per build)"),
) -> None:
    """Build registered ordinary/GSI pairs from raw DICOM as a Hugging Face dataset."""
    from rich.console import Console
    from rich.markup import escape

    from .build import build_dataset

    with cli_errors(ValueError, path=out):
        secret = read_secret(secret_file) if secret_file else None
        # Warnings are printed once, by the builder, as they are found.
        report = build_dataset(raw, out, workers=workers, resume=resume, overwrite=overwrite,
                               seed=seed, secret=secret, scheduler=scheduler)
    c = Console()
    rows = ", ".join(f"{cfg}/{split} {n}" for cfg, splits in report.rows.items()
                     for split, n in splits.items())
    c.print(f"[green]built[/] {escape(str(out))}: {rows} rows in {report.seconds:.1f} s "
            f"({report.slices_per_s:.1f} slices/s)")


@app.command("import-aapm")
def import_aapm_cmd(
    src: Path = typer.Argument(..., help="folder of AAPM CT-MAR cases (Baseline/, Target/, "
                                         "Mask/ with *_metalart_img*, *_nometal_img*, "
                                         "*_metalonlymask_img* .raw files)"),
    out: Path = typer.Argument(..., help="output folder: a dataset with the `aapm` config"),
    split: str = typer.Option("test", help="split the cases go to: test or train"),
    image_size: int = typer.Option(512, help="image matrix of the files (the challenge: 512)"),
    require_sinograms: bool = typer.Option(False, help="refuse cases without both sinograms"),
    limit: int = typer.Option(None, min=1, help="import only the first N cases"),
    overwrite: bool = typer.Option(False, help="replace OUT"),
) -> None:
    """Import AAPM CT-MAR Grand Challenge cases as the `aapm` config of a dataset (Parquet,
    card, manifest); then `marbench run --data OUT --config aapm --protocol aapm-ctmar-2024`."""
    from rich.console import Console
    from rich.markup import escape

    from .formats.aapm import import_aapm

    with cli_errors(ValueError, path=out):
        report = import_aapm(src, out, split=split, image_size=image_size,
                             require_sinograms=require_sinograms, limit=limit,
                             overwrite=overwrite)
    c = Console()
    for w in report.warnings:
        c.print(f"[yellow]warning[/]: {escape(w)}")
    c.print(f"[green]imported[/] {report.rows} cases into {escape(str(out))} "
            f"(config aapm, split {report.split})")


@app.command()
def info(
    dataset: str = typer.Argument(..., help="a built dataset folder or a Hub repo id"),
    revision: str = typer.Option(None, help="Hub revision (for a repo id)"),
) -> None:
    """Rows per config/split, patients, implant types and registration quality."""
    from .dataset import info as _info
    from .dataset import print_info

    path = Path(dataset)
    if not path.exists() and _looks_like_path(dataset):
        fail(f"{dataset}: no such folder (give a built dataset folder, or a Hub repo id such "
              "as namespace/name)")
    try:
        if not path.exists():
            from .hub import download as _download

            path = _download(dataset, revision)
        print_info(_info(path))
    except (ValueError, *_hub_errors()) as e:
        hint = "" if path.exists() else f"{dataset}: no such folder; as a Hub repo id: "
        fail(f"{hint}{_hub_message(e)}")


@app.command()
def download(
    repo_id: str = typer.Argument(None, help="Hub dataset repo (default: the project's)"),
    revision: str = typer.Option(None, help="branch, tag or commit"),
    local_dir: Path = typer.Option(None, help="copy into this folder instead of the HF cache"),
) -> None:
    """Download a built dataset from the Hugging Face Hub and verify it against its manifest."""
    from .hub import download as _download

    try:
        typer.echo(str(_download(repo_id, revision, local_dir)))
    except _hub_errors() as e:
        fail(_hub_message(e, local_dir))


@app.command()
def push(
    out: Path = typer.Argument(..., help="a built dataset folder"),
    repo_id: str = typer.Argument(..., help="Hub dataset repo, e.g. you/ArtifactGSI"),
    public: bool = typer.Option(False, "--public", help="create the repo public (default private)"),
    revision: str = typer.Option(None, help="branch to push to"),
) -> None:
    """Validate a built dataset folder and publish it to the Hub (private by default)."""
    from .hub import push as _push

    try:
        typer.echo(_push(out, repo_id, private=not public, revision=revision))
    except _hub_errors() as e:
        fail(_hub_message(e, out))


if __name__ == "__main__":
    app()
