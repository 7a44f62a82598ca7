"""The import-linter contracts in pyproject.toml name modules one by one (import-linter has
no "everything but" form): a new module must join the lists, or the contract would silently
stop covering it. These tests keep the lists complete."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> dict[str, dict]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["name"]: c for c in cfg["tool"]["importlinter"]["contracts"]}


def _modules(package: str) -> set[str]:
    """Top-level modules and subpackages of ``package``."""
    folder = ROOT / package
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    return {f"{package}.{n}" for n in names}


def _contract(fragment: str) -> dict:
    hits = [c for name, c in _contracts().items() if fragment in name]
    assert len(hits) == 1, f"no single contract named like {fragment!r}"
    return hits[0]


def test_leaderboard_contract_covers_every_benchmark_module_but_the_schema():
    forbidden = set(_contract("leaderboard imports only")["forbidden_modules"])
    missing = _modules("benchmark") - {"benchmark.results"} - forbidden
    assert not missing, f"add {sorted(missing)} to the leaderboard contract's forbidden_modules"
    assert "benchmark.results" not in forbidden


def test_schema_contract_covers_every_other_dataset_module():
    forbidden = set(_contract("schema is a leaf")["forbidden_modules"])
    missing = _modules("artifactgsi") - {"artifactgsi.schema"} - forbidden
    assert not missing, f"add {sorted(missing)} to the schema contract's forbidden_modules"


def test_benchmark_contract_forbids_the_methods():
    assert "baselines" in _contract("benchmark never imports")["forbidden_modules"]


def test_families_contract_covers_every_baseline_family():
    """Every subpackage of baselines is a family: each imports the training kit and
    baselines' shared modules, never another family."""
    families = {f"baselines.{p.name}" for p in (ROOT / "baselines").iterdir()
                if (p / "__init__.py").is_file()}
    listed = set(_contract("families are independent")["modules"])
    assert families == listed, f"the families contract should list {sorted(families)}"
