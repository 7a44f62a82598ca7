"""Fixtures of the shipped methods' tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def data(tiny_pairs) -> Path:
    """The tiny 32 px pairs dataset of the module (:func:`tests.conftest.tiny_pairs`)."""
    return tiny_pairs
