"""The method card every submission carries (``card.yaml`` in the submission folder).

A card is a short YAML (or JSON) mapping::

    name: My MAR method
    authors: [A. Author, B. Author]
    code: https://github.com/me/my-mar
    licence: Apache-2.0
    track: paired-supervised        # or unsupervised, classic
    no_test_patients: true          # no test patient was used to train or tune the method
    description: one paragraph (optional)
    training_data:                  # what the method learnt from ([] for none); optional
      - dataset: artifactgsi/ArtifactGSI-Sim
        splits: [train]
      - dataset: other-org/other-ct-data
        splits: [train, validation]
    hub_model: me/my-mar            # its Hub model repo, for the Hub's evaluation results

``track`` separates methods trained on paired (ordinary, GSI) slices, methods trained without
pairs, and classic methods that need no training; the board shows and filters by it.

``training_data`` declares the data the method was trained, tuned or selected on: the board
shows it and marks an entry "zero-shot" when none of it is the board's own dataset (MTEB's
idea: a score on data the method never saw tells more). Leaving it out shows "not declared";
``[]`` says the method learnt nothing (classic methods). On the public track a card may never
list the board's test split (``no_test_patients`` must hold); a hidden-track card
(:class:`HiddenCard`) may, since its test set is drawn fresh each season, and the board then
shows that it saw the public test patients.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leaderboard.errors import LeaderboardError

from .files import MAX_CARD_BYTES, EntryFileError, read_limited

#: Tracks a method competes in.
TRACKS: tuple[str, ...] = ("paired-supervised", "unsupervised", "classic")

#: The statement a card makes by setting ``no_test_patients: true``.
NO_TEST_STATEMENT = ("No slice of any test patient was used to train, tune or select "
                     "this method.")

#: The card's file name inside a submission folder.
CARD_FILE = "card.yaml"

#: Longest method name shown on the board (characters).
MAX_NAME_CHARS = 120
#: Unicode categories refused in the card's text: control (NUL, escapes), format (right-to-left
#: overrides, zero-width characters), surrogates, private use, unassigned, line / paragraph
#: separators. They can hide or reorder what the page shows.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _visible_line(v: str) -> str:
    """``v`` stripped, or ValueError when it is blank or not plain visible text."""
    if not v.strip():
        raise ValueError("is blank")
    problem = _text_problem(v)
    if problem:
        raise ValueError(problem)
    return v.strip()


def _text_problem(text: str, *, newlines: bool = False) -> str | None:
    for i, ch in enumerate(text):
        if newlines and ch in "\n\t":
            continue
        cat = unicodedata.category(ch)
        if cat in _REFUSED_CATEGORIES:
            name = unicodedata.name(ch, f"U+{ord(ch):04X}")
            return (f"holds the invisible or control character {name} (U+{ord(ch):04X}, "
                    f"category {cat}) at position {i}")
    return None

CARD_TEMPLATE = """\
name: My MAR method
authors: [First Author, Second Author]
code: https://example.org/my-method
licence: Apache-2.0
track: classic            # paired-supervised | unsupervised | classic
no_test_patients: true    # no test patient was used to train, tune or select the method
description: One paragraph on what the method does.
training_data: []         # datasets and splits it learnt from, e.g.
                          # [{dataset: artifactgsi/ArtifactGSI-Sim, splits: [train]}]
"""


class CardError(LeaderboardError, ValueError):
    """The card is missing or invalid (the message names the file and the field)."""


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")


class TrainingData(BaseModel):
    """One dataset a method learnt from: its Hub id (or name) and the splits used."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=200)
    splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1, max_length=20)
    revision: str | None = Field(None, max_length=100)

    @field_validator("dataset", "revision")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        return None if v is None else _visible_line(v)

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: list[str]) -> list[str]:
        for s in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", s):
                raise ValueError(f"split {s[:40]!r} is not a split name (letters, digits, "
                                 "'_', '.', '-')")
        return v


class MethodCard(BaseModel):
    """A submission's method card (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    authors: list[str] = Field(min_length=1, max_length=100)
    code: str = Field(min_length=1, max_length=500, description="link to the code")
    licence: str = Field(min_length=1, max_length=100)
    track: Literal["paired-supervised", "unsupervised", "classic"]
    no_test_patients: bool
    description: str = Field("", max_length=5000)
    training_data: list[TrainingData] | None = Field(None, max_length=50)
    hub_model: str | None = Field(None, max_length=200, description="Hub model repo id")

    @field_validator("hub_model")
    @classmethod
    def _hub_model(cls, v: str | None) -> str | None:
        if v is not None and not _ID.fullmatch(v):
            raise ValueError(f"{v[:100]!r} is not a Hub model repo id (org/name)")
        return v

    @field_validator("name", "code", "licence")
    @classmethod
    def _one_line(cls, v: str) -> str:
        # The name is what the page shows: it must be visible, one line, in reading order.
        return _visible_line(v)

    @field_validator("authors")
    @classmethod
    def _authors(cls, v: list[str]) -> list[str]:
        for i, a in enumerate(v):
            if not a.strip() or len(a) > 200:
                raise ValueError(f"author {i} is blank or longer than 200 characters")
            problem = _text_problem(a)
            if problem:
                raise ValueError(f"author {i} {problem}")
        return [a.strip() for a in v]

    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        problem = _text_problem(v, newlines=True)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("no_test_patients")
    @classmethod
    def _statement(cls, v: bool) -> bool:
        # A board only accepts methods that never saw a test patient.
        if v is not True:
            raise ValueError("must be true: " + NO_TEST_STATEMENT)
        return v

    @classmethod
    def load(cls, path: Path | str) -> MethodCard:
        """Read a YAML / JSON card, raising :class:`CardError` that names file and field."""
        p = Path(path)
        if not p.is_file():
            raise CardError(f"{p}: no method card; write one like this:\n{CARD_TEMPLATE}")
        try:
            text = read_limited(p, MAX_CARD_BYTES, "method card").decode("utf-8")
        except EntryFileError as e:
            raise CardError(str(e)) from None
        except UnicodeDecodeError as e:
            raise CardError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save the "
                            "card as UTF-8") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CardError(f"{p}: not valid YAML/JSON ({e})") from e
        except RecursionError:
            raise CardError(f"{p}: nested too deeply to be a method card") from None
        if not isinstance(raw, dict):
            raise CardError(f"{p}: expected a mapping of fields, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            fields = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                               for err in e.errors())
            raise CardError(f"{p}: invalid method card: {fields}") from None

    def to_yaml(self) -> str:
        # Fields left out stay out, so a card written back reads as its author wrote it.
        return yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False,
                              allow_unicode=True)

    def trained_on(self, datasets: set[str], split: str) -> bool:
        """Whether ``training_data`` lists ``split`` of one of ``datasets`` (the board's)."""
        return any(t.dataset in datasets and split in t.splits
                   for t in self.training_data or [])


class HiddenCard(MethodCard):
    """A hidden-track card: like :class:`MethodCard`, but ``no_test_patients: false`` is
    allowed (the hidden test set is new each season; the board shows what the method saw)."""

    @field_validator("no_test_patients")
    @classmethod
    def _statement(cls, v: bool) -> bool:
        return v


def training_label(card: MethodCard | None, datasets: set[str],
                   test_split: str = "test") -> tuple[str, str]:
    """How the page labels what an entry learnt from (MTEB's "zero-shot"): (kind, text), kind
    being ``zero-shot`` (none of the board's ``datasets``), ``in-domain`` (their training
    splits), ``saw-test`` (the board's test split, or ``no_test_patients: false``), or
    ``undeclared``."""
    if card is None or card.training_data is None:
        return "undeclared", "not declared"
    if not card.training_data:
        return "zero-shot", "none (no training)"
    text = "; ".join(f"{t.dataset}: {', '.join(t.splits)}" for t in card.training_data)
    if card.trained_on(datasets, test_split) or not card.no_test_patients:
        return "saw-test", text
    if any(t.dataset in datasets for t in card.training_data):
        return "in-domain", text
    return "zero-shot", text
