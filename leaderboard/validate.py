"""Checks a submission before anything is sent, and again on the maintainer's side.

:func:`validate_run` returns a list of :class:`Problem` (empty: valid). Each problem has a
``code`` naming the reason, so a rejection says exactly what is wrong:

==================== ==========================================================================
code                 meaning
==================== ==========================================================================
schema               results.json missing, not JSON, or not the results schema
card                 the method card is missing or invalid, or lists the board's test split
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
out_of_range         a value no metric can take (SSIM above 1, PSNR below 0, abs > 1e9)
reference_copy       the predictions are (near) copies of the GSI or ideal image
summary_mismatch     a summary disagrees with the per-slice values (> 1e-6)
predictions_path     ``predictions.path`` is not a plain name under predictions/
figure_path          ``figure`` is not a plain PNG name in the run folder
figure               the figure is not a readable PNG image
predictions_missing  no predictions file, or it is not where results.json says
predictions_sha256   the predictions file is not the one results.json describes
predictions_format   the predictions file is not int16 2-D images in the three columns
predictions_shape    the predictions' image shape is not the board's
predictions_rows     the predictions' slices differ from the test slices
copy                 the predictions are those of another entry (found on the board)
==================== ==========================================================================

:func:`assess_entries` applies every check to every entry of an opened board, so the listing,
the page and `verify` agree on which entries are valid and why.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.results import Results, verify_results
from leaderboard.errors import LeaderboardError

from .board import VOUCHED, BoardConfig, Entry, load_results, short
from .card import CARD_FILE, CardError, MethodCard
from .files import (
    RESULTS_FILE,
    EntryFileError,
    figure_path_problem,
    inside,
    predictions_path_problem,
)
from .predictions import PredictionsScan, scan_predictions

#: Agreement asked of a summary recomputed from the per-slice values (relative to max(1, |x|)).
SUMMARY_TOLERANCE = 1e-6
#: Largest magnitude of any finite score (larger ones are hand-made, and overflow the sums).
MAX_ABS_SCORE = 1e9
#: Ranges the protocol's metrics can take (``psnr``: HU clipped and scaled to [0, 1], so the
#: squared error is at most 1).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "psnr": (0.0, math.inf), "ssim": (-1.0, 1.0), "lpips": (0.0, math.inf)}
#: A prediction within this PSNR of a reference image (here 60 dB: an RMS error of 4 HU over
#: the 4095 HU window) is a copy of it: GSI and the ideal image differ from the ordinary image
#: by noise and artifacts no method can predict that closely.
REFERENCE_COPY_PSNR_DB = 60.0


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


def consistency_problems(results: Results, run_dir: Path | None,
                         tol: float = SUMMARY_TOLERANCE) -> list[Problem]:
    """Summaries recomputed from the per-slice values, and the predictions file's sha256,
    size and rows: the results module's own check (shared with ``marbench compare``), its
    messages given this module's reason codes (``run_dir`` None: summaries only)."""
    try:
        v = verify_results(results, run_dir, tol=tol)
    except (ArithmeticError, ValueError, KeyError) as e:
        return [Problem("summary_mismatch", f"the summaries cannot be recomputed from the "
                        f"per-slice values ({type(e).__name__}: {e})")]
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
    if run_dir is not None and not v.predictions_checked \
            and not any(p.code.startswith("predictions") for p in problems):
        problems.append(Problem("predictions_missing", f"{v.note or 'predictions not checked'}"
                                "; submit the run folder of `marbench run` with its "
                                "predictions/"))
    return problems


# ----------------------------------------------------------------------------- validation


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


def _value_problems(results: Results) -> list[Problem]:
    """Scores no metric can take: they are hand-made, and would overflow the summaries."""
    bad: list[str] = []
    for s in results.per_slice:
        for comp, values in s.scores.items():
            for metric, v in values.items():
                lo, hi = METRIC_RANGES.get(metric, (-math.inf, math.inf))
                if math.isfinite(v) and (abs(v) > MAX_ABS_SCORE or not lo <= v <= hi):
                    bad.append(f"{comp}.{metric} on {s.patient_id} slice {s.slice_index}: {v!r}")
    for comp_key, comp in results.comparisons.items():
        for metric, summ in comp.summary.items():
            for name in ("mean", "std", "median"):
                v = getattr(summ, name)
                if math.isfinite(v) and abs(v) > MAX_ABS_SCORE:
                    bad.append(f"comparisons.{comp_key}.{metric}.{name}: {v!r}")
    if not bad:
        return []
    return [Problem("out_of_range", f"{len(bad)} value(s) no metric can take, e.g. {bad[0]}")]


def _copy_of_reference(results: Results) -> list[Problem]:
    problems = []
    for comp, ref in (("method_vs_gsi", "GSI"), ("method_vs_ideal", "ideal")):
        hits = [(s, s.scores[comp]["psnr"]) for s in results.per_slice
                if "psnr" in s.scores.get(comp, {})
                and s.scores[comp]["psnr"] >= REFERENCE_COPY_PSNR_DB]  # +inf: identical
        if hits:
            s, v = hits[0]
            problems.append(Problem("reference_copy", f"the predictions are copies of the "
                                    f"{ref} image on {len(hits)} slice(s) (PSNR >= "
                                    f"{REFERENCE_COPY_PSNR_DB:g} dB), e.g. {s.patient_id} "
                                    f"slice {s.slice_index}: {v!r} dB; copies of the "
                                    "references are not ranked"))
    return problems


@dataclass
class Checked:
    """What :func:`check_results` found: the problems, and the predictions' scan (``None``
    when the file was not read)."""

    problems: list[Problem] = field(default_factory=list)
    scan: PredictionsScan | None = None


def check_results(results: Results, run_dir: Path, board: BoardConfig,
                  root: Path | None = None) -> Checked:
    """Every check of a loaded results file against ``board`` (see the module docstring).

    Files are read only under their fixed or checked names, and only where they resolve
    inside ``root`` (default ``run_dir``).
    """
    problems: list[Problem] = []
    if results.protocol.version not in board.protocols:
        problems.append(Problem("protocol", f"protocol {results.protocol.version[:100]!r} is "
                                f"not accepted by this board ({', '.join(board.protocols)})"))
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
    problems += _copy_of_reference(results)
    out_of_range = _value_problems(results)
    problems += out_of_range

    if results.figure is not None:
        fig = figure_path_problem(results.figure)
        if fig:
            problems.append(Problem("figure_path", fig))
    rec = results.predictions
    folder: Path | None = run_dir
    if rec is not None:
        where = predictions_path_problem(rec.path)
        if where is None:
            try:
                inside(run_dir, rec.path, root)
            except EntryFileError as e:
                where = str(e)
        if where is not None:
            problems.append(Problem("predictions_path", where))
            folder = None  # never read a file the submission points at
    checked = Checked(problems=problems)
    if out_of_range:
        return checked  # the summaries could not be recomputed without overflow
    cons = consistency_problems(results, folder)
    problems += cons
    if rec is not None and folder is not None \
            and not any(p.code.startswith("predictions") for p in cons):
        scan = scan_predictions(run_dir / rec.path)
        checked.scan = scan
        problems += [Problem("predictions_format", p) for p in scan.problems]
        problems += _slice_problems(scan.keys, board, f"predictions {rec.path}",
                                    "predictions_rows", "predictions_rows", "predictions_rows")
        shape = board.dataset.image_shape
        if scan.shapes and shape is not None and scan.shapes != {tuple(shape)}:
            problems.append(Problem("predictions_shape", f"predictions {rec.path}: images are "
                                    f"{scan.shape_text()}, the board's test slices are "
                                    f"{shape[0]} x {shape[1]}; they cannot be scored"))
        elif len(scan.shapes) > 1:
            problems.append(Problem("predictions_shape", f"predictions {rec.path}: images of "
                                    f"several shapes ({scan.shape_text()}); they cannot be "
                                    "scored"))
    return checked


def validate_results(results: Results, run_dir: Path, board: BoardConfig,
                     root: Path | None = None) -> list[Problem]:
    """The problems :func:`check_results` finds (empty: valid)."""
    return check_results(results, run_dir, board, root).problems


def card_problems(card: MethodCard, board: BoardConfig) -> list[Problem]:
    """A card that lists the board's own test split among its training data, while it
    states that no test patient was used."""
    if card.trained_on(board.benchmark_datasets, board.dataset.split):
        return [Problem("card", f"training_data lists the {board.dataset.split!r} split of "
                        f"the board's dataset, but the card states that no test patient was "
                        "used (no_test_patients); the public track ranks only methods that "
                        "never saw a test patient")]
    return []


# ----------------------------------------------------------------------------- the board


def copy_problem(entry: Entry, others: list[Entry]) -> Problem | None:
    """Why ``entry`` is a copy of a verified entry: another entry whose predictions have the
    same content and that a verification vouches for (earlier, if both are vouched for)."""
    if entry.content_sha256 is None:
        return None
    mine = entry.verification.checked_utc if entry.verified_status in VOUCHED \
        and entry.verification else None
    for o in others:
        if o.key == entry.key or o.content_sha256 != entry.content_sha256 \
                or o.verified_status not in VOUCHED or o.verification is None:
            continue
        if mine is None or o.verification.checked_utc < mine:
            return Problem("copy", f"the predictions are those of {o.key} (same content; "
                           f"{o.key} was verified on {o.verification.checked_utc:%Y-%m-%d}); "
                           "a copy of another entry is not ranked")
    return None


def assess_entries(entries: list[Entry], board: BoardConfig, root: Path) -> None:
    """Check every entry against ``board`` and record the reasons in ``entry.checks``, then
    flag copies: an entry whose predictions are those of an entry verified before it, and,
    while none of them is verified, every entry (not rejected by the maintainers) of a group
    with the same predictions.

    An entry that cannot be checked at all is one invalid entry with the reason; it never
    stops the others from being checked.
    """
    for e in entries:
        e.checks = []
        if e.card is not None:
            e.checks += [str(p) for p in card_problems(e.card, board)]
        if e.results is None:
            continue
        try:
            checked = check_results(e.results, e.folder, board, root)
        except Exception as exc:  # noqa: BLE001 (one hostile entry must not break the board)
            e.checks.append(f"[unreadable] the entry could not be checked "
                            f"({type(exc).__name__}: {short(str(exc), 300)})")
            continue
        e.checks += [str(p) for p in checked.problems]
        e.content_sha256 = checked.scan.content_sha256 if checked.scan else None
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if e.content_sha256 is not None:
            groups.setdefault(e.content_sha256, []).append(e)
    for group in groups.values():
        if len(group) < 2:
            continue
        if any(e.verified_status in VOUCHED for e in group):
            for e in group:
                p = copy_problem(e, group)
                if p is not None:
                    e.checks.append(str(p))
            continue
        # An entry the maintainers rejected contests nothing.
        contenders = [e for e in group if e.verified_status != "rejected"]
        if len(contenders) < 2:
            continue
        for e in contenders:
            others = ", ".join(o.key for o in contenders if o is not e)
            e.checks.append(str(Problem("copy", f"the predictions are those of {others} "
                                        "(same content) and none of them is verified; the "
                                        "maintainers verify the original first (`leaderboard "
                                        "verify --entry KEY`), the copies are then refused")))


def validate_run(run_dir: Path | str, board: BoardConfig, card: Path | str | None = None,
                 check_card: bool = True) -> tuple[Results | None, list[Problem]]:
    """Load ``run_dir/results.json`` and its method card (``card``, default
    ``run_dir/card.yaml``; skipped when ``check_card`` is false) and validate them against
    ``board``. Returns (results, or None when unreadable; problems, empty when valid)."""
    run = Path(run_dir)
    problems: list[Problem] = []
    try:
        results: Results | None = load_results(run / RESULTS_FILE if run.is_dir() else run)
    except (FileNotFoundError, ValueError) as e:
        results = None
        problems.append(Problem("schema", short(str(e))))
    if check_card:
        try:
            problems += card_problems(MethodCard.load(Path(card) if card else run / CARD_FILE),
                                      board)
        except CardError as e:
            problems.append(Problem("card", str(e)))
    if results is not None:
        problems += validate_results(results, run if run.is_dir() else run.parent, board)
    return results, problems
