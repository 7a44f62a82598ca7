"""Submitting a run: validate it locally, then add it to a board folder or open a Hub pull
request that adds ``submissions/<method>/<version>/`` to the board's dataset repo."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.results import Results

from .board import (
    BOARD_FILE,
    CARD_FILE,
    Board,
    BoardConfig,
    entry_path,
    is_local_board,
    load_results,
    short,
)
from .card import CardError, MethodCard
from .files import (
    FIGURE_FILE,
    RESULTS_FILE,
    VERIFICATION_FILE,
    EntryFileError,
    inside,
    reencode_png,
)
from .validate import Problem, card_problems, check_results


@dataclass
class Submission:
    """A validated run: the files to add, by their fixed name inside the entry folder
    (a local file to copy, or bytes: the re-encoded figure, results.json as read)."""

    run_dir: Path
    results: Results | None
    card: MethodCard | None
    entry: str                               # submissions/<method>/<version>
    files: dict[str, Path | bytes] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    content_sha256: str | None = None

    @property
    def valid(self) -> bool:
        return not self.problems


def board_config(board: str | Path, revision: str | None = None) -> BoardConfig:
    """``board.json`` of a board folder, or of a Hub dataset repo (at ``revision``).

    Raises:
        FileNotFoundError, ValueError: no board there, or a bad repo id / board.json.
        BoardUnavailable: the Hub board cannot be read.
    """
    if is_local_board(board):
        return BoardConfig.load(Path(board).expanduser())
    from huggingface_hub import hf_hub_download

    from .board import BoardUnavailable, check_repo_id

    check_repo_id(str(board))
    try:
        path = hf_hub_download(str(board), BOARD_FILE, repo_type="dataset",
                               revision=revision or "main")
    except Exception as e:  # every Hub failure (network, 404, 401) names the board
        raise BoardUnavailable(f"{board}: cannot read the board's {BOARD_FILE} from the Hub "
                               f"({type(e).__name__}: {short(str(e), 300)})") from None
    return BoardConfig.load(path)


def prepare(run_dir: Path | str, config: BoardConfig, card: Path | str | None = None,
            board_root: Path | str | None = None) -> Submission:
    """Validate ``run_dir`` (results.json, predictions, card, figure) against a board's
    config. The card is ``card`` if given, else ``run_dir/card.yaml``.

    Only the files the board names are taken, under fixed names: results.json, the
    predictions file results.json records (a plain name under predictions/), the figure
    decoded and re-encoded as ``figure.png``; the card is written from its validated fields.
    A ``verification.json`` in the run folder is never taken (the maintainers write it).
    With ``board_root`` (a local board) a copy of an entry already there is refused.
    """
    run = Path(run_dir)
    if run.is_file():
        run = run.parent
    sub = Submission(run_dir=run, results=None, card=None, entry="")
    try:
        sub.results = load_results(run / RESULTS_FILE)
        sub.files[RESULTS_FILE] = (run / RESULTS_FILE).read_bytes()
    except (FileNotFoundError, ValueError) as e:
        sub.problems.append(Problem("schema", short(str(e))))
    except OSError as e:
        sub.problems.append(Problem("schema", f"{run / RESULTS_FILE}: cannot be read ({e})"))
    try:
        sub.card = MethodCard.load(Path(card) if card else run / CARD_FILE)
    except CardError as e:
        sub.problems.append(Problem("card", short(str(e))))
    if (run / VERIFICATION_FILE).exists():
        sub.notes.append(f"{run / VERIFICATION_FILE} is not submitted: only the board's "
                         "maintainers write verification.json")
    if sub.results is None:
        return sub
    r = sub.results
    if sub.card is not None:
        sub.problems += card_problems(sub.card, config)
    checked = check_results(r, run, config)
    sub.problems += checked.problems
    sub.entry = entry_path(r)
    if checked.scan is not None and r.predictions is not None:
        sub.files[r.predictions.path] = run / r.predictions.path
        sub.content_sha256 = checked.scan.content_sha256
    if r.figure and not any(p.code == "figure_path" for p in sub.problems):
        try:
            sub.files[FIGURE_FILE] = reencode_png(inside(run, r.figure))
        except FileNotFoundError:
            sub.notes.append(f"figure {r.figure!r} is not in {run}; submitted without one")
        except (EntryFileError, OSError) as e:
            sub.problems.append(Problem("figure", short(str(e))))
    if board_root is not None and sub.content_sha256 is not None:
        here = Board.open(Path(board_root).expanduser())
        same = [e.key for e in here.entries if e.content_sha256 == sub.content_sha256
                and f"submissions/{e.key}" != sub.entry]
        if same:
            sub.problems.append(Problem("copy", f"the predictions are those of {same[0]}, "
                                        "already on the board; a copy of another entry is "
                                        "not accepted"))
    return sub


def add_to_folder(sub: Submission, board: Path, replace: bool = False) -> Path:
    """Copy a valid submission into a local board; the entry appears at once (staged in a
    temporary folder, then renamed)."""
    if not sub.valid or sub.card is None:
        raise ValueError("refusing to add an invalid submission")
    dest = board / sub.entry
    if dest.exists() and not replace:
        raise FileExistsError(f"{dest} exists: this method version is already on the board; "
                              "bump the method's version, or pass --replace")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir()
        for rel, src in sub.files.items():
            dst = inside(tmp, rel)  # fixed names: never outside the new entry
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dst.write_bytes(src)
            else:
                shutil.copyfile(src, dst)
        (tmp / CARD_FILE).write_text(sub.card.to_yaml(), encoding="utf-8")
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old.{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except OSError:
            if old is not None:
                os.replace(old, dest)  # the entry that was there stays
            raise
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def open_pull_request(sub: Submission, repo_id: str, token: str | None = None) -> str:
    """Open a pull request adding the entry to the Hub board ``repo_id``; its URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    if not sub.valid or sub.card is None or sub.results is None:
        raise ValueError("refusing to submit an invalid submission")
    ops = [CommitOperationAdd(path_in_repo=f"{sub.entry}/{rel}",
                              path_or_fileobj=src if isinstance(src, bytes) else str(src))
           for rel, src in sub.files.items()]
    ops.append(CommitOperationAdd(path_in_repo=f"{sub.entry}/{CARD_FILE}",
                                  path_or_fileobj=sub.card.to_yaml().encode("utf-8")))
    r = sub.results
    summary = r.comparisons.get("method_vs_gsi")
    lines = [f"Method: {sub.card.name} ({r.method.name} v{r.method.version}), "
             f"track {sub.card.track}", f"Authors: {', '.join(sub.card.authors)}",
             f"Code: {sub.card.code} ({sub.card.licence})",
             f"Protocol {r.protocol.version}; dataset manifest {r.dataset.manifest_sha256}",
             f"Predictions sha256 {r.predictions.sha256 if r.predictions else '-'}"]
    if summary is not None:
        lines += [f"{m}: {s.mean:.4g}" for m, s in summary.summary.items()
                  if m in ("psnr", "ssim", "lpips")]
    info = HfApi(token=token).create_commit(
        repo_id=repo_id, repo_type="dataset", operations=ops, create_pr=True,
        commit_message=f"Submit {r.method.name} v{r.method.version}",
        commit_description="\n".join(lines))
    if not info.pr_url:
        raise RuntimeError(f"{repo_id}: the Hub did not open a pull request")
    return info.pr_url
