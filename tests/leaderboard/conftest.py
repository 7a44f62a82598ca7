"""Fixtures of the leaderboard tests: a board folder and a factory of runs on it (the data
they write comes from :mod:`tests.helpers.board`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.board import board_config, make_results, method_scores
from tests.helpers.fakehub import FakeHub
from tests.helpers.hubcli import hub_environment


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str, offset: float = 0.0, seed: int = 0, **kw: object) -> Path:
        psnr, ssim = method_scores(offset, seed)
        return make_results(tmp_path / "runs" / name, name, psnr, ssim, seed=seed, **kw)
    return make


@pytest.fixture
def board_dir(tmp_path: Path) -> Path:
    d = tmp_path / "board"
    d.mkdir()
    board_config().save(d / "board.json")
    return d


@pytest.fixture
def hub_env(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fake Hub and an environment for subprocesses that talk to it: (hub, env)."""
    with FakeHub(page_size=3) as hub:
        yield hub, hub_environment(hub, tmp_path / "hf_home")
