"""What the pages show, computed once from a :class:`~leaderboard.board.Board`.

Ranked entries are those whose files are valid for the board (``submitted``, ``verified`` or
``reproduced``); ``rejected`` and ``invalid`` entries are listed apart with their reasons, so
an entry never silently disappears. The reasons are those found when the board was opened
(:func:`leaderboard.validate.assess_entries`), so the page and `leaderboard list` agree.
Rows show the card's name beside the entry key; where entries share a card name, the
statistical tests and diagrams name them "name (method/version)" (:func:`display_names`).
Each tab (all slices, then one per implant type) ranks the entries by the board's first
metric and carries, per metric, the bootstrap CIs, rank ranges and tests of
:mod:`leaderboard.significance`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from benchmark.results import MetricDefinition, study_columns, study_scores

from .board import Board, Entry, RankedMetric
from .significance import MetricStats, compare_methods

RANKED = ("submitted", "verified", "reproduced")


@dataclass
class Cell:
    mean: float
    lo: float
    hi: float
    rank: int
    rank_lo: int
    rank_hi: int


@dataclass
class Row:
    entry: Entry
    name: str
    key: str
    track: str
    status: str
    cells: list[Cell | None]  # None: the metric has no slice in this tab (no ideal image)

    @property
    def rank(self) -> int:
        first = next((c for c in self.cells if c is not None), None)
        return first.rank if first is not None else 0


@dataclass
class Tab:
    """One ranking over a subset of the test slices."""

    id: str
    title: str
    n_slices: int
    n_patients: int
    rows: list[Row]
    stats: list[MetricStats | None]


@dataclass
class StudyRow:
    """An entry's study-level scores (``benchmark.results.study_scores``): value, interval."""

    name: str
    key: str
    cells: list[tuple[float | None, list[float] | None]]


@dataclass
class BoardView:
    board: Board
    metrics: list[RankedMetric]
    tabs: list[Tab]
    excluded: list[tuple[Entry, str, list[str]]] = field(default_factory=list)
    # Metrics reduced over a whole study (the lesion study), as the entries recorded them.
    study_columns: list[tuple[str, MetricDefinition]] = field(default_factory=list)
    study_rows: list[StudyRow] = field(default_factory=list)
    built_utc: datetime = field(
        default_factory=lambda: datetime.now(timezone.utc))  # noqa: UP017 (py3.10)


def display_names(entries: list[Entry]) -> dict[str, str]:
    """Entry key -> the name shown: the card's name, with the key where names are shared."""
    counts = Counter(e.label.casefold() for e in entries)
    return {e.key: e.label if counts[e.label.casefold()] == 1 else f"{e.label} ({e.key})"
            for e in entries}


def build_view(board: Board) -> BoardView:
    """Rank the valid entries (checked when the board was opened) per tab and metric."""
    cfg = board.config
    ranked: list[Entry] = []
    excluded: list[tuple[Entry, str, list[str]]] = []
    for e in board.entries:
        reasons = e.reasons
        if reasons:
            status = e.status if e.status == "rejected" else "invalid"
            excluded.append((e, status, reasons))
        elif e.status in RANKED:
            ranked.append(e)
        else:
            excluded.append((e, e.status, ["rejected by verification"]))
    keys = [(s.patient_id, s.slice_index) for s in cfg.slices]
    patients = np.array([s.patient_id for s in cfg.slices])
    implants = np.array([s.implant_type for s in cfg.slices])
    # (entries, metrics, slices) in the board's slice order; NaN where the slice lacks the
    # comparison (validation guarantees every other value exists and is finite).
    has = np.array([[m.comparison in s.comparisons for s in cfg.slices] for m in cfg.metrics])
    rows_of: list[np.ndarray] = []
    for e in list(ranked):
        assert e.results is not None
        by_key = {(s.patient_id, s.slice_index): s.scores for s in e.results.per_slice}
        v = np.full((len(cfg.metrics), len(keys)), np.nan)
        try:
            for j, m in enumerate(cfg.metrics):
                v[j, has[j]] = [by_key[k][m.comparison][m.metric]
                                for k, h in zip(keys, has[j], strict=True) if h]
        except (KeyError, TypeError, ValueError) as err:  # an entry never breaks the board
            ranked.remove(e)
            excluded.append((e, "invalid", [f"a ranked value is missing ({err!r})"]))
            continue
        rows_of.append(v)
    values = np.stack(rows_of) if rows_of else np.full((0, len(cfg.metrics), len(keys)), np.nan)
    subsets = [("all", "All implants", np.ones(len(keys), bool))]
    subsets += [(f"implant-{t}", t.replace("_", " "), implants == t)
                for t in cfg.implant_types]
    tabs = []
    names = [e.key for e in ranked]
    for tab_id, title, sel in subsets:
        stats: list[MetricStats | None] = []
        if ranked:
            for j, m in enumerate(cfg.metrics):
                use = sel & has[j]
                stats.append(None if not use.any() else compare_methods(
                    values[:, j, use], patients[use], names, m.higher_is_better,
                    n_resamples=cfg.bootstrap.n_resamples, seed=cfg.bootstrap.seed,
                    unit=cfg.bootstrap.unit, alpha=cfg.bootstrap.alpha))
        rows = []
        for i, e in enumerate(ranked):
            assert e.card is not None
            cells = [None if s is None else
                     Cell(float(s.means[i]), float(s.ci[i, 0]), float(s.ci[i, 1]),
                          int(s.rank[i]), int(s.rank_range[i, 0]), int(s.rank_range[i, 1]))
                     for s in stats]
            rows.append(Row(entry=e, name=e.card.name, key=e.key, track=e.card.track,
                            status=e.status, cells=cells))
        rows.sort(key=lambda r: (r.rank, r.name))
        tabs.append(Tab(id=tab_id, title=title, n_slices=int(sel.sum()),
                        n_patients=len(set(patients[sel])), rows=rows, stats=stats))
    study_cols = study_columns(e.results for e in ranked if e.results is not None)
    study_rows = []
    for e in ranked:
        scores = study_scores(e.results) if e.results is not None else {}
        if scores and e.card is not None:
            study_rows.append(StudyRow(name=e.card.name, key=e.key,
                                       cells=[scores.get(m, (None, None)) for m, _ in study_cols]))
    return BoardView(board=board, metrics=list(cfg.metrics), tabs=tabs, excluded=excluded,
                     study_columns=study_cols, study_rows=study_rows)
