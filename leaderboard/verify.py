"""The maintainer's check of an entry: re-score its predictions, optionally re-run the method.

The board never imports the metric code (it reads results files only), so re-scoring runs the
harness as a separate process::

    marbench rescore ENTRY_DIR --data DATA [--revision REV] --out TMP

which scores ``ENTRY_DIR``'s predictions against the reference data (GSI, ideal image,
labels; they may be private) with the protocol recorded in ``ENTRY_DIR/results.json`` and
writes ``TMP/results.json``. Every per-slice value is compared with the submitted one:

- ``verified``: all agree (relative tolerance :data:`SCORE_TOLERANCE`);
- ``reproduced``: verified, and the registered method re-run from its recorded name, version
  and options (``marbench run``; ``--reproduce``) gives the same predictions (within
  :data:`PREDICTION_TOLERANCE_HU`, the int16 rounding of another machine). What the re-run
  cost is measured here and kept (:mod:`leaderboard.efficiency`): seconds per slice, peak
  memory, and the parameters of a ``weights`` option that names safetensors files here.
  Only a registered method *name* is ever run (:data:`REGISTERED_NAME`): a ``module:Class``
  import path in a results file is refused, since it could name code that replays the
  submitted predictions;
- ``rejected``: a validation problem (predictions that cannot be scored, copies of the
  references), predictions identical to those of an entry verified before, or a re-scored
  value that differs; the reasons say which slice and metric.

The command is ``$MARBENCH`` when set (a command line), else ``python -m benchmark.cli``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmark.results import Results
from leaderboard.errors import LeaderboardError

from .board import (
    SUBMISSIONS,
    Board,
    BoardConfig,
    Entry,
    Verification,
    short,
    write_json,
)
from .card import CARD_FILE
from .efficiency import Efficiency, efficiency_of, run_measured
from .files import VERIFICATION_FILE
from .validate import check_results, copy_problem

#: Relative agreement asked of a re-scored value (same code, another machine / device).
SCORE_TOLERANCE = 1e-5
#: Largest prediction difference (HU) accepted when a method is re-run.
PREDICTION_TOLERANCE_HU = 1.0
#: What `--reproduce` accepts as a method to run: a registered name (``marbench ls``), never
#: an import path (``pkg.module:Class``) or anything the command line could read as an option.
REGISTERED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
#: A method option's key, passed as ``--option=KEY=VALUE``.
OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class VerifyUnavailable(LeaderboardError, RuntimeError):
    """The entry could not be checked here (the harness lacks a command, the reference data
    lacks a ranked metric's inputs, ...): it stays ``submitted``, it is not rejected."""


def _tool() -> str:
    try:
        return f"leaderboard (artifactgsi {importlib.metadata.version('artifactgsi')})"
    except importlib.metadata.PackageNotFoundError:
        return "leaderboard"


def marbench_command() -> list[str]:
    """The ``marbench`` command line used for re-scoring and re-running."""
    env = os.environ.get("MARBENCH")
    return shlex.split(env) if env else [sys.executable, "-m", "benchmark.cli"]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The benchmark is single-machine CPU work; keep the child from oversubscribing cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_child_env())


def _tail(text: str, n: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def rescore(entry_dir: Path, data: str, out: Path, revision: str | None = None,
            marbench: list[str] | None = None, timeout: float = 3600) -> Results:
    """Run ``marbench rescore`` on an entry folder; the re-scored results."""
    cmd = [*(marbench or marbench_command()), "rescore", str(entry_dir), "--data", data,
           "--out", str(out)]
    if revision:
        cmd += ["--revision", revision]
    r = _run(cmd, timeout)
    if r.returncode != 0:
        text = r.stderr + r.stdout
        if "No such command" in text and "rescore" in text:
            raise VerifyUnavailable("this marbench has no `rescore` command; install a "
                                    "version of artifactgsi that has it")
        raise VerifyUnavailable(f"`{shlex.join(cmd)}` failed (exit {r.returncode}): "
                                f"{_tail(text)}")
    return Results.load(out)


def compare_scores(submitted: Results, rescored: Results, board: BoardConfig,
                   tol: float = SCORE_TOLERANCE) -> tuple[list[str], list[str], float]:
    """(mismatches, notes, largest absolute difference) between submitted and re-scored
    per-slice values of every comparison and metric both files have."""
    got = {(s.patient_id, s.slice_index): s.scores for s in rescored.per_slice}
    mismatches: list[str] = []
    notes: list[str] = []
    worst = 0.0
    diff_by_metric: dict[str, list[str]] = {}
    not_rescored: set[str] = set()
    for s in submitted.per_slice:
        mine = got.get((s.patient_id, s.slice_index))
        if mine is None:
            mismatches.append(f"{s.patient_id} slice {s.slice_index} was not re-scored")
            continue
        for comp, values in s.scores.items():
            for metric, v in values.items():
                w = mine.get(comp, {}).get(metric)
                if w is None:
                    not_rescored.add(f"{comp}.{metric}")
                    continue
                if math.isnan(v) or math.isnan(w):
                    same = math.isnan(v) and math.isnan(w)
                elif math.isinf(v) or math.isinf(w):
                    same = v == w
                else:
                    worst = max(worst, abs(v - w))
                    same = abs(v - w) <= tol * max(1.0, abs(w))
                if not same:
                    diff_by_metric.setdefault(f"{comp}.{metric}", []).append(
                        f"{s.patient_id} slice {s.slice_index}: submitted {v!r}, "
                        f"re-scored {w!r}")
    for key, items in diff_by_metric.items():
        mismatches.append(f"{key} differs on {len(items)} slice(s), e.g. {items[0]}")
    ranked = {m.key for m in board.metrics}
    missing_ranked = sorted(not_rescored & ranked)
    if missing_ranked:
        raise VerifyUnavailable(f"ranked metric(s) {missing_ranked} could not be re-scored "
                                "here (see the re-scored results.json for why)")
    if not_rescored:
        notes.append(f"not re-scored here: {', '.join(sorted(not_rescored))}")
    return mismatches, notes, worst


def _prediction_arrays(path: Path) -> dict[tuple[str, int], np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    ids = t.column("patient_id").to_pylist()
    idx = t.column("slice_index").to_pylist()
    preds = t.column("prediction").to_pylist()
    return {(p, int(i)): np.asarray(a, dtype=np.int16)
            for p, i, a in zip(ids, idx, preds, strict=True)}


def compare_predictions(a: Path, b: Path) -> float:
    """Largest absolute difference (HU) between two predictions files (inf if their slices
    or shapes differ)."""
    pa, pb = _prediction_arrays(a), _prediction_arrays(b)
    if set(pa) != set(pb):
        return math.inf
    worst = 0.0
    for k, x in pa.items():
        y = pb[k]
        if x.shape != y.shape:
            return math.inf
        worst = max(worst, float(np.abs(x.astype(np.int32) - y.astype(np.int32)).max()))
    return worst


def reproduce(results: Results, entry_dir: Path, data: str, out: Path,
              revision: str | None = None, marbench: list[str] | None = None,
              timeout: float = 3600) -> tuple[bool, str, float | None, Efficiency | None]:
    """Re-run the registered method with the recorded options; (same predictions?, note,
    largest prediction difference in HU or None, what the re-run cost as measured here).
    Only a registered method name is run."""
    m = results.method
    if not REGISTERED_NAME.fullmatch(m.name):
        return False, f"method {short(m.name, 120)!r} is not a registered method name: " \
                      "--reproduce runs registered methods by name only, never an import " \
                      "path", None, None
    bad = [k for k in m.options if not OPTION_KEY.fullmatch(k)]
    if bad:
        return False, f"option {short(bad[0], 60)!r} is not an option name; not re-run", \
            None, None
    # `--x=VALUE`: a value is never read as another option, whatever it starts with.
    cmd = [*(marbench or marbench_command()), "run", f"--method={m.name}", "--data", data,
           f"--split={results.dataset.split}", f"--config={results.dataset.config}",
           "--out", str(out), "--no-lpips", "--no-clinical"]
    if revision:
        cmd += ["--revision", revision]
    for k, v in m.options.items():
        cmd.append(f"--option={k}={json.dumps(v) if not isinstance(v, str) else v}")
    r = run_measured(cmd, timeout, env=_child_env())
    if r.returncode != 0:
        return False, f"re-running {m.name!r} failed (exit {r.returncode}): " \
                      f"{_tail(r.stderr + r.stdout, 3)}", None, None
    rerun = Results.load(out)
    weights = m.options.get("weights")
    eff = efficiency_of(r.wall_s, r.cpu_s, r.peak_rss_mib, rerun.dataset.n_slices_scored,
                        "leaderboard verify --reproduce",
                        Path(weights) if isinstance(weights, str) and Path(weights).exists()
                        else None)
    if rerun.method.name != m.name:
        return False, f"re-running {m.name!r} ran {rerun.method.name!r}", None, eff
    if rerun.method.version != m.version:
        return False, f"the installed {m.name!r} is version {rerun.method.version}, the " \
                      f"entry was made with version {m.version}", None, eff
    if m.weights_sha256 and rerun.method.weights_sha256 != m.weights_sha256:
        return False, f"re-run used weights {rerun.method.weights_sha256}, the entry " \
                      f"{m.weights_sha256}", None, eff
    if rerun.predictions is None or results.predictions is None:
        return False, "no predictions to compare", None, eff
    d = compare_predictions(entry_dir / results.predictions.path, out / rerun.predictions.path)
    if d <= PREDICTION_TOLERANCE_HU:
        return True, f"re-run predictions agree (max |diff| {d:g} HU)", d, eff
    return False, f"re-run predictions differ (max |diff| {d:g} HU)", d, eff


def verify_entry(entry: Entry, board: BoardConfig, data: str, *, revision: str | None = None,
                 reproduce_method: bool = False, marbench: list[str] | None = None,
                 workdir: Path | None = None, write: bool = True,
                 tol: float = SCORE_TOLERANCE, root: Path | None = None,
                 others: list[Entry] | None = None, chosen: bool = False) -> Verification:
    """Check one entry (see the module docstring) and, with ``write``, save
    ``verification.json`` in its folder (the entry's ``verification`` is updated either way,
    so entries checked later in one run see it).

    ``root``: the folder the entry's files must resolve into (default: the board folder two
    levels above the entry). ``others``: the board's entries, checked for copies (default:
    those of the board the entry's folder belongs to). An entry whose predictions are those
    of an entry verified before it is rejected as a copy; when none of the entries with the
    same predictions is verified, each is rejected unless ``chosen`` (the maintainers named
    it: ``--entry``), which makes it the original.

    Raises:
        VerifyUnavailable: the entry could not be checked here (it is not rejected).
    """
    results = entry.results
    now = datetime.now(timezone.utc)  # noqa: UP017 (py3.10 has no datetime.UTC)
    sha = results.predictions.sha256 if results and results.predictions else ""
    board_root = entry.folder.parents[2] if len(entry.folder.parents) > 2 else entry.folder
    reasons: list[str] = list(entry.problems)
    if results is not None:
        try:
            checked = check_results(results, entry.folder, board, root or board_root)
        except Exception as exc:  # noqa: BLE001 (a hostile entry is rejected, not a crash)
            reasons.append(f"[unreadable] the entry could not be checked ({type(exc).__name__}"
                           f": {short(str(exc), 300)})")
        else:
            reasons += [str(p) for p in checked.problems]
            entry.content_sha256 = checked.scan.content_sha256 if checked.scan else None
    if not reasons and results is not None:
        if others is None:
            others = _board_entries(board_root)
        copy = copy_problem(entry, others)
        if copy is not None:
            reasons.append(str(copy))
        elif not chosen:
            # Entries with the same predictions, none verified, as found when the board was
            # opened (so the order in which entries are checked changes nothing).
            reasons += [c for c in entry.checks if c.startswith("[copy]")]
    if reasons or results is None:
        v = Verification(status="rejected", reasons=[short(r) for r in reasons],
                         predictions_sha256=sha, checked_utc=now, tool=_tool())
    else:
        with tempfile.TemporaryDirectory(dir=workdir, prefix="verify-") as tmp:
            rescored = rescore(entry.folder, data, Path(tmp) / "rescored", revision, marbench)
            mismatches, notes, worst = compare_scores(results, rescored, board, tol)
            status = "rejected" if mismatches else "verified"
            pred_diff = None
            eff = None
            if status == "verified" and reproduce_method:
                ok, note, pred_diff, eff = reproduce(results, entry.folder, data,
                                                     Path(tmp) / "rerun", revision, marbench)
                notes.append(note)
                if ok:
                    status = "reproduced"
            v = Verification(status=status, reasons=mismatches, notes=notes,
                             predictions_sha256=sha, checked_utc=now,
                             max_abs_score_diff=worst, max_abs_prediction_diff_hu=pred_diff,
                             efficiency=eff if status == "reproduced" else None,
                             tool=_tool())
    if write:
        write_json(entry.folder / "verification.json", v.model_dump(mode="json"))
    entry.verification = v
    return v


@contextmanager
def _naming_board(board: Board) -> Iterator[None]:
    """Every Hub failure inside becomes a BoardUnavailable that names the board."""
    from .board import BoardUnavailable

    try:
        yield
    except Exception as e:
        raise BoardUnavailable(f"{board.source}: cannot compare with main "
                               f"({type(e).__name__}: {short(str(e), 300)})") from None


def _against_main(board: Board) -> Callable[[Path, str], str | None] | None:
    """For a Hub board read at a pull request: a function ``changed(local, path)`` that says
    whether the local file ``adds`` or ``changes`` the file ``path`` on ``main`` (None when it
    is the same, or there is no local file). None when the board is read at ``main``. Hub
    errors propagate (the callers name the board)."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    main = api.repo_info(board.source, repo_type="dataset", revision="main").sha
    if main == board.revision:
        return None
    on_main = set(api.list_repo_files(board.source, repo_type="dataset", revision=main))

    def changed(local: Path, path: str) -> str | None:
        if not local.exists():
            return None
        if path not in on_main:
            return "adds"
        same = Path(hf_hub_download(board.source, path, repo_type="dataset",
                                    revision=main)).read_bytes() == local.read_bytes()
        return None if same else "changes"

    return changed


def _differences_from_main(
    board: Board, collect: Callable[[Callable[[Path, str], str | None]], dict[str, str]]
) -> dict[str, str]:
    """``collect(changed)`` with ``changed`` from :func:`_against_main`, every Hub failure
    naming the board; empty when the board is read at ``main`` (nothing to compare)."""
    with _naming_board(board):
        changed = _against_main(board)
        return {} if changed is None else collect(changed)


def submitted_verifications(board: Board) -> dict[str, str]:
    """Entries of a Hub board read at a pull request (any commit but ``main``'s) whose
    verification.json is not the one on ``main``: the pull request adds or changes it, and
    only the maintainers' tools write that file. Entry key -> reason; empty for a folder.

    Raises:
        BoardUnavailable: the Hub cannot be asked.
    """
    if board.revision is None:
        return {}

    def collect(changed: Callable[[Path, str], str | None]) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in board.entries:
            verb = changed(e.folder / VERIFICATION_FILE,
                           f"{SUBMISSIONS}/{e.key}/{VERIFICATION_FILE}")
            if verb:
                out[e.key] = f"[verification] the pull request {verb} {VERIFICATION_FILE}; " \
                             "only the maintainers' `leaderboard verify` writes it"
        return out

    return _differences_from_main(board, collect)


def submitted_hidden(board: Board) -> dict[str, str]:
    """Hidden-track files of a Hub board read at a pull request that are not those on
    ``main`` (``hidden/<season>/...``: season.json, card.yaml, evaluation.json): only the
    maintainers' `leaderboard evaluate` writes them. Folder -> reason; each such entry is
    marked invalid with the reason. Empty for a folder, or at main.

    Raises:
        BoardUnavailable: the Hub cannot be asked.
    """
    if board.revision is None or not board.seasons:
        return {}
    from .hidden_records import EVALUATION_FILE, HIDDEN
    from .season import SEASON_FILE

    def collect(changed: Callable[[Path, str], str | None]) -> dict[str, str]:
        out: dict[str, str] = {}
        for season in board.seasons:
            base = f"{HIDDEN}/{season.name}"
            how = changed(season.folder / SEASON_FILE, f"{base}/{SEASON_FILE}")
            for e in season.entries:
                hows = [how] + [changed(e.folder / f, f"{base}/{e.key}/{f}")
                                for f in (CARD_FILE, EVALUATION_FILE)]
                verb = next((h for h in hows if h), None)
                if verb:
                    reason = (f"[evaluation] the pull request {verb} the hidden track's files; "
                              "only the maintainers' `leaderboard evaluate` writes them")
                    out[e.link_id] = reason
                    e.problems.append(reason)
        return out

    return _differences_from_main(board, collect)


def _board_entries(root: Path) -> list[Entry]:
    """The entries of the board folder ``root`` (none when it is not a board)."""
    from .board import BOARD_FILE

    if not (root / BOARD_FILE).is_file():
        return []
    return Board.open(root).entries

