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

The hidden track adds one tab per season (:attr:`BoardView.hidden`): the methods the board ran
itself on that season's hidden set, ranked by the same metrics with the same statistics over
the season's slices. Every row also carries what the card declares it learnt from (the
"zero-shot" column) and what the board measured of its cost (seconds per slice, peak memory,
parameters: from ``leaderboard evaluate``, or from ``leaderboard verify --reproduce`` on the
public track; absent where the board never ran the method).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from benchmark.results import MetricDefinition, study_columns, study_scores

from .board import Board, BoardSlice, BootstrapSettings, Entry, RankedMetric
from .card import training_label
from .efficiency import Efficiency
from .hidden_records import HiddenEntry
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
    entry: Entry | HiddenEntry
    name: str
    key: str
    track: str
    status: str
    cells: list[Cell | None]  # None: the metric has no slice in this tab (no ideal image)
    link_id: str = ""          # folder of the entry's files on the page
    training: tuple[str, str] = ("undeclared", "not declared")  # (kind, text)
    efficiency: Efficiency | None = None

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
    season: str | None = None  # the hidden season this tab ranks, None for the public track


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
    excluded: list[tuple[Entry | HiddenEntry, str, list[str]]] = field(default_factory=list)
    hidden: list[Tab] = field(default_factory=list)
    # Metrics reduced over a whole study (the lesion study), as the entries recorded them.
    study_columns: list[tuple[str, MetricDefinition]] = field(default_factory=list)
    study_rows: list[StudyRow] = field(default_factory=list)
    built_utc: datetime = field(
        default_factory=lambda: datetime.now(timezone.utc))  # noqa: UP017 (py3.10)


def display_names(entries: list[Entry] | list[HiddenEntry]) -> dict[str, str]:
    """Entry key -> the name shown: the card's name, with the key where names are shared."""
    counts = Counter(e.label.casefold() for e in entries)
    return {e.key: e.label if counts[e.label.casefold()] == 1 else f"{e.label} ({e.key})"
            for e in entries}


def build_view(board: Board) -> BoardView:
    """Rank the valid entries (checked when the board was opened) per tab and metric."""
    cfg = board.config
    ranked: list[Entry] = []
    excluded: list[tuple[Entry | HiddenEntry, str, list[str]]] = []
    for e in board.entries:
        reasons = e.reasons
        if reasons:
            status = e.status if e.status == "rejected" else "invalid"
            excluded.append((e, status, reasons))
        elif e.status in RANKED:
            ranked.append(e)
        else:
            excluded.append((e, e.status, ["rejected by verification"]))
    rows_of: list[np.ndarray] = []
    for e in list(ranked):
        assert e.results is not None
        by_key = {(s.patient_id, s.slice_index): s.scores for s in e.results.per_slice}
        try:
            rows_of.append(_values(by_key, cfg.slices, cfg.metrics))
        except (KeyError, TypeError, ValueError) as err:  # an entry never breaks the board
            ranked.remove(e)
            excluded.append((e, "invalid", [f"a ranked value is missing ({err!r})"]))
    implants = np.array([s.implant_type for s in cfg.slices])
    subsets = [("all", "All implants", np.ones(len(cfg.slices), bool))]
    subsets += [(f"implant-{t}", t.replace("_", " "), implants == t)
                for t in cfg.implant_types]
    own = cfg.benchmark_datasets
    tabs = _tabs(cfg.slices, cfg.metrics, cfg.bootstrap, ranked, rows_of, subsets, [
        (e.key, e.card.track if e.card else "", e.status, e.key,
         training_label(e.card, own, cfg.dataset.split),
         e.verification.efficiency if e.verified_status == "reproduced" and e.verification
         else None) for e in ranked])
    hidden: list[Tab] = []
    for season in board.seasons:
        if season.card is None:
            for h in season.entries:
                excluded.append((h, "invalid", [f"[season] {p}" for p in season.problems]))
            continue
        scored: list[HiddenEntry] = []
        values: list[np.ndarray] = []
        for h in season.entries:
            if h.status != "evaluated" or h.evaluation is None:
                excluded.append((h, h.status, h.reasons or [h.status]))
                continue
            try:
                values.append(_values(h.evaluation.values(), season.card.slices, cfg.metrics))
            except (KeyError, TypeError, ValueError) as err:
                excluded.append((h, "invalid", [f"a ranked value is missing ({err!r})"]))
                continue
            scored.append(h)
        if not scored:
            continue
        sel = np.ones(len(season.card.slices), bool)
        tab = _tabs(season.card.slices, cfg.metrics, cfg.bootstrap, scored, values,
                    [(f"hidden-{season.name}", f"Hidden · {season.name}", sel)], [
                        (h.key, h.card.track if h.card else "", h.status, h.link_id,
                         training_label(h.card, own, cfg.dataset.split),
                         h.evaluation.efficiency if h.evaluation else None)
                        for h in scored])[0]
        tab.season = season.name
        hidden.append(tab)
    study_cols = study_columns(e.results for e in ranked if e.results is not None)
    study_rows = []
    for e in ranked:
        scores = study_scores(e.results) if e.results is not None else {}
        if scores and e.card is not None:
            study_rows.append(StudyRow(name=e.card.name, key=e.key,
                                       cells=[scores.get(m, (None, None)) for m, _ in study_cols]))
    return BoardView(board=board, metrics=list(cfg.metrics), tabs=tabs, excluded=excluded,
                     hidden=hidden, study_columns=study_cols, study_rows=study_rows)


def _values(by_key: dict[tuple[str, int], dict[str, dict[str, float]]],
            slices: list[BoardSlice], metrics: list[RankedMetric]) -> np.ndarray:
    """(metrics, slices) values in the slices' order; NaN where a slice lacks the comparison
    (validation guarantees every other value exists and is finite)."""
    v = np.full((len(metrics), len(slices)), np.nan)
    for j, m in enumerate(metrics):
        for i, s in enumerate(slices):
            if m.comparison in s.comparisons:
                v[j, i] = by_key[(s.patient_id, s.slice_index)][m.comparison][m.metric]
    return v


def _tabs(slices: list[BoardSlice], metrics: list[RankedMetric], boot: BootstrapSettings,
          entries: list[Entry] | list[HiddenEntry], rows_of: list[np.ndarray],
          subsets: list[tuple[str, str, np.ndarray]],
          info: list[tuple[str, str, str, str, tuple[str, str], Efficiency | None]]) -> list[Tab]:
    """Rank ``entries`` (their values ``rows_of``, aligned with ``slices``) on each subset of
    the slices; ``info``: (key, track, status, link id, training label, efficiency) per
    entry."""
    patients = np.array([s.patient_id for s in slices])
    has = np.array([[m.comparison in s.comparisons for s in slices] for m in metrics])
    values = np.stack(rows_of) if rows_of else np.full((0, len(metrics), len(slices)), np.nan)
    names = [i[0] for i in info]
    tabs = []
    for tab_id, title, sel in subsets:
        stats: list[MetricStats | None] = []
        if len(entries):
            for j, m in enumerate(metrics):
                use = sel & has[j]
                stats.append(None if not use.any() else compare_methods(
                    values[:, j, use], patients[use], names, m.higher_is_better,
                    n_resamples=boot.n_resamples, seed=boot.seed, unit=boot.unit,
                    alpha=boot.alpha))
        rows = []
        for i, e in enumerate(entries):
            assert e.card is not None
            key, track, status, link, training, eff = info[i]
            cells = [None if st is None else
                     Cell(float(st.means[i]), float(st.ci[i, 0]), float(st.ci[i, 1]),
                          int(st.rank[i]), int(st.rank_range[i, 0]), int(st.rank_range[i, 1]))
                     for st in stats]
            rows.append(Row(entry=e, name=e.card.name, key=key, track=track, status=status,
                            cells=cells, link_id=link, training=training, efficiency=eff))
        rows.sort(key=lambda r: (r.rank, r.name))
        tabs.append(Tab(id=tab_id, title=title, n_slices=int(sel.sum()),
                        n_patients=len(set(patients[sel])), rows=rows, stats=stats))
    return tabs
