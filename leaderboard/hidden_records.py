"""The hidden track as the board stores it: the ``evaluation.json`` record of an evaluated
entry (:class:`Evaluation`), and the reading of ``hidden/<season>/<method>/<version>/``
folders into :class:`HiddenEntry` / :class:`HiddenSeason` with their problems. Evaluating an
entry (installing, running and scoring it) is :mod:`leaderboard.hidden`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .board import read_card, safe_segment, short
from .card import CARD_FILE, HiddenCard
from .efficiency import Efficiency
from .errors import LeaderboardError
from .files import MAX_VERIFICATION_BYTES, EntryFileError, inside, read_limited
from .season import SEASON_FILE, SeasonCard

HIDDEN = "hidden"
EVALUATION_FILE = "evaluation.json"
EVALUATION_FORMAT = "marbench-hidden-evaluation/1"

Reason = Literal["install", "entry_point", "dependency", "network", "file_access",
                 "time_limit", "memory_limit", "crashed", "predictions"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PackageRecord(_Model):
    """The submitted package as installed."""

    file: str
    sha256: str
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None
    target: str | None = None


class WeightsRecord(_Model):
    """The weights handed to the method (a file / folder, or a Hub model repo: ``repo_id``)."""

    source: str
    sha256: str
    files: int
    parameters: int | None = None
    repo_id: str | None = None


class SliceScores(_Model):
    patient_id: str
    slice_index: int
    implant_type: str
    scores: dict[str, dict[str, float]]


class Evaluation(_Model):
    """``evaluation.json``: the board's run of a hidden-track entry (see the module
    docstring). ``status`` ``failed`` carries the ``reason`` code and a sentence."""

    format: Literal["marbench-hidden-evaluation/1"] = EVALUATION_FORMAT
    season: str
    season_manifest_sha256: str
    status: Literal["scored", "failed"]
    reason: Reason | None = None
    message: str | None = None
    method: str
    version: str
    options: dict[str, Any] = Field(default_factory=dict)
    package: PackageRecord
    weights: WeightsRecord | None = None
    protocol: str | None = None
    per_slice: list[SliceScores] = Field(default_factory=list)
    efficiency: Efficiency | None = None
    sandbox: dict[str, Any] = Field(default_factory=dict)
    evaluated_utc: datetime
    tool: str = ""

    def values(self) -> dict[tuple[str, int], dict[str, dict[str, float]]]:
        return {(s.patient_id, s.slice_index): s.scores for s in self.per_slice}



@dataclass
class HiddenEntry:
    """One evaluated method of a season on a board (``hidden/<season>/<method>/<version>``)."""

    season: str
    key: str
    folder: Path
    card: HiddenCard | None = None
    evaluation: Evaluation | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.card is None or self.evaluation is None or self.problems:
            return "invalid"
        return "evaluated" if self.evaluation.status == "scored" else "failed"

    @property
    def reasons(self) -> list[str]:
        out = list(self.problems)
        ev = self.evaluation
        if ev is not None and ev.status == "failed":
            out.append(f"[{ev.reason}] {ev.message or ''}".strip())
        return [short(r) for r in out]

    @property
    def label(self) -> str:
        return self.card.name if self.card is not None else self.key

    @property
    def link_id(self) -> str:
        return f"{HIDDEN}/{self.season}/{self.key}"


@dataclass
class HiddenSeason:
    """A season's card as published on the board, and its entries."""

    name: str
    folder: Path
    card: SeasonCard | None
    entries: list[HiddenEntry]
    problems: list[str] = field(default_factory=list)


def read_hidden_entry(folder: Path, season: SeasonCard | None, name: str, key: str,
                      root: Path | None = None) -> HiddenEntry:
    """Load one hidden entry; problems are recorded, never raised. Its files are read only
    where they resolve inside ``root`` (the board's trusted folder)."""
    e = HiddenEntry(season=name, key=key, folder=folder)
    for f in (CARD_FILE, EVALUATION_FILE):
        try:
            inside(folder, f, root)
        except EntryFileError as err:
            e.problems.append(f"[entry_folder] {short(str(err))}")
            return e
    e.card = read_card(HiddenCard.load, folder, e.problems)
    try:
        e.evaluation = Evaluation.model_validate_json(
            read_limited(folder / EVALUATION_FILE, MAX_VERIFICATION_BYTES * 64,
                         "evaluation file"))
    except (ValidationError, EntryFileError, FileNotFoundError, OSError,
            RecursionError) as err:
        e.problems.append(f"[evaluation] {EVALUATION_FILE}: "
                          f"{short(str(err), 300) or 'nested too deeply'}")
    try:
        extra = sorted(p.name for p in folder.iterdir() if p.name not in (CARD_FILE,
                                                                           EVALUATION_FILE))
    except OSError as err:
        extra = [f"(cannot list the folder: {err})"]
    if extra:
        e.problems.append(f"[unexpected_file] {', '.join(extra[:5])}: a hidden entry holds "
                          "only card.yaml and the board's evaluation.json")
    ev = e.evaluation
    if ev is not None:
        if ev.season != name:
            e.problems.append(f"[evaluation] made for season {ev.season!r}, filed under "
                              f"{name!r}")
        if f"{safe_segment(ev.method)}/{safe_segment(ev.version)}" != key:
            e.problems.append(f"[entry_folder] {key!r} is not the folder of method "
                              f"{ev.method!r} version {ev.version!r}")
        if season is not None:
            if ev.season_manifest_sha256 != season.manifest_sha256:
                e.problems.append("[evaluation] scored on another hidden set than the "
                                  "season's (manifest sha256 differs)")
            if ev.status == "scored":
                want = {(s.patient_id, s.slice_index) for s in season.slices}
                got = [(s.patient_id, s.slice_index) for s in ev.per_slice]
                if set(got) != want or len(got) != len(want):
                    e.problems.append("[evaluation] its slices are not the season's "
                                      "hidden slices")
    return e


def read_seasons(root: Path, trusted: Path | None = None) -> list[HiddenSeason]:
    """Every ``hidden/<season>/`` of a board folder with its entries, sorted by name; files
    are read only where they resolve inside ``trusted`` (default ``root``)."""
    trusted = trusted or root
    base = root / HIDDEN
    out: list[HiddenSeason] = []
    if not base.is_dir():
        return out
    for sdir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problems: list[str] = []
        card: SeasonCard | None = None
        try:
            card = SeasonCard.load(inside(sdir, SEASON_FILE, trusted))
        except (LeaderboardError, OSError) as err:
            problems.append(short(str(err)))
        entries: list[HiddenEntry] = []
        for mdir in sorted(p for p in sdir.iterdir() if p.is_dir()
                           and not p.name.startswith(".")):
            for vdir in sorted(p for p in mdir.iterdir() if p.is_dir()
                               and not p.name.startswith(".")):
                key = f"{mdir.name}/{vdir.name}"
                if mdir.is_symlink() or vdir.is_symlink():
                    entries.append(HiddenEntry(sdir.name, key, vdir, problems=[
                        f"entry folder {key!r} is a symbolic link; refused"]))
                else:
                    entries.append(read_hidden_entry(vdir, card, sdir.name, key, trusted))
        out.append(HiddenSeason(sdir.name, sdir, card, entries, problems))
    return out

