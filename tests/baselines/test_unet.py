"""The U-Net baseline: config checks, residual output on the chosen inputs, the shared
config loader and normalisation, a tiny end-to-end training + method run (weights round trip,
recorded target, refusal without weights) and the entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from baselines.deep_common import TrainConfig
from baselines.deep_train import sample_batch
from baselines.unet import UNetMAR, UNetModel, load_unet, load_unet_config, train
from benchmark.learn.errors import ConfigError, ImageSizeMismatchError, WeightsError
from benchmark.learn.rng import step_generator
from benchmark.method import PrepareContext, validate_output

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


def test_config_checks_and_suggestions():
    cfg = load_unet_config("unet-cpu")
    assert cfg.encoder_depth == 3 and cfg.decoder_channels == (64, 32, 16)
    assert cfg.inputs == ("ordinary", "li", "mask") and cfg.target == "gsi"
    with pytest.raises(ConfigError, match="did you mean 'patch_size'"):
        load_unet_config("unet-cpu", {"patch_sise": 32})
    with pytest.raises(ConfigError, match="decoder_channels"):
        load_unet_config("unet-cpu", {"encoder_depth": 4})
    with pytest.raises(ConfigError, match="inputs"):
        load_unet_config("unet-cpu", {"inputs": ["li"]})
    with pytest.raises(ConfigError, match="target"):
        load_unet_config("unet-cpu", {"target": "ideal"})
    with pytest.raises(ConfigError, match="expected an integer"):
        load_unet_config("unet-cpu", {"max_steps": "many"})


def test_normalisation_round_trip_and_window():
    cfg = TrainConfig(hu_min=-1000.0, hu_max=3000.0, scale=255.0)
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0, 9000.0])
    units = cfg.hu_to_model(hu)
    torch.testing.assert_close(units, torch.tensor([0.0, 0.0, 63.75, 127.5, 255.0, 255.0]))
    torch.testing.assert_close(cfg.model_to_hu(units)[1:5], hu[1:5])


def test_lr_schedules_are_pure_functions_of_the_step():
    step = TrainConfig(lr=1.0, lr_schedule="step", lr_decay_every=10, lr_gamma=0.5)
    assert [step.lr_at(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    cos = TrainConfig(lr=1.0, lr_schedule="cosine", max_steps=11, lr_final_ratio=0.0)
    assert cos.lr_at(0) == 1.0 and abs(cos.lr_at(5) - 0.5) < 1e-12 and cos.lr_at(10) == 0.0


def test_patches_are_reproducible_and_flipped_together():
    import numpy as np

    from baselines.deep_train import SliceArrays

    g = np.random.default_rng(0)
    o = g.integers(-1000, 2000, (3, 16, 16)).astype(np.int16)
    data = SliceArrays(o, o + 1, o + 2, o > 1500, ["a", "a", "b"])
    cfg = TrainConfig(patch_size=8, batch_size=5)
    a = sample_batch(data, cfg, step_generator("deep", 0, 7, 0))
    b = sample_batch(data, cfg, step_generator("deep", 0, 7, 0))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["ordinary"].shape == (5, 1, 8, 8) and a["mask"].dtype == torch.bool
    # the same crop and flip for every image of a sample
    torch.testing.assert_close(a["target"], a["ordinary"] + 1)
    torch.testing.assert_close(a["li"], a["ordinary"] + 2)
    assert torch.equal(a["mask"], a["ordinary"] > 1500)
    c = sample_batch(data, cfg, step_generator("deep", 0, 8, 0))
    assert not torch.equal(a["ordinary"], c["ordinary"])


@pytest.mark.parametrize("inputs", [("ordinary",), ("ordinary", "li", "mask")])
def test_residual_output_on_any_size(inputs):
    cfg = load_unet_config("unet-tiny", {"inputs": list(inputs)})
    model = UNetModel(cfg).eval()
    assert model.uses_li == ("li" in inputs)
    x = torch.rand(2, 1, 30, 30)  # not a multiple of 2^depth: padded inside
    li = torch.rand(2, 1, 30, 30)
    metal = torch.zeros(2, 1, 30, 30, dtype=torch.bool)
    with torch.no_grad():
        torch.nn.init.zeros_(model.net.segmentation_head[0].weight)
        torch.nn.init.zeros_(model.net.segmentation_head[0].bias)
        out = model.restore_units(x, li, metal)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x)  # a zero network leaves the input unchanged


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "unet"
    cache = str(tmp_path_factory.mktemp("deep-cache"))
    with pytest.warns(UserWarning, match="only 1 training patient"):
        return train("unet-tiny", str(data), out,
                     overrides={"data_cache": cache, "target": "clean"})


@pytest.mark.slow
def test_tiny_training_runs_the_method(trained, data):
    from benchmark.data import open_split

    meta = json.loads((trained / "config.json").read_text())
    assert meta["family"] == "unet"
    assert meta["training"]["target"] == "clean"
    assert meta["training"]["target_column"] == "ideal"
    assert meta["model"]["parameters"] == load_unet(trained).parameter_count()
    method = UNetMAR(weights=str(trained), device="cpu", batch_size=2)
    method.prepare(PrepareContext())
    assert method.target == "clean" and method.reinsert_metal is False
    batch = open_split(data, "test").batch([0, 1, 2]).input
    out = validate_output("unet", batch, method.reduce(batch))
    assert torch.equal(out, method.reduce(batch).image)
    assert float(out.min()) >= -1024 and float(out.max()) <= 3071
    # the round trip through the weights folder gives the same network
    again = load_unet(trained)
    for (k, a), b in zip(method.model.state_dict().items(), again.state_dict().values(),
                         strict=True):
        assert torch.equal(a.cpu(), b), k
    from benchmark.testing import check_method

    # Batched convolutions round differently in float32; one model unit is 4095 HU.
    check_method(UNetMAR, size=32, atol_hu=0.01, weights=str(trained), device="cpu")
    small = open_split(data, "test").batch([0]).input
    small.ordinary = small.ordinary[..., :16, :16]
    small.metal_mask = small.metal_mask[..., :16, :16]
    with pytest.raises(ImageSizeMismatchError, match="32 px"):
        method.reduce(small)


def test_refuses_to_run_untrained(tmp_path, monkeypatch):
    monkeypatch.delenv("MARBENCH_UNET_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="marbench train unet --config unet-cpu"):
        UNetMAR().prepare(PrepareContext())
    (tmp_path / "w").mkdir()
    with pytest.raises(WeightsError, match="not a unet weights folder"):
        UNetMAR(weights=str(tmp_path / "w")).prepare(PrepareContext())


def test_entry_points():
    import importlib.metadata as md

    from benchmark.registry import get_method

    assert get_method("unet") is UNetMAR
    trainers = {e.name: e.value for e in md.entry_points(group="marbench.trainers")}
    assert trainers["unet"] == "baselines.unet:train"
    assert trainers["oscnet"] == "baselines.dictnet:train_oscnet"
    assert train.configs == ["unet-tiny", "unet-cpu", "unet-paper"]
    for name in train.configs:
        load_unet_config(name)  # every shipped config loads
