"""The Hub's evaluation results: the board's benchmark declaration and each model's results.

The Hugging Face Hub gathers evaluation results from model repos onto benchmark datasets
(hub-docs, ``docs/hub/eval-results.md``; huggingface_hub 2.4: ``EvalResultEntry``,
``eval_result_entries_to_yaml``, ``EVAL_RESULTS_FOLDER``):

- a dataset repo declares itself a benchmark with ``eval.yaml`` at its root: ``name``,
  ``description``, ``evaluation_framework``, and ``tasks`` (``id``, ``config``, ``split``);
- a model repo publishes results as ``.eval_results/*.yaml``: a list of items with
  ``dataset`` (``id`` of the benchmark dataset, ``task_id`` from its eval.yaml, optional
  ``revision``), ``value``, optional ``date``, ``source`` (``url``, ``name``, ``user``) and
  ``notes``. A result merged on the model's main branch is the model author's; one in an open
  pull request shows as "community". The "verified" badge needs a ``verifyToken`` from a run
  on the Hub's own jobs, which a board cannot give; the board's link back (``source.url``,
  the verified entry's folder in the board repo) is how a reader checks a number instead.

:func:`build` makes both from a board: one task per ranked metric on the public track
(``psnr-vs-gsi``, ...) and per hidden season (``hidden-2026-1-psnr-vs-gsi``); for each entry
whose card names a ``hub_model`` (on the hidden track, else whose weights came from a Hub
model repo), and that the board vouches for (verified or reproduced predictions, or a
scored hidden-track run), one results file whose values are the means the
board's page shows. :func:`publish` writes them: eval.yaml into the board (a commit on a Hub
board) and a pull request per model repo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .board import VOUCHED, Board, RankedMetric
from .errors import LeaderboardError
from .view import BoardView, Tab, build_view

EVAL_YAML = "eval.yaml"
#: huggingface_hub.constants.EVAL_RESULTS_FOLDER
EVAL_RESULTS_DIR = ".eval_results"
FRAMEWORK = "marbench"


class PublishError(LeaderboardError, RuntimeError):
    """The results could not be published (the message names the repo and the step)."""


def task_id(metric: RankedMetric, season: str | None = None) -> str:
    """``psnr-vs-gsi`` for the public track, ``hidden-<season>-psnr-vs-gsi`` for a season."""
    where = metric.comparison.rsplit("_vs_", 1)[-1]
    base = re.sub(r"[^a-z0-9]+", "-", f"{metric.metric}-vs-{where}".lower()).strip("-")
    return f"hidden-{season}-{base}" if season else base


@dataclass
class ModelResults:
    """One ``.eval_results/<file>`` for a model repo."""

    model: str
    path: str
    items: list[dict[str, Any]]
    entry: str


@dataclass
class Published:
    """What :func:`build` made: the benchmark declaration and the model-side files."""

    eval_yaml: dict[str, Any]
    models: list[ModelResults] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "board"


def entry_url(endpoint: str, board_repo: str, revision: str | None, folder: str) -> str:
    """The Hub page of an entry's folder in the board repo (its card, results and the
    maintainers' verification)."""
    return f"{endpoint.rstrip('/')}/datasets/{board_repo}/tree/{revision or 'main'}/{folder}"


def _items(tab: Tab, key: str, view: BoardView, board_repo: str, revision: str | None,
           url: str, date: str, notes: str) -> list[dict[str, Any]]:
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    row = next(r for r in tab.rows if r.key == key)
    entries = []
    for m, c in zip(view.metrics, row.cells, strict=True):
        if c is None:
            continue
        entries.append(EvalResultEntry(
            dataset_id=board_repo, task_id=task_id(m, tab.season), value=round(c.mean, 6),
            dataset_revision=revision, date=date, source_url=url,
            source_name=f"MARBench board entry {key} ({row.status})",
            notes=f"{m.label}{f' ({m.unit})' if m.unit else ''}; {notes}"))
    return eval_result_entries_to_yaml(entries)


def build(board: Board, board_repo: str, endpoint: str | None = None,
          view: BoardView | None = None) -> Published:
    """The benchmark declaration and the model-side results of ``board`` (see the module
    docstring); ``board_repo`` is the board's Hub dataset repo id (the benchmark)."""
    from huggingface_hub import constants

    endpoint = endpoint or constants.ENDPOINT
    view = view or build_view(board)
    cfg = board.config
    tasks = [{"id": task_id(m), "config": cfg.dataset.config, "split": cfg.dataset.split}
             for m in cfg.metrics]
    for tab in view.hidden:
        tasks += [{"id": task_id(m, tab.season), "config": cfg.dataset.config,
                   "split": cfg.dataset.split} for m in cfg.metrics]
    data = cfg.dataset.repo_id or "a local build"
    desc = (f"{cfg.title}: metal artifact reduction methods on {data} "
            f"({cfg.dataset.config}/{cfg.dataset.split}, protocol "
            f"{', '.join(cfg.protocols)}). Every public result is verified by the "
            "maintainers by re-scoring the submitted predictions against the reference "
            "images; tasks named hidden-<season>-... are scored by the board itself, which "
            "runs each method without network on a private test set drawn from a secret seed "
            "(same config and split, never published). Task ids: <metric>-vs-<reference>.")
    decl = {"name": cfg.title, "description": desc, "evaluation_framework": FRAMEWORK,
            "tasks": tasks}
    out = Published(eval_yaml=decl)
    all_tab = next((t for t in view.tabs if t.id == "all"), None)
    rev = board.revision
    for e in board.entries:
        if e.card is None or e.card.hub_model is None or all_tab is None \
                or e.verified_status not in VOUCHED or e.verification is None \
                or not any(r.key == e.key for r in all_tab.rows):
            continue
        folder = f"submissions/{e.key}"
        out.models.append(ModelResults(
            model=e.card.hub_model, entry=folder,
            path=f"{EVAL_RESULTS_DIR}/{_slug(board_repo)}-{_slug(e.key)}.yaml",
            items=_items(all_tab, e.key, view, board_repo, rev,
                         entry_url(endpoint, board_repo, rev, folder),
                         e.verification.checked_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         f"{e.verified_status} by the board maintainers "
                         f"({', '.join(cfg.protocols)})")))
    for tab in view.hidden:
        season = next(s for s in board.seasons if s.name == tab.season)
        for h in season.entries:
            if h.card is None or h.evaluation is None \
                    or not any(r.key == h.key for r in tab.rows):
                continue
            # The card's model repo, else the Hub repo its weights came from.
            w = h.evaluation.weights
            model = h.card.hub_model or (w.repo_id if w is not None else None)
            if model is None:
                continue
            folder = f"hidden/{season.name}/{h.key}"
            out.models.append(ModelResults(
                model=model, entry=folder,
                path=f"{EVAL_RESULTS_DIR}/{_slug(board_repo)}-hidden-{_slug(season.name)}-"
                     f"{_slug(h.key)}.yaml",
                items=_items(tab, h.key, view, board_repo, rev,
                             entry_url(endpoint, board_repo, rev, folder),
                             h.evaluation.evaluated_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                             f"hidden season {season.name}, run by the board without "
                             f"network ({h.evaluation.protocol or ''})")))
    return out


def dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100)


def write_local(pub: Published, out: Path) -> list[Path]:
    """``out/eval.yaml`` and ``out/models/<org>/<name>/.eval_results/*.yaml``."""
    from benchmark.results import atomic_write_text

    written = [atomic_write_text(out / EVAL_YAML, dump(pub.eval_yaml))]
    for m in pub.models:
        written.append(atomic_write_text(out / "models" / m.model / m.path, dump(m.items)))
    return written


def publish(pub: Published, board_repo: str, *, token: str | None = None,
            board_pr: bool = False) -> dict[str, str]:
    """Commit eval.yaml to the board repo (a pull request with ``board_pr``) and open one
    pull request per model repo with its results files; {repo: commit or PR URL}.

    Raises:
        PublishError: a Hub call failed (names the repo).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    done: dict[str, str] = {}
    try:
        info = api.create_commit(
            repo_id=board_repo, repo_type="dataset", create_pr=board_pr,
            operations=[CommitOperationAdd(EVAL_YAML, dump(pub.eval_yaml).encode())],
            commit_message="Declare the board as a benchmark (eval.yaml)")
        done[board_repo] = info.pr_url or info.oid
    except Exception as e:
        raise PublishError(f"{board_repo}: cannot commit {EVAL_YAML} ({type(e).__name__}: "
                           f"{e})") from None
    by_model: dict[str, list[ModelResults]] = {}
    for m in pub.models:
        by_model.setdefault(m.model, []).append(m)
    for model, files in by_model.items():
        try:
            info = api.create_commit(
                repo_id=model, repo_type="model", create_pr=True,
                operations=[CommitOperationAdd(f.path, dump(f.items).encode()) for f in files],
                commit_message=f"Add MARBench results from {board_repo}",
                commit_description="Evaluation results from the board "
                                   f"{board_repo}; each links to the verified entry: "
                                   + ", ".join(f.entry for f in files))
        except Exception as e:
            raise PublishError(f"{model}: cannot open a pull request with its results "
                               f"({type(e).__name__}: {e})") from None
        done[model] = info.pr_url or info.oid
    return done
