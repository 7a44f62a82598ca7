"""``leaderboard``: keep a board of metal artifact reduction results (and ``marbench submit``).

    marbench submit results/li --board org/marbench-board --card card.yaml   # opens a PR
    leaderboard init board/ --reference results/identity --title "MARBench"
    leaderboard verify board/ --data path/to/ArtifactGSI [--entry li/1] [--reproduce]
    leaderboard render board/ --out site/
    leaderboard serve board/

A board is a folder or a Hub dataset repo id (``org/name``; ``--revision`` picks a commit,
branch or ``refs/pr/N``). Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Keep a MARBench leaderboard: init, submit, verify, render, serve.")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _os_error(what: str, e: OSError) -> str:
    """``what``: the file and what the system said (full disk, no permission, ...)."""
    if e.filename:
        return f"{e.filename}: {e.strerror or e} ({what})"
    return f"{what}: {e.strerror or e}"


def submit(
    results_dir: Path = typer.Argument(..., help="run folder of `marbench run` "
                                                 "(results.json, predictions/)"),
    board: str = typer.Option(..., "--board", help="Hub dataset repo id (org/name) or a "
                                                   "local board folder"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate only; send nothing"),
    card: Path = typer.Option(None, "--card", help="method card YAML/JSON "
                                                   "[default: RESULTS_DIR/card.yaml]"),
    replace: bool = typer.Option(False, "--replace", help="local boards: replace an "
                                                          "existing entry of this version"),
) -> None:
    """Validate a run and submit it to a leaderboard: a pull request on a Hub board, or a
    new entry in a local board folder."""
    from .board import is_local_board
    from .errors import LeaderboardError
    from .submit import add_to_folder, board_config, open_pull_request, prepare

    local = is_local_board(board)
    try:
        config = board_config(board)
        sub = prepare(results_dir, config, card,
                      board_root=Path(board).expanduser() if local else None)
    except (LeaderboardError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(_os_error(f"reading {results_dir} or the board {board}", e)) from None
    for n in sub.notes:
        typer.echo(f"note: {n}", err=True)
    if not sub.valid:
        typer.echo(f"{results_dir}: not accepted by {board}:", err=True)
        for p in sub.problems:
            typer.echo(f"  - {p}", err=True)
        raise typer.Exit(2)
    files = ", ".join([*sub.files, "card.yaml"])
    if dry_run:
        typer.echo(f"valid: would add {sub.entry}/ ({files}) to {board}")
        return
    try:
        if local:
            dest = add_to_folder(sub, Path(board).expanduser(), replace=replace)
            typer.echo(f"added {dest}")
        else:
            url = open_pull_request(sub, board)
            typer.echo(f"opened pull request: {url}")
    except (FileExistsError, ValueError) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(_os_error(f"adding the entry to {board}; the board is unchanged", e)) \
            from None
    except Exception as e:  # Hub errors (network, access, a refused commit) name the board
        raise _fail(f"{board}: the pull request could not be opened "
                    f"({type(e).__name__}: {e})") from None


app.command("submit")(submit)


@app.command("init")
def init(
    board: Path = typer.Argument(..., help="folder of the new board"),
    reference: Path = typer.Option(..., "--reference", help="a trusted run over the whole "
                                   "test split (e.g. the identity baseline): fixes the data, "
                                   "protocol and test slices"),
    title: str = typer.Option("MARBench leaderboard", help="page title"),
    metric: list[str] = typer.Option([], "--metric", help="ranked column, "
                                     "COMPARISON.METRIC (first = primary) "
                                     "[default: PSNR, SSIM(, LPIPS) vs GSI, then vs ideal]"),
    n_resamples: int = typer.Option(2000, min=100, help="bootstrap resamples"),
    unit: str = typer.Option("patient", help="bootstrap unit: patient, slice, two-stage"),
) -> None:
    """Create BOARD/board.json from a reference run."""
    from benchmark.results import Results

    from .board import BOARD_FILE, BootstrapSettings, config_from_results

    try:
        cfg = config_from_results(Results.load(reference), title, metric or None,
                                  run_dir=reference)
        cfg.bootstrap = BootstrapSettings(n_resamples=n_resamples, unit=unit)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    if (board / BOARD_FILE).exists():
        raise _fail(f"{board / BOARD_FILE} exists; remove it to start a new board")
    try:
        board.mkdir(parents=True, exist_ok=True)
        cfg.save(board / BOARD_FILE)
    except OSError as e:
        raise _fail(_os_error(f"writing {board / BOARD_FILE}", e)) from None
    typer.echo(f"{board / BOARD_FILE}: {len(cfg.slices)} test slices, protocol "
               f"{cfg.protocols[0]}, ranked by {', '.join(m.label for m in cfg.metrics)}")


def _open(board: str, revision: str | None):  # type: ignore[no-untyped-def]
    from .board import Board
    from .errors import LeaderboardError

    try:
        return Board.open(board, revision)
    except (LeaderboardError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(_os_error(f"reading the board {board}", e)) from None


@app.command("verify")
def verify(
    board: str = typer.Argument(..., help="board folder or Hub dataset repo id"),
    data: str = typer.Option(..., "--data", help="the reference data (built dataset folder "
                                                 "or Hub repo id; may be private)"),
    revision: str = typer.Option(None, help="board revision (branch, commit, refs/pr/N)"),
    data_revision: str = typer.Option(None, help="Hub revision of --data "
                                                 "[default: the board's dataset revision]"),
    entry: list[str] = typer.Option([], "--entry", help="METHOD/VERSION to check "
                                                        "[default: all]"),
    reproduce: bool = typer.Option(False, "--reproduce", help="also re-run registered "
                                   "methods and compare their predictions"),
    write: bool = typer.Option(True, "--write/--no-write", help="save verification.json "
                                                                "in each entry (local boards)"),
) -> None:
    """Re-score entries' predictions against the reference data with their recorded
    protocol: verified, reproduced, or rejected with the reason."""
    from .errors import LeaderboardError
    from .verify import VerifyUnavailable, submitted_verifications, verify_entry

    b = _open(board, revision)
    try:
        targets = [b.entry(k) for k in entry] if entry else b.entries
        forged = submitted_verifications(b)
    except KeyError as e:
        raise _fail(str(e.args[0])) from None
    except LeaderboardError as e:
        raise _fail(str(e)) from None
    for key, reason in forged.items():
        b.entry(key).problems.append(reason)
    rev = data_revision or b.config.dataset.revision
    failed = False
    for e in targets:
        try:
            v = verify_entry(e, b.config, data, revision=rev, reproduce_method=reproduce,
                             write=write and b.revision is None, root=b.trusted_root,
                             others=b.entries, chosen=bool(entry))
        except VerifyUnavailable as err:
            typer.echo(f"{e.key}: not checked: {err}", err=True)
            failed = True
            continue
        except OSError as err:
            typer.echo(f"{e.key}: not checked: {_os_error('verifying it', err)}", err=True)
            failed = True
            continue
        typer.echo(f"{e.key}: {v.status}")
        for r in v.reasons:
            typer.echo(f"  - {r}")
        for n in v.notes:
            typer.echo(f"  · {n}")
    if failed:
        raise typer.Exit(1)


@app.command("render")
def render(
    board: str = typer.Argument(..., help="board folder or Hub dataset repo id"),
    out: Path = typer.Option(Path("site"), "--out", "-o", help="output folder"),
    revision: str = typer.Option(None, help="board revision (Hub boards)"),
) -> None:
    """Write the board as a static page: OUT/index.html."""
    from .render import render_board

    b = _open(board, revision)
    try:
        path = render_board(b, out)
    except OSError as e:
        raise _fail(_os_error(f"writing the page into {out}; the page there is unchanged",
                              e)) from None
    typer.echo(str(path))


@app.command("screenshot")
def screenshot_cmd(
    site: Path = typer.Argument(..., help="folder written by `leaderboard render`"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write"),
    browser: str = typer.Option("/usr/bin/chromium", help="Chromium executable"),
) -> None:
    """Save a full-page PNG of a rendered board (headless Chromium via playwright)."""
    from .render import screenshot

    try:
        typer.echo(str(screenshot(site / "index.html", out, browser)))
    except (ImportError, FileNotFoundError) as e:
        raise _fail(str(e)) from None


@app.command("list")
def list_entries(
    board: str = typer.Argument(..., help="board folder or Hub dataset repo id"),
    revision: str = typer.Option(None, help="board revision (Hub boards)"),
) -> None:
    """Print the board's entries and their status as JSON."""
    import json

    from .board import board_summary

    typer.echo(json.dumps(board_summary(_open(board, revision)), indent=2))


@app.command("serve")
def serve(
    board: str = typer.Argument(..., help="board folder or Hub dataset repo id"),
    revision: str = typer.Option(None, help="board revision (Hub boards)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(7860, help="port"),
) -> None:
    """Serve the board as a Gradio app (needs the `board` extra of artifactgsi)."""
    from .serve import BoardExtraMissing
    from .serve import serve as run

    try:
        run(_open(board, revision), host=host, port=port, block=True)
    except BoardExtraMissing as e:
        raise _fail(str(e)) from None


if __name__ == "__main__":
    app()
