"""One meaning per environment variable: ``ARTIFACTGSI_CACHE`` is the folder of the project's
own caches (physics tables, the deep baselines' training arrays), ``ARTIFACTGSI_HUB_CACHE``
the Hub download cache; the old use of ``ARTIFACTGSI_CACHE`` for downloads still works, with
a FutureWarning."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactgsi import settings
from artifactgsi.physics.spectra import cache_dir


def test_the_project_cache_is_one_folder(tmp_path, monkeypatch):
    from baselines.deep_common import TrainConfig
    from baselines.deep_train import data_cache_dir

    monkeypatch.delenv("ARTIFACTGSI_CACHE", raising=False)
    assert settings.cache_root() == Path.home() / ".cache" / "artifactgsi"
    monkeypatch.setenv("ARTIFACTGSI_CACHE", str(tmp_path))
    assert settings.cache_root() == cache_dir() == tmp_path
    assert data_cache_dir(TrainConfig()) == tmp_path / "deep-data"
    assert data_cache_dir(TrainConfig(data_cache=str(tmp_path / "x"))) == tmp_path / "x"


def test_hub_downloads_have_their_own_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("ARTIFACTGSI_CACHE", raising=False)
    monkeypatch.delenv("ARTIFACTGSI_HUB_CACHE", raising=False)
    assert settings.hub_cache_dir() is None  # the standard Hugging Face cache
    monkeypatch.setenv("ARTIFACTGSI_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("ARTIFACTGSI_CACHE", str(tmp_path / "own"))
    assert settings.hub_cache_dir() == tmp_path / "hub"
    monkeypatch.delenv("ARTIFACTGSI_HUB_CACHE")
    with pytest.warns(FutureWarning, match="set ARTIFACTGSI_HUB_CACHE"):
        assert settings.hub_cache_dir() == tmp_path / "own"
