"""Checks a submission before anything is sent, and again on the maintainer's side.

:func:`validate_run` returns a list of :class:`Problem` (empty: valid). Each problem has a
``code`` naming the reason, so a rejection says exactly what is wrong:

==================== ==========================================================================
code                 meaning
==================== ==========================================================================
schema               results.json missing, not JSON, or not the results schema
card                 the method card is missing or invalid
protocol             a protocol version the board does not accept
dataset_revision     scored on another dataset revision than the board's
manifest_sha256      scored on data with another manifest (another build)
dataset_split        another config / split than the board's
missing_slice        a test slice was not scored
duplicate_slice      a test slice was scored more than once
unknown_slice        a scored slice is not a test slice of the board
implant_type         a slice's implant type differs from the board's
missing_metric       a ranked metric is absent from a slice or the summaries
non_finite           a ranked metric is NaN / infinite on a slice or in a summary
summary_mismatch     a summary disagrees with the per-slice values (> 1e-6)
predictions_missing  no predictions file, or it is not where results.json says
predictions_sha256   the predictions file is not the one results.json describes
predictions_rows     the predictions' slices differ from the test slices
==================== ==========================================================================
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmark.results import Results, verify_results
from leaderboard.errors import LeaderboardError

from .board import BoardConfig
from .card import CARD_FILE, CardError, MethodCard

#: Agreement asked of a summary recomputed from the per-slice values (relative to max(1, |x|)).
SUMMARY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Problem:
    """One reason a submission is refused: ``code`` (see the module docstring) + message."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class SubmissionInvalid(LeaderboardError, ValueError):
    """Raised by callers that want an exception; ``problems`` lists every reason."""

    def __init__(self, where: str, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{where}: the submission is invalid:\n{lines}")


# ----------------------------------------------------------------------------- consistency


def consistency_problems(results: Results, run_dir: Path,
                         tol: float = SUMMARY_TOLERANCE) -> list[Problem]:
    """Summaries recomputed from the per-slice values, and the predictions file's sha256,
    size and rows: the results module's own check (shared with ``marbench compare``), its
    messages given this module's reason codes."""
    v = verify_results(results, run_dir, tol=tol)
    problems: list[Problem] = []
    for msg in v.problems:
        if "appears more than once" in msg:
            continue  # reported as duplicate_slice, with the board's slice list
        if "sha256" in msg or " bytes, recorded " in msg:
            code = "predictions_sha256"
        elif msg.startswith("predictions.rows"):
            code = "predictions_rows"
        else:
            code = "summary_mismatch"
        problems.append(Problem(code, msg))
    if not v.predictions_checked and not any(p.code.startswith("predictions")
                                             for p in problems):
        problems.append(Problem("predictions_missing", f"{v.note or 'predictions not checked'}"
                                "; submit the run folder of `marbench run` with its "
                                "predictions/"))
    return problems


# ----------------------------------------------------------------------------- validation


def _predictions_keys(path: Path) -> list[tuple[str, int]]:
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["patient_id", "slice_index"])
    return list(zip(t.column("patient_id").to_pylist(),
                    [int(x) for x in t.column("slice_index").to_pylist()], strict=True))


def _slice_problems(keys: list[tuple[str, int]], board: BoardConfig, what: str,
                    missing_code: str, dup_code: str, unknown_code: str) -> list[Problem]:
    problems: list[Problem] = []
    want = {(s.patient_id, s.slice_index) for s in board.slices}
    counts = Counter(keys)
    dups = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(want - set(counts))
    unknown = sorted(set(counts) - want)

    def show(ks: list[tuple[str, int]]) -> str:
        head = ", ".join(f"{p} slice {i}" for p, i in ks[:5])
        return head + (f" and {len(ks) - 5} more" if len(ks) > 5 else "")

    if missing:
        problems.append(Problem(missing_code, f"{what}: {len(missing)} test slice(s) missing: "
                                f"{show(missing)}; score the whole split (no --limit)"))
    if dups:
        problems.append(Problem(dup_code, f"{what}: {len(dups)} slice(s) appear more than "
                                f"once: {show(dups)}"))
    if unknown:
        problems.append(Problem(unknown_code, f"{what}: {len(unknown)} slice(s) are not test "
                                f"slices of this board: {show(unknown)}"))
    return problems


def validate_results(results: Results, run_dir: Path, board: BoardConfig) -> list[Problem]:
    """Every check of a loaded results file against ``board`` (see the module docstring)."""
    problems: list[Problem] = []
    if results.protocol.version not in board.protocols:
        problems.append(Problem("protocol", f"protocol {results.protocol.version!r} is not "
                                f"accepted by this board ({', '.join(board.protocols)})"))
    ds, want = results.dataset, board.dataset
    if ds.revision != want.revision:
        problems.append(Problem("dataset_revision", f"dataset revision {ds.revision!r} is not "
                                f"the board's {want.revision!r}; score the board's revision "
                                "(marbench run --revision)"))
    if ds.manifest_sha256 != want.manifest_sha256:
        problems.append(Problem("manifest_sha256", f"dataset manifest sha256 "
                                f"{ds.manifest_sha256} is not the board's "
                                f"{want.manifest_sha256} (another build of the data)"))
    if (ds.config, ds.split) != (want.config, want.split):
        problems.append(Problem("dataset_split", f"scored {ds.config}/{ds.split}, the board "
                                f"ranks {want.config}/{want.split}"))

    keys = [(s.patient_id, s.slice_index) for s in results.per_slice]
    problems += _slice_problems(keys, board, "per_slice", "missing_slice", "duplicate_slice",
                                "unknown_slice")
    implants = {(s.patient_id, s.slice_index): s.implant_type for s in board.slices}
    wrong = [s for s in results.per_slice
             if (s.patient_id, s.slice_index) in implants
             and implants[(s.patient_id, s.slice_index)] != s.implant_type]
    if wrong:
        s = wrong[0]
        problems.append(Problem("implant_type", f"{len(wrong)} slice(s) have another implant "
                                f"type than the board's, e.g. {s.patient_id} slice "
                                f"{s.slice_index}: {s.implant_type!r}"))

    for rm in board.metrics:
        comp = results.comparisons.get(rm.comparison)
        if comp is None or rm.metric not in comp.summary:
            problems.append(Problem("missing_metric", f"{rm.key} is ranked by the board but "
                                    "absent from the summaries"))
            continue
        if not math.isfinite(comp.summary[rm.metric].mean):
            problems.append(Problem("non_finite", f"comparisons.{rm.key} mean is "
                                    f"{comp.summary[rm.metric].mean}"))
        absent, bad = [], []
        # Required where the board's slice has the comparison (ideal images: simulated only).
        required = {(b.patient_id, b.slice_index) for b in board.slices
                    if rm.comparison in b.comparisons}
        for s in results.per_slice:
            if (s.patient_id, s.slice_index) not in required:
                continue
            v = s.scores.get(rm.comparison, {}).get(rm.metric)
            if v is None:
                absent.append(s)
            elif not math.isfinite(v):
                bad.append((s, v))
        if absent:
            problems.append(Problem("missing_metric", f"{rm.key} is missing on {len(absent)} "
                                    f"slice(s), e.g. {absent[0].patient_id} slice "
                                    f"{absent[0].slice_index}"))
        if bad:
            s, v = bad[0]
            problems.append(Problem("non_finite", f"{rm.key} is not finite on {len(bad)} "
                                    f"slice(s), e.g. {s.patient_id} slice {s.slice_index}: {v}"))

    cons = consistency_problems(results, run_dir)
    problems += cons
    rec = results.predictions
    if rec is not None and not any(p.code.startswith("predictions") for p in cons):
        pkeys = _predictions_keys(run_dir / rec.path)
        problems += _slice_problems(pkeys, board, f"predictions {rec.path}", "predictions_rows",
                                    "predictions_rows", "predictions_rows")
    return problems


def validate_run(run_dir: Path | str, board: BoardConfig, card: Path | str | None = None,
                 check_card: bool = True) -> tuple[Results | None, list[Problem]]:
    """Load ``run_dir/results.json`` and its method card (``card``, default
    ``run_dir/card.yaml``; skipped when ``check_card`` is false) and validate them against
    ``board``. Returns (results, or None when unreadable; problems, empty when valid)."""
    run = Path(run_dir)
    problems: list[Problem] = []
    try:
        results: Results | None = Results.load(run)
    except (FileNotFoundError, ValueError) as e:
        results = None
        problems.append(Problem("schema", str(e)))
    if check_card:
        try:
            MethodCard.load(Path(card) if card else run / CARD_FILE)
        except CardError as e:
            problems.append(Problem("card", str(e)))
    if results is not None:
        problems += validate_results(results, run if run.is_dir() else run.parent, board)
    return results, problems
