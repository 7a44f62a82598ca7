"""Every error a package declares derives from that package's root exception, so a caller
catches all of them with one ``except`` (and each keeps the built-in base it had)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

ROOTS = {"benchmark": ("benchmark.errors", "MARBenchError"),
         "baselines": ("baselines.errors", "BaselinesError"),
         "artifactgsi": ("artifactgsi.errors", "ArtifactGSIError"),
         "leaderboard": ("leaderboard.errors", "LeaderboardError")}


def _declared_errors(package: str) -> list[type[BaseException]]:
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_declared_error_derives_from_the_package_root(package):
    module, name = ROOTS[package]
    root = getattr(importlib.import_module(module), name)
    errors = _declared_errors(package)
    assert len(errors) > 1
    outside = sorted(f"{e.__module__}.{e.__qualname__}" for e in errors
                     if not issubclass(e, root))
    assert not outside, f"derive these from {module}.{name}: {outside}"
