"""The dictionary-network family (dicdnet, oscnet, oscnet_plus): published parameter counts,
rotation-equivariant filters, per-image coefficients, a data-fidelity step that ignores the
metal, the published loss region, configs, and a tiny end-to-end training + benchmark run
(weights round trip, exact resume, refusals)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.deep_common import li_image
from baselines.dictnet import (
    DICDNet,
    OSCNet,
    OSCNetPlus,
    train_dicdnet,
    train_oscnet,
    train_oscnet_plus,
)
from baselines.dictnet.filters import fourier_basis
from baselines.dictnet.model import DictNet, load_dictnet, load_dictnet_config
from benchmark.learn.errors import (
    ConfigError,
    ImageSizeMismatchError,
    IncompatibleWeightsError,
    NormalisationMismatchError,
    WeightsError,
)
from benchmark.method import MARInput, PrepareContext, validate_output
from tests.helpers.files import edited_weights

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")

VARIANTS = ("dicdnet", "oscnet", "oscnet_plus")
CONFIG = {"dicdnet": "dicdnet", "oscnet": "oscnet", "oscnet_plus": "oscnet-plus"}
TRAIN = {"dicdnet": train_dicdnet, "oscnet": train_oscnet, "oscnet_plus": train_oscnet_plus}


def tiny(variant: str, **over) -> DictNet:
    torch.manual_seed(0)
    return DictNet(load_dictnet_config(f"{CONFIG[variant]}-tiny", over)).eval()


def images(b: int = 2, size: int = 24, seed: int = 0):
    """(x_ma, li, metal) in model units (0..255) with a metal disc in each image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, size, size, generator=g) * 60 + 40
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    metal = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= 9)[None, None].expand(b, 1, -1, -1)
    x_ma = torch.where(metal, torch.full_like(x, 250.0), x)
    return x_ma, x.clone(), metal.clone()


# ----------------------------------------------------------------------------- sizes


def _prox_params(channels: int, blocks: int, threshold: bool) -> int:
    """Hand count: each block = 2 x (3x3 conv with bias + BatchNorm affine)."""
    conv = channels * channels * 9 + channels
    return blocks * 2 * (conv + 2 * channels) + (channels if threshold else 0)


def test_paper_parameter_counts():
    counts = {v: DictNet(load_dictnet_config(f"{CONFIG[v]}-paper")).parameter_count()
              for v in VARIANTS}
    # Published architecture: 12 image prox nets on 33 channels, 10 artifact prox nets on
    # 32 channels, 3 x 3 init filters (32), step sizes (9 + 10), threshold, C_0 (32 x 9 x 9).
    common = (12 * _prox_params(33, 3, False) + 10 * _prox_params(32, 3, True)
              + 32 * 9 + 19 + 1 + 32 * 81)
    assert counts["oscnet"] == common + 4 * 25 + 1          # shared coefficients + bias
    assert counts["oscnet_plus"] == common + (2 * 6 * 9 + 6) + 2 * (6 * 6 * 9 + 6) \
        + (6 * 100 + 100) + 1                                # coefficient net + bias
    assert counts["dicdnet"] == common + 32 * 81             # free dictionary
    assert abs(counts["oscnet"] / 1.275e6 - 1) < 0.02
    assert abs(counts["oscnet_plus"] / 1.276e6 - 1) < 0.02
    assert counts["dicdnet"] == 1_277_332


# ----------------------------------------------------------------------------- filters


def test_oscnet_filters_rotate_by_90_degrees_every_two_orientations():
    model = DictNet(load_dictnet_config("oscnet-paper"))
    bank = model.filter_bank()[0].reshape(4, 8, 9, 9)  # filter-major: (filter, orientation)
    assert bank.abs().amax() > 0
    for i in range(8):
        # Orientation i+2 is filter i on a grid turned by +90 degrees: f_{i+2}(p) = f_i(R p),
        # R p = (-y, x); with x along columns that is torch.rot90(k=1).
        rotated = torch.rot90(bank[:, i], 1, dims=(-2, -1))
        torch.testing.assert_close(bank[:, (i + 2) % 8], rotated, atol=1e-5, rtol=0)
    # ... and not trivially (a different orientation is a different filter).
    assert (bank[:, 1] - bank[:, 0]).abs().amax() > 1e-3


def test_oscnet_filters_rotate_by_45_degrees_to_interpolation_accuracy():
    from scipy.ndimage import rotate

    model = DictNet(load_dictnet_config("oscnet-paper"))
    bank = model.filter_bank()[0].detach().reshape(4, 8, 9, 9).double().numpy()
    yy, xx = np.mgrid[-4:5, -4:5]
    inner = yy ** 2 + xx ** 2 <= 9  # away from the border, where the rotated grid has data
    for m in range(4):
        # scipy turns the array content by +45 degrees in the same sense as rot90(k=1).
        ref = rotate(bank[m, 0], 45, reshape=False, order=3)
        scale = np.abs(bank[m, 0]).max()
        err = np.abs(ref - bank[m, 1])[inner].max() / scale
        assert err < 0.1, (m, err)
        # Control: the neighbouring orientations are far from it.
        assert np.abs(ref - bank[m, 0])[inner].max() / scale > 5 * err
        assert np.abs(ref - bank[m, 7])[inner].max() / scale > 5 * err


def test_fourier_basis_is_orthonormal_over_orientations():
    b = fourier_basis(9, 5, 8, smooth=False).double()            # (8, R, 9, 9)
    assert b.shape == (8, 25, 9, 9)
    mat = b.transpose(0, 1).reshape(25, -1)
    torch.testing.assert_close(mat @ mat.T, torch.eye(25, dtype=torch.float64), atol=1e-4,
                               rtol=0)


def test_oscnet_plus_predicts_coefficients_per_image_every_stage():
    model = tiny("oscnet_plus", stages=3)
    x_ma, li, metal = images(2)
    x_ma[1] = x_ma[1].flip(-1) * 0.5 + 20  # a different second image
    out = model.unroll(x_ma, li, metal)
    assert len(out.coefficients) == 3                       # initial + re-predicted per stage
    c0 = out.coefficients[0]
    assert c0.shape == (2, 2, 25)
    torch.testing.assert_close(c0.norm(dim=-1), torch.ones(2, 2), atol=1e-4, rtol=0)
    assert (c0[0] - c0[1]).abs().amax() > 1e-4             # different images, coefficients
    assert (out.coefficients[1] - out.coefficients[0]).abs().amax() > 1e-6  # re-predicted
    bank = model.filter_bank(x_ma, x_ma)
    assert bank.shape == (2, 16, 9, 9) and (bank[0] - bank[1]).abs().amax() > 0


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("variant", VARIANTS)
def test_data_fidelity_ignores_the_metal_region(variant):
    model = tiny(variant)
    x_ma, li, metal = images(2)
    first = model.unroll(x_ma, li, metal).artifacts[0]
    inside = torch.where(metal, x_ma + 1000.0 * torch.rand_like(x_ma), x_ma)
    torch.testing.assert_close(model.unroll(inside, li, metal).artifacts[0], first,
                               atol=0, rtol=0)
    # Control: a change outside the metal does reach the first artifact estimate.
    outside = torch.where(metal, x_ma, x_ma + 30.0)
    assert (model.unroll(outside, li, metal).artifacts[0] - first).abs().amax() > 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_is_taken_on_the_non_metal_region(variant):
    model = tiny(variant).train()
    x_ma, li, metal = images(2)
    torch.manual_seed(1)
    batch = {"ordinary": x_ma, "li": li, "mask": metal, "target": li * 0.9}
    a = model.losses(batch)
    changed = dict(batch, target=torch.where(metal, batch["target"] + 500.0, batch["target"]))
    b = model.losses(changed)
    torch.testing.assert_close(a["loss"], b["loss"])
    shifted = dict(batch, target=batch["target"] + 5.0)
    assert not torch.isclose(model.losses(shifted)["loss"], a["loss"])
    a["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters()
               if not n.startswith("eta_m") or model.config.stages > 1)


def test_config_errors_name_key_and_suggest():
    with pytest.raises(ConfigError, match="did you mean 'stages'"):
        load_dictnet_config("oscnet-tiny", {"stagse": 3})
    with pytest.raises(ConfigError, match="variant"):
        load_dictnet_config("oscnet-tiny", {"variant": "oscnet++"})
    with pytest.raises(ConfigError, match="no such file"):
        load_dictnet_config("oscnet-huge")
    with pytest.raises(ConfigError, match="is for variant 'oscnet'"):
        train_dicdnet("oscnet-tiny", "nowhere", Path("nowhere"))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("deep-cache"))


@pytest.fixture(scope="module")
def trained(data, cache, tmp_path_factory) -> Path:
    """A few steps of oscnet-tiny on the tiny dataset (32 px) -> RUN/model."""
    out = tmp_path_factory.mktemp("run") / "oscnet"
    with pytest.warns(UserWarning, match="only 1 training patient"):
        return train_oscnet("oscnet-tiny", str(data), out, overrides={"data_cache": cache})


def _batch(data: Path, size: int | None = None) -> MARInput:
    from benchmark.data import open_split

    b = open_split(data, "test").batch([0, 1, 2]).input
    if size is None:
        return b
    o = torch.nn.functional.interpolate(b.ordinary, size=(size, size))
    m = torch.nn.functional.interpolate(b.metal_mask.float(), size=(size, size)) > 0.5
    return MARInput(ordinary=o, metal_mask=m, pixel_spacing_mm=b.pixel_spacing_mm,
                    implant_type=b.implant_type, patient_id=b.patient_id,
                    slice_index=b.slice_index)


@pytest.mark.slow
def test_trained_weights_record_target_data_and_size(trained, data):
    meta = json.loads((trained / "config.json").read_text())
    info = meta["training"]
    assert meta["family"] == "dictnet" and meta["config"]["variant"] == "oscnet"
    assert info["target"] == "gsi" and info["target_column"] == "gsi"
    assert info["image_size"] == meta["model"]["image_size"] == 32
    assert meta["model"]["normalisation"] == {"kind": "hu_window", "hu_min": -1024.0,
                                              "hu_max": 3071.0, "range": [0.0, 255.0]}
    assert info["dataset_manifest_sha256"] and len(info["dataset_manifest_sha256"]) == 64
    assert meta["model"]["parameters"] == load_dictnet(trained).parameter_count()
    assert info["config_name"] == "oscnet-tiny" and meta["format"] == "marbench-weights/1"
    # The card names the weights' sha256 and the training data's manifest sha256.
    card = (trained / "README.md").read_text()
    assert load_dictnet(trained).weights_sha256 in card
    assert info["dataset_manifest_sha256"] in card
    lines = [json.loads(s) for s in (trained.parent / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [2, 4]
    assert all(np.isfinite(e["val_psnr"]) for e in lines)


@pytest.mark.slow
def test_method_keeps_the_contract(trained):
    from benchmark.testing import check_method

    method = check_method(OSCNet, size=32, weights=str(trained), device="cpu")
    assert method.effective_options()["target"] == "gsi"
    assert method.effective_options()["weights"] == str(trained)


@pytest.mark.slow
def test_method_runs_computes_li_and_is_deterministic(trained, data):
    method = OSCNet(weights=str(trained))
    assert method.weights == str(trained) and method.reinsert_metal is True
    method.prepare(PrepareContext())
    assert method.target == "gsi" and len(method.weights_sha256) == 64
    batch = _batch(data)
    before = batch.ordinary.clone()
    out = validate_output("oscnet", batch, method.reduce(batch))
    assert torch.equal(batch.ordinary, before)                     # input not modified
    assert torch.equal(out, method.reduce(batch).image)            # deterministic
    # The LI input is computed from the batch: the same as giving the model the shipped LI.
    li = li_image(batch.ordinary, batch.metal_mask, batch.pixel_spacing_mm)
    ref = method.model.restore(batch.ordinary, batch.metal_mask, li)
    ref = torch.where(batch.metal_mask, batch.ordinary, ref)
    torch.testing.assert_close(out, ref)
    assert torch.equal(out[batch.metal_mask], batch.ordinary[batch.metal_mask])
    assert out.min() >= -1024 and out.max() <= max(3071.0, float(batch.ordinary.max()))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*only 1 training patient")
def test_refusals(trained, data, tmp_path, cache):
    with pytest.raises(WeightsError, match="never runs with random weights"):
        OSCNet().prepare(PrepareContext())
    with pytest.raises(WeightsError, match="no trained weights"):
        OSCNet(weights=str(tmp_path / "none")).prepare(PrepareContext())
    with pytest.raises(IncompatibleWeightsError, match="'oscnet' weights"):
        DICDNet(weights=str(trained)).prepare(PrepareContext())
    with pytest.raises(IncompatibleWeightsError, match="target 'gsi'"):
        OSCNet(weights=str(trained), target="clean").prepare(PrepareContext())
    method = OSCNet(weights=str(trained))
    method.prepare(PrepareContext())
    with pytest.raises(ImageSizeMismatchError, match="trained on 32 px"):
        method.reduce(_batch(data, size=48))
    # Fine-tuning needs the same HU normalisation.
    with pytest.raises(NormalisationMismatchError, match="hu_max=3071.0 .asked 2000"):
        train_oscnet("oscnet-tiny", str(data), tmp_path / "ft",
                     overrides={"data_cache": cache, "init_from": str(trained),
                                "hu_max": 2000.0})
    # Weights whose normalisation this code does not implement are refused on loading.
    odd = edited_weights(trained, tmp_path / "odd",
                         lambda m: m["model"]["normalisation"].update(kind="attenuation"))
    with pytest.raises(NormalisationMismatchError, match="'attenuation'"):
        OSCNet(weights=str(odd)).prepare(PrepareContext())


@pytest.mark.slow
def test_resume_is_exact(data, cache, tmp_path):
    from safetensors.torch import load_file

    over = {"data_cache": cache, "max_steps": 3, "checkpoint_every": 1, "val_every": 3}
    with pytest.warns(UserWarning):
        train_oscnet_plus("oscnet-plus-tiny", str(data), tmp_path / "a", overrides=over)
        train_oscnet_plus("oscnet-plus-tiny", str(data), tmp_path / "b",
                          overrides={**over, "time_limit_s": 0.0})
    state = json.loads((tmp_path / "b/checkpoints/last/state.json").read_text())
    assert state["step"] == 1
    with pytest.warns(UserWarning):
        train_oscnet_plus("oscnet-plus-tiny", str(data), tmp_path / "b", resume=True,
                          overrides=over)
    a = load_file(str(tmp_path / "a/checkpoints/last/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/last/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_clean_target_uses_ideal_and_is_recorded(data, cache, tmp_path):
    with pytest.warns(UserWarning):
        folder = train_dicdnet("dicdnet-tiny", str(data), tmp_path / "d",
                               overrides={"data_cache": cache, "target": "clean",
                                          "max_steps": 2})
    info = json.loads((folder / "config.json").read_text())["training"]
    assert info["target"] == "clean" and info["target_column"] == "ideal"
    method = DICDNet(weights=str(folder), reinsert_metal="false")
    method.prepare(PrepareContext())
    assert method.target == "clean" and method.reinsert_metal is False


def test_methods_are_registered():
    from benchmark.registry import get_method

    assert get_method("dicdnet") is DICDNet
    assert get_method("oscnet") is OSCNet
    assert get_method("oscnet_plus") is OSCNetPlus


def test_weights_of_the_earlier_deep_format_still_load(tmp_path):
    """A ``marbench-deep/1`` folder (parameters and normalisation, with ``scale``, inside
    ``training``; ``data_manifest_sha256``) loads with the same tensors and record."""
    model = tiny("oscnet")
    model.training_info = {"image_size": 24, "target": "gsi"}
    folder = model.save_pretrained(tmp_path / "w")
    meta = json.loads((folder / "config.json").read_text())
    old = {"format": "marbench-deep/1", "family": "dictnet", "config": meta["config"],
           "training": {"image_size": 24, "target": "gsi", "data_manifest_sha256": "ab" * 32,
                        "parameters": model.parameter_count(),
                        "normalisation": {"kind": "hu_window", "hu_min": -1024.0,
                                          "hu_max": 3071.0, "scale": 255.0}}}
    (folder / "config.json").write_text(json.dumps(old))
    loaded = load_dictnet(folder)
    assert loaded.format == "marbench-deep/1" and loaded.image_size == 24
    assert loaded.training_info["dataset_manifest_sha256"] == "ab" * 32
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    old["training"]["normalisation"]["scale"] = 100.0
    (folder / "config.json").write_text(json.dumps(old))
    with pytest.raises(NormalisationMismatchError, match="was edited"):
        load_dictnet(folder)


def test_shipped_oscnet_weights_are_oscnet_cpu_and_named_in_their_card():
    """`make standard` scores weights/oscnet-cpu-demo when no OSCNet was trained: an OSCNet
    with the oscnet-cpu config as it stands and GSI as its target, accepted by the method,
    and the card names the file's sha256."""
    from artifactgsi.fileio import sha256_file

    root = Path(__file__).resolve().parents[2] / "weights" / "oscnet-cpu-demo"
    model = DictNet.from_pretrained(root)
    assert model.config == load_dictnet_config("oscnet-cpu") and model.target == "gsi"
    method = OSCNet(weights=str(root))
    method.prepare(PrepareContext())
    assert method.target == "gsi"
    assert sha256_file(root / "model.safetensors") in (root / "README.md").read_text()
