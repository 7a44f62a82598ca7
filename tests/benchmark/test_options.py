"""One option channel: ``-O key=value`` and ``create_method(name, **options)`` reach the
method's constructor, unknown keys are refused with a suggestion, and results record what the
instance actually used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def built(tiny_built, isolated_datasets_cache) -> Path:
    return Path(tiny_built.built)


def test_create_method_passes_options_to_the_constructor():
    from benchmark.registry import create_method

    nmar = create_method("nmar", bone_hu=350)
    assert nmar.bone_hu == 350 and nmar.prior_setup.bone_hu == 350
    assert nmar.effective_options()["bone_hu"] == 350
    assert create_method("nmar").effective_options()["bone_hu"] == 500.0


def test_unknown_option_is_refused_with_a_suggestion():
    from benchmark.registry import UnknownOptionError, create_method

    with pytest.raises(UnknownOptionError, match=r"no option 'bone_h'\. Did you mean 'bone_hu'"):
        create_method("nmar", bone_h=350)
    with pytest.raises(UnknownOptionError, match=r"no option 'bogus'.*Its options: filter"):
        create_method("nmar", bone_hu=350, bogus=1)
    with pytest.raises(UnknownOptionError, match=r"'identity' has no option 'x'.*none"):
        create_method("identity", x=1)


def test_cli_option_changes_predictions_and_is_recorded(built, tmp_path):
    from benchmark.cli import app

    runs = {}
    # The tiny phantom has no bone between 350 and 500 HU, so the soft-tissue level of the
    # prior is moved as well: the prediction must change.
    for label, opts in (("default", []),
                        ("350", ["-O", "bone_hu=350", "-O", "soft_tissue_hu=300"])):
        out = tmp_path / label
        r = CliRunner().invoke(app, ["run", "--method", "nmar", "--data", str(built), "--out",
                                     str(out), "--no-lpips", "--no-clinical", *opts])
        assert r.exit_code == 0, r.output
        runs[label] = json.loads((out / "results.json").read_text())
    assert runs["default"]["method"]["options"]["bone_hu"] == 500.0
    assert runs["350"]["method"]["options"]["bone_hu"] == 350
    assert runs["350"]["method"]["options"]["soft_tissue_hu"] == 300
    assert runs["350"]["predictions"]["sha256"] != runs["default"]["predictions"]["sha256"]


def test_cli_unknown_option_exits_2_naming_it(built, tmp_path):
    from benchmark.cli import app

    r = CliRunner().invoke(app, ["run", "--method", "nmar", "--data", str(built), "--out",
                                 str(tmp_path / "o"), "-O", "bone_hu=350", "-O", "bogus=1"])
    assert r.exit_code == 2
    assert "no option 'bogus'" in r.output and "bone_hu" in r.output
    assert not (tmp_path / "o").exists()


def test_effective_options_read_back_what_the_instance_uses():
    from benchmark.method import MARMethod, MAROutput

    class Clamps(MARMethod):
        name = "clamps"

        def __init__(self, lo_hu: float = -1024.0, path: Path | None = None) -> None:
            self.lo_hu = max(lo_hu, -1024.0)  # the instance corrects the value it was given
            self.path = path

        def reduce(self, batch):
            return MAROutput(image=batch.ordinary.clamp(min=self.lo_hu))

    assert Clamps(lo_hu=-5000, path=Path("/w")).effective_options() == {
        "lo_hu": -1024.0, "path": "/w"}


def test_trainer_registry_finds_lga_and_suggests_names():
    from benchmark.registry import UnknownTrainerError, get_trainer

    info = get_trainer("lga")
    assert info.target == "baselines.lga.train:train" and "lga-cpu" in info.configs()
    with pytest.raises(UnknownTrainerError, match="Did you mean 'lga'"):
        get_trainer("lgaa")


def test_train_passes_extra_flags_as_config_overrides(tmp_path, monkeypatch):
    """``marbench train NAME --key value`` reaches the trainer as overrides."""
    from benchmark import registry
    from benchmark.cli import app

    seen = {}

    def fake_train(config, data, out, *, resume=False, overrides=None):
        seen.update(config=config, data=data, out=out, resume=resume, overrides=overrides)
        return Path(out) / "model"

    monkeypatch.setattr(registry.TrainerInfo, "load", lambda self: fake_train)
    r = CliRunner().invoke(app, ["train", "lga", "--config", "lga-cpu", "--data", "D", "--out",
                                 str(tmp_path), "--input", "ordinary", "--seed=3", "-O",
                                 "lr=0.5"])
    assert r.exit_code == 0, r.output
    assert seen["overrides"] == {"input": "ordinary", "seed": 3, "lr": 0.5}
    assert seen["config"] == "lga-cpu" and not seen["resume"]


def test_lga_unknown_config_key_is_an_error(tmp_path):
    from benchmark.cli import app

    r = CliRunner().invoke(app, ["train", "lga", "--config", "lga-cpu", "--data", "D", "--out",
                                 str(tmp_path), "--vae_epoch", "3"])
    assert r.exit_code == 2 and "vae_epoch" in r.output
