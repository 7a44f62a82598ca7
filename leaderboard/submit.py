"""Submitting a run: validate it locally, then add it to a board folder or open a Hub pull
request that adds ``submissions/<method>/<version>/`` to the board's dataset repo."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.results import Results

from .board import BOARD_FILE, CARD_FILE, BoardConfig, entry_path, is_local_board
from .card import CardError, MethodCard
from .validate import Problem, validate_results


@dataclass
class Submission:
    """A validated run: the files to add (local path -> path inside the entry folder)."""

    run_dir: Path
    results: Results | None
    card: MethodCard | None
    entry: str                               # submissions/<method>/<version>
    files: dict[str, Path] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def board_config(board: str | Path, revision: str | None = None) -> BoardConfig:
    """``board.json`` of a board folder, or of a Hub dataset repo (at ``revision``)."""
    if is_local_board(board):
        return BoardConfig.load(Path(board).expanduser())
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(str(board), BOARD_FILE, repo_type="dataset",
                           revision=revision or "main")
    return BoardConfig.load(path)


def prepare(run_dir: Path | str, config: BoardConfig,
            card: Path | str | None = None) -> Submission:
    """Validate ``run_dir`` (results.json, predictions, card) against a board's config.

    The card is ``card`` if given, else ``run_dir/card.yaml``."""
    run = Path(run_dir)
    sub = Submission(run_dir=run, results=None, card=None, entry="")
    try:
        sub.results = Results.load(run)
    except (FileNotFoundError, ValueError) as e:
        sub.problems.append(Problem("schema", str(e)))
    try:
        sub.card = MethodCard.load(Path(card) if card else run / CARD_FILE)
    except CardError as e:
        sub.problems.append(Problem("card", str(e)))
    if sub.results is None:
        return sub
    sub.problems += validate_results(sub.results, run, config)
    sub.entry = entry_path(sub.results)
    sub.files["results.json"] = run / "results.json"
    if sub.results.predictions is not None:
        sub.files[sub.results.predictions.path] = run / sub.results.predictions.path
    if sub.results.figure and (run / sub.results.figure).is_file():
        sub.files[sub.results.figure] = run / sub.results.figure
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
        for rel, src in sub.files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        (tmp / CARD_FILE).write_text(sub.card.to_yaml(), encoding="utf-8")
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old.{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
        os.replace(tmp, dest)
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
    ops = [CommitOperationAdd(path_in_repo=f"{sub.entry}/{rel}", path_or_fileobj=str(src))
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
