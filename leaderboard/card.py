"""The method card every submission carries (``card.yaml`` in the submission folder).

A card is a short YAML (or JSON) mapping::

    name: My MAR method
    authors: [A. Author, B. Author]
    code: https://github.com/me/my-mar
    licence: Apache-2.0
    track: paired-supervised        # or unsupervised, classic
    no_test_patients: true          # no test patient was used to train or tune the method
    description: one paragraph (optional)

``track`` separates methods trained on paired (ordinary, GSI) slices, methods trained without
pairs, and classic methods that need no training; the board shows and filters by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leaderboard.errors import LeaderboardError

#: Tracks a method competes in.
TRACKS: tuple[str, ...] = ("paired-supervised", "unsupervised", "classic")

#: The statement a card makes by setting ``no_test_patients: true``.
NO_TEST_STATEMENT = ("No slice of any test patient was used to train, tune or select "
                     "this method.")

#: The card's file name inside a submission folder.
CARD_FILE = "card.yaml"

CARD_TEMPLATE = """\
name: My MAR method
authors: [First Author, Second Author]
code: https://example.org/my-method
licence: Apache-2.0
track: classic            # paired-supervised | unsupervised | classic
no_test_patients: true    # no test patient was used to train, tune or select the method
description: One paragraph on what the method does.
"""


class CardError(LeaderboardError, ValueError):
    """The card is missing or invalid (the message names the file and the field)."""


class MethodCard(BaseModel):
    """A submission's method card (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    authors: list[str] = Field(min_length=1)
    code: str = Field(min_length=1, description="link to the code")
    licence: str = Field(min_length=1)
    track: Literal["paired-supervised", "unsupervised", "classic"]
    no_test_patients: bool
    description: str = ""

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
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise CardError(f"{p}: not valid YAML/JSON ({e})") from e
        if not isinstance(raw, dict):
            raise CardError(f"{p}: expected a mapping of fields, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            fields = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                               for err in e.errors())
            raise CardError(f"{p}: invalid method card: {fields}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False, allow_unicode=True)
