"""``benchmark.testing.check_method``: the contract test a plug-in author runs. A method
written only against the docs, installed as a package with an entry point, passes it and
runs by name; broken ones fail with a message that names the check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from benchmark.method import MARInput, MARMethod, MAROutput
from benchmark.registry import MethodRegistry
from benchmark.testing import MethodContractError, check_method, synthetic_batch

# The README's "Add a method" example, as a user would type it into their own package.
DOCS_PLUGIN = '''
from benchmark.method import MARInput, MARMethod, MAROutput


class MyMethod(MARMethod):
    """Sets the metal to a fixed value (the README's example)."""

    name, version = "mine", "1"

    def __init__(self, metal_hu: float = 3000.0) -> None:
        self.metal_hu = metal_hu

    def reduce(self, batch: MARInput) -> MAROutput:
        out = batch.ordinary.clone()
        out[batch.metal_mask] = self.metal_hu
        return MAROutput(image=out)
'''


@pytest.fixture
def docs_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A throwaway package ``my_mar`` installed with a ``marbench.methods`` entry point."""
    site = tmp_path / "site"
    (site / "my_mar").mkdir(parents=True)
    (site / "my_mar" / "__init__.py").write_text(DOCS_PLUGIN, encoding="utf-8")
    info = site / "my_mar-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-mar\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text('[marbench.methods]\nmine = my_mar:MyMethod\n')
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("my_mar", None)


def test_a_method_written_from_the_docs_passes_and_runs_by_name(docs_plugin):
    reg = MethodRegistry()
    cls = reg.get("mine")
    method = check_method(cls, metal_hu=2800.0)
    assert method.effective_options() == {"metal_hu": 2800.0}
    batch = synthetic_batch(2, 32)
    out = reg.create("mine", metal_hu=2800.0).reduce(batch).image
    assert torch.all(out[batch.metal_mask] == 2800.0)
    assert torch.equal(out[~batch.metal_mask], batch.ordinary[~batch.metal_mask])


class _Base(MARMethod):
    name = "broken"

    def reduce(self, batch: MARInput) -> MAROutput:
        return MAROutput(image=batch.ordinary.clone())


class NaNOut(_Base):
    def reduce(self, batch):
        out = batch.ordinary.clone()
        out[0, 0, 3, 3] = float("nan")
        return MAROutput(image=out)


class WrongShape(_Base):
    def reduce(self, batch):
        return MAROutput(image=batch.ordinary[:, :, :-1])


class EditsInPlace(_Base):
    def reduce(self, batch):
        batch.metal_mask.fill_(False)
        return MAROutput(image=batch.ordinary.clone())


class Random(_Base):
    def reduce(self, batch):
        return MAROutput(image=batch.ordinary + torch.randn_like(batch.ordinary))


class PerBatchNorm(_Base):
    def reduce(self, batch):
        x = batch.ordinary
        return MAROutput(image=x - x.mean() + x.mean(dim=(1, 2, 3), keepdim=True))


class UnitRange(_Base):
    def reduce(self, batch):
        return MAROutput(image=(batch.ordinary + 1024.0) / 4095.0 * 1e5)


class DropsItsOption(_Base):
    def __init__(self, strength: float = 1.0) -> None:
        self.strength = 1.0  # ignores what it was given


@pytest.mark.parametrize(("cls", "check", "detail"), [
    (NaNOut, "output", r"1 NaN"),
    (WrongShape, "output", r"shape \(2, 1, 63, 64\)"),
    (EditsInPlace, "inputs untouched", r"MARInput.metal_mask in place"),
    (Random, "determinism", r"same input gave outputs"),
    (PerBatchNorm, "batch independence", r"run alone vs in a batch of 2"),
    (UnitRange, "HU range", r"outside"),
])
def test_broken_methods_fail_naming_the_check(cls, check, detail):
    with pytest.raises(MethodContractError, match=rf"check_method\(broken\): {check}: .*{detail}"):
        check_method(cls)


def test_an_option_the_instance_does_not_keep_fails():
    with pytest.raises(MethodContractError, match=r"options: option strength=0.5 was given"):
        check_method(DropsItsOption, strength=0.5)
    with pytest.raises(MethodContractError, match=r"options: .*no option 'strenght'"):
        check_method(DropsItsOption, strenght=0.5)
