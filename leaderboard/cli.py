"""``leaderboard``: keep a board of metal artifact reduction results (and ``marbench submit``).

    marbench submit results/li --board org/marbench-board --card card.yaml   # opens a PR
    leaderboard init board/ --reference results/identity --title "MARBench"
    leaderboard verify board/ --data path/to/ArtifactGSI [--entry li/1] [--reproduce]
    leaderboard render board/ --out site/
    leaderboard serve board/
    leaderboard season new seasons/2026-1 --name 2026-1          # a hidden test set
    leaderboard evaluate board/ --season seasons/2026-1 --package dist/my_mar-1.0.whl \
        --card card.yaml [--weights org/my-mar-weights]            # the hidden track
    leaderboard publish org/marbench-board --push                  # the Hub's eval results

A board is a folder or a Hub dataset repo id (``org/name``; ``--revision`` picks a commit,
branch or ``refs/pr/N``). Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Keep a MARBench leaderboard: init, submit, verify, render, serve; "
                       "hidden seasons (season, evaluate); the Hub's evaluation results "
                       "(publish).")
season_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Hidden-track seasons: private test sets from a secret seed.")
app.add_typer(season_app, name="season")


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
    own_dataset: list[str] = typer.Option(["artifactgsi/ArtifactGSI-Sim"], "--own-dataset",
                                          help="dataset ids that count as this benchmark's "
                                          "data in the cards' training_data (the zero-shot "
                                          "column), besides the reference's Hub repo"),
) -> None:
    """Create BOARD/board.json from a reference run."""
    from benchmark.results import Results

    from .board import BOARD_FILE, BootstrapSettings, config_from_results

    try:
        cfg = config_from_results(Results.load(reference), title, metric or None,
                                  run_dir=reference)
        cfg.bootstrap = BootstrapSettings(n_resamples=n_resamples, unit=unit)  # type: ignore[arg-type]
        cfg.own_datasets = list(own_dataset)
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
    from .verify import (
        VerifyUnavailable,
        submitted_hidden,
        submitted_verifications,
        verify_entry,
    )

    b = _open(board, revision)
    try:
        targets = [b.entry(k) for k in entry] if entry else b.entries
        forged = submitted_verifications(b)
        forged_hidden = submitted_hidden(b)
    except KeyError as e:
        raise _fail(str(e.args[0])) from None
    except LeaderboardError as e:
        raise _fail(str(e)) from None
    for key, reason in forged.items():
        b.entry(key).problems.append(reason)
    for key, reason in forged_hidden.items():
        typer.echo(f"{key}: rejected")
        typer.echo(f"  - {reason}")
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


@season_app.command("new")
def season_new(
    folder: Path = typer.Argument(..., help="the season's private folder (never published)"),
    name: str = typer.Option(..., "--name", help="the season's name, e.g. 2026-1"),
    preset: str = typer.Option("standard", help="simulator preset (name or YAML file)"),
    patients: int = typer.Option(23, min=1, help="implant patients [default: the standard "
                                 "preset's test split]"),
    slices: int = typer.Option(None, min=1, help="slices per patient [default: the preset's]"),
    size: int = typer.Option(128, min=16, help="image size in pixels"),
    scanner: str = typer.Option(None, help="scanner profile of the ordinary series"),
) -> None:
    """Draw a secret seed and make the season's hidden test set (FOLDER/built) and its card
    (FOLDER/season.json, the only file ever published)."""
    from .errors import LeaderboardError
    from .season import new_season

    try:
        card = new_season(folder, name, preset=preset, patients=patients, slices=slices,
                          size=size, scanner=scanner)
    except LeaderboardError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(_os_error(f"making the season in {folder}", e)) from None
    typer.echo(f"season {card.name}: {len(card.slices)} hidden slices of {card.n_patients} "
               f"patients, {card.image_shape[0]} x {card.image_shape[1]} px; card "
               f"{folder / 'season.json'}; keep {folder / 'secret'} and {folder / 'built'} "
               "private")


def _options(items: list[str]) -> dict[str, object]:
    import json

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"--option {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@app.command("evaluate")
def evaluate(
    board: Path = typer.Argument(..., help="local board folder"),
    season: Path = typer.Option(..., "--season", help="the season's private folder"),
    package: Path = typer.Option(..., "--package", help="the method's wheel, sdist or "
                                 "project folder (registers a marbench.methods entry point)"),
    card: Path = typer.Option(..., "--card", help="the method card (YAML)"),
    method: str = typer.Option(None, "--method", help="entry-point name, when the package "
                               "registers several"),
    weights: str = typer.Option(None, "--weights", help="weights: a file / folder here, or a "
                                "Hub model repo id org/name[@revision]"),
    weights_option: str = typer.Option("weights", help="the method option that receives the "
                                       "weights' path"),
    option: list[str] = typer.Option([], "--option", "-O", help="method setting KEY=VALUE"),
    time_limit: float = typer.Option(3600.0, min=1, help="seconds for the whole run"),
    memory_mib: int = typer.Option(8192, min=64, help="memory limit (MiB)"),
    threads: int = typer.Option(1, min=1, help="CPU threads given to the method"),
    lpips_weights: str = typer.Option(None, help="AlexNet weights for LPIPS, when the board "
                                      "ranks LPIPS"),
    clinical: bool = typer.Option(False, "--clinical/--no-clinical", help="also compute the "
                                  "clinical metrics"),
    replace: bool = typer.Option(False, "--replace", help="evaluate a version again"),
    workdir: Path = typer.Option(None, help="folder for the private work files"),
) -> None:
    """Install a method in a sandbox, run it without network on the season's hidden set,
    score it and file only the scores on the board (hidden/<season>/<method>/<version>/)."""
    from .hidden import EvaluateError, evaluate_method
    from .sandbox import Limits

    try:
        ev, dest = evaluate_method(
            board, season, package, card, method=method, weights=weights,
            weights_option=weights_option, options=_options(option),
            limits=Limits(time_s=time_limit, memory_mib=memory_mib, threads=threads),
            lpips_weights=lpips_weights, clinical=clinical, workdir=workdir, replace=replace)
    except EvaluateError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(_os_error("evaluating the method", e)) from None
    typer.echo(f"{dest}: {ev.method} {ev.version}: {ev.status}"
               + (f" ({ev.reason}: {ev.message})" if ev.status == "failed" else ""))
    if ev.efficiency is not None:
        e = ev.efficiency
        typer.echo(f"  measured: {e.seconds_per_slice:.3g} s/slice, peak "
                   f"{e.peak_memory_mib:.0f} MiB"
                   + (f", {e.parameters} parameters" if e.parameters is not None else ""))


@app.command("publish")
def publish_cmd(
    board: str = typer.Argument(..., help="board folder or Hub dataset repo id"),
    repo: str = typer.Option(None, "--repo", help="the board's Hub dataset repo id (the "
                             "benchmark) [default: BOARD when it is a repo id]"),
    revision: str = typer.Option(None, help="board revision (Hub boards)"),
    out: Path = typer.Option(None, "--out", "-o", help="also write the files here"),
    push: bool = typer.Option(False, "--push", help="commit eval.yaml to the board repo and "
                              "open a pull request on each model repo"),
    board_pr: bool = typer.Option(False, "--board-pr", help="with --push: eval.yaml as a "
                                  "pull request on the board repo"),
) -> None:
    """Write the Hub's evaluation results of the board: eval.yaml (the benchmark
    declaration) and, for each vouched-for entry whose card names a hub_model, its
    .eval_results/*.yaml, linked to the entry."""
    from .board import is_local_board
    from .hubresults import EVAL_YAML, PublishError, build, dump, publish, write_local

    b = _open(board, revision)
    board_repo = repo or (None if is_local_board(board) else board)
    if board_repo is None:
        raise _fail("--repo: name the board's Hub dataset repo (the benchmark the results "
                    "point to)")
    pub = build(b, board_repo)
    try:
        if b.revision is None:  # a local board keeps its own declaration
            from benchmark.results import atomic_write_text

            atomic_write_text(b.root / EVAL_YAML, dump(pub.eval_yaml))
        if out is not None:
            for p in write_local(pub, out):
                typer.echo(f"wrote {p}")
    except OSError as e:
        raise _fail(_os_error("writing the evaluation results", e)) from None
    typer.echo(f"{len(pub.eval_yaml['tasks'])} tasks; results for "
               f"{len(pub.models)} entries on {len({m.model for m in pub.models})} model repos")
    if push:
        try:
            for target, url in publish(pub, board_repo, board_pr=board_pr).items():
                typer.echo(f"{target}: {url}")
        except PublishError as e:
            raise _fail(str(e)) from None


if __name__ == "__main__":
    app()
