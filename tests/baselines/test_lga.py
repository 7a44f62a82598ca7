"""LGA reference method: block shapes, centre-slice augmentation, distinct decoders, weights
round trip, resume, refusal without weights, end-to-end tiny training + benchmark run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from baselines.lga import LGA  # noqa: E402
from baselines.lga.config import (  # noqa: E402
    CONFIG_DIR,
    HU_MAX,
    HU_MIN,
    ConfigError,
    LGAConfig,
    hu_to_pm1,
    load_config,
    pm1_to_hu,
)
from benchmark.method import MARInput, PrepareContext, validate_output  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

#: A model small enough that every test runs in about a second on one core.
TINY = dict(image_size=32, vae_channels=[8, 16], vae_layers_per_block=1, vae_norm_groups=4,
            vae_mid_attention=False, inv_channels=[8, 16], inv_embed_dim=8,
            align_channels=[8, 16], align_layers_per_block=1, align_norm_groups=4,
            align_heads=2, align_attention_levels=[1], implant_tokens=2, batch_size=2,
            vae_epochs=1, invariance_epochs=1, align_epochs=2, max_steps=3, num_workers=0,
            lr=1e-3, checkpoint_every=1, val_max_slices=4)


pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A few steps of every stage on the tiny dataset -> RUN/model."""
    from baselines.lga.train import train_lga

    out = tmp_path_factory.mktemp("run") / "lga"
    with pytest.warns(UserWarning, match="only 1 training patient"):
        model_dir = train_lga(TINY, data, out)
    return model_dir


def _tiny(**kw) -> LGAConfig:
    return load_config(TINY, **kw)


# ----------------------------------------------------------------------------- config


def test_hu_normalisation_matches_the_benchmark_window():
    hu = torch.tensor([-3000.0, HU_MIN, 1023.5, HU_MAX, 9000.0])
    unit = hu_to_pm1(hu)
    # [-1024, 3071] -> [-1, 1] linearly; outside is clipped (hand-computed).
    assert torch.allclose(unit, torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(pm1_to_hu(unit)[1:4], hu[1:4])


def test_shipped_configs_load_and_differ_as_table1():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"lga-paper", "lga-cpu", "lga-tiny", "table1-baseline", "table1-arvae",
            "table1-arvae-loss", "table1-arvae-an", "table1-full"} <= set(names)
    assert load_config("lga-tiny") == load_config(TINY)  # the tests' model, shipped
    paper = load_config("lga-paper")
    assert paper == LGAConfig()  # the dataclass defaults are the paper's model
    assert (paper.image_size, paper.downsample_factor_latent, paper.lr) == (512, 8, 1e-5)
    assert (paper.alpha, paper.beta, paper.gsi_fraction, paper.clean_fraction) == \
        (1.0, 0.001, 0.25, 0.75)
    rows = [load_config(n) for n in ("table1-baseline", "table1-arvae", "table1-arvae-loss",
                                     "table1-arvae-an", "table1-full")]
    assert [(c.neighbour_slices, c.dual_decoder, c.align_mask, c.align_transformer,
             c.beta > 0) for c in rows] == [
        (0, False, False, False, False), (2, True, False, False, False),
        (2, True, False, False, True), (2, True, True, True, False),
        (2, True, True, True, True)]
    cpu = load_config("lga-cpu")
    # The toy keeps the paper's 64 x 64 latent: 128 px at f = 2 (512 px at f = 8).
    assert cpu.image_size // cpu.downsample_factor_latent == 64 == paper.image_size // 8


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: lga-cpu\nkl_wieght: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'kl_wieght'.*did you mean 'kl_weight'"):
        load_config(bad)
    bad.write_text("batch_size: two\n")
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        load_config(bad)
    with pytest.raises(ConfigError, match="augment"):
        load_config(None, neighbour_slices=0)  # augmentation without neighbours
    with pytest.raises(ConfigError, match="no such file"):
        load_config("no-such-config")
    # Crops must tile the latent grid: f = 2 for the VAE; f * 2 (one U-Net down) for F.
    with pytest.raises(ConfigError, match="vae_crop: 15 px"):
        _tiny(vae_crop=15)
    with pytest.raises(ConfigError, match="align_crop: 6 px .* multiple of 4"):
        _tiny(align_crop=6)
    with pytest.raises(ConfigError, match="align_crop: 64 px"):
        _tiny(align_crop=64)  # larger than the 32 px slices
    with pytest.raises(ConfigError, match="val_every"):
        _tiny(val_every=0)
    with pytest.raises(ConfigError, match="dihedral: stages must be 'vae' and/or 'align'"):
        _tiny(dihedral=["invariance"])


# ----------------------------------------------------------------------------- blocks


def test_shapes_and_dtypes_through_every_block():
    from baselines.lga.model import LGAModel

    torch.manual_seed(0)
    cfg = _tiny(neighbour_slices=1)
    model = LGAModel(cfg).eval()
    vol = torch.rand(3, 3, 32, 32) * 2 - 1
    post = model.vae.encode(vol)
    z = post.sample()
    assert z.shape == (3, cfg.latent_channels, 16, 16) and z.dtype == torch.float32
    assert post.kl().shape == (3,) and bool((post.kl() >= 0).all())
    for dec in (model.vae.decode_n, model.vae.decode_g):
        y = dec(z)
        assert y.shape == (3, 1, 32, 32) and y.dtype == torch.float32
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 4:8, 4:8] = 1
    aligned = model.align(z, mask, torch.tensor([0, 1, 3]))
    assert aligned.shape == z.shape and aligned.dtype == torch.float32
    # conv_out is zero-initialised: an untrained F is the identity.
    assert torch.equal(aligned, z)
    e = model.ec_n(z)
    assert e.shape == (3, cfg.inv_embed_dim)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    hu = model.restore(torch.randn(3, 3, 40, 40) * 500, mask=torch.zeros(3, 1, 40, 40,
                                                                         dtype=torch.bool))
    assert hu.shape == (3, 1, 40, 40) and hu.dtype == torch.float32
    assert float(hu.min()) >= HU_MIN and float(hu.max()) <= HU_MAX
    # By default the output is D_g's image as is (the paper); reinsert_metal copies the centre
    # slice's metal pixels back from the input and changes nothing else.
    vol_hu = torch.randn(3, 3, 40, 40) * 500
    vol_hu[:, 1, 10:14, 10:14] = 3000.0
    metal = vol_hu[:, 1:2] > 2500
    kept = model.restore(vol_hu, mask=metal, reinsert_metal=True)
    plain = model.restore(vol_hu, mask=metal)
    assert torch.equal(kept[metal], vol_hu[:, 1:2][metal])
    assert torch.equal(kept[~metal], plain[~metal])
    assert torch.equal(plain, model.restore(vol_hu, mask=metal, reinsert_metal=False))
    assert not torch.equal(kept, plain)


def test_mask_and_implant_change_the_alignment():
    from baselines.lga.align import AlignmentNet

    torch.manual_seed(0)
    net = AlignmentNet(_tiny()).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # leave the identity start
    z = torch.randn(2, 4, 16, 16)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 10:20, 10:20] = 1
    base = net(z, mask, torch.tensor([1, 1]))
    assert not torch.allclose(base, net(z, torch.zeros_like(mask), torch.tensor([1, 1])))
    assert not torch.allclose(base, net(z, mask, torch.tensor([2, 2])))
    # "none" is what an unknown type maps to.
    assert torch.equal(net(z, mask, None), net(z, mask, torch.tensor([0, 0])))


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_augmentation_touches_only_the_centre_slice(kind, monkeypatch):
    from baselines.lga.vae import augment_centre_slice

    cfg = _tiny(neighbour_slices=2, augment_prob=1.0)
    vol = torch.rand(4, 5, 32, 32) * 2 - 1
    # Force one corruption kind: the first randint call picks it.
    real = torch.randint

    def pick(low, high=None, size=None, generator=None, **kw):
        if size == (4,):
            return torch.full((4,), kind)
        return real(low, high, size, generator=generator, **kw)

    monkeypatch.setattr(torch, "randint", pick)
    out = augment_centre_slice(vol, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, [0, 1, 3, 4]], vol[:, [0, 1, 3, 4]])
    assert not torch.allclose(out[:, 2], vol[:, 2])
    assert out.shape == vol.shape
    # Disabled: an unaltered copy.
    assert torch.equal(augment_centre_slice(vol, _tiny(augment=False), None), vol)


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    from baselines.lga.vae import _gaussian_blur

    rng = np.random.default_rng(0)
    img = rng.random((2, 1, 24, 24))
    sig = torch.tensor([1.0, 2.0])
    got = _gaussian_blur(torch.from_numpy(img).float(), sig).numpy()
    # torch "reflect" padding is scipy "mirror"; radius ceil(3 sigma) = scipy's truncate=3.
    ref = np.stack([gaussian_filter(img[i, 0], float(s), mode="mirror", truncate=3.0)
                    for i, s in enumerate(sig)])
    # Our kernel is the same sampled Gaussian but radius is set by the largest sigma.
    np.testing.assert_allclose(got[1, 0], ref[1], atol=1e-5)
    np.testing.assert_allclose(got[0, 0], ref[0], atol=1e-3)


def test_decoders_are_distinct_parameters_and_shared_in_the_2d_baseline():
    from baselines.lga.vae import ARVAE

    vae = ARVAE(_tiny())
    n = {p.data_ptr() for p in vae.decoder_n.parameters()}
    g = {p.data_ptr() for p in vae.decoder_g.parameters()}
    assert n and g and not n & g
    z = torch.randn(1, 4, 16, 16)
    assert not torch.allclose(vae.decode_n(z), vae.decode_g(z))
    base = ARVAE(load_config("table1-baseline", **{k: v for k, v in TINY.items()}))
    assert base.decoder_g is None and base.encoder.conv_in.in_channels == 1
    assert torch.equal(base.decode_n(z), base.decode_g(z))


def test_stage_lr_schedules_by_hand():
    const = _tiny(lr=1e-3)
    assert [const.stage_lr(s, 5) for s in range(5)] == [1e-3] * 5
    cos = _tiny(lr=1e-3, lr_schedule="cosine", lr_final_ratio=0.1)
    got = [cos.stage_lr(s, 5) for s in range(5)]
    # lo + (hi - lo) (1 + cos(pi t)) / 2 at t = 0, 1/4, 1/2, 3/4, 1; hi = 1e-3, lo = 1e-4.
    want = [1e-3, 1e-4 + 9e-4 * (1 + math.sqrt(0.5)) / 2, 5.5e-4,
            1e-4 + 9e-4 * (1 - math.sqrt(0.5)) / 2, 1e-4]
    assert got == pytest.approx(want, rel=1e-12)
    assert cos.stage_lr(0, 1) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        _tiny(lr_schedule="linear")


def test_validation_cadence_by_hand():
    from benchmark.learn.loop import epoch_validated as _validates

    # 3 steps per epoch, 10 steps in the stage, every 2nd epoch: epochs 2 and 4 end at steps
    # 6 and 12; the stage stops at step 10, which is always validated.
    got = [s for s in range(1, 11) if _validates(s, 3, 10, 2)]
    assert got == [6, 10]
    assert [s for s in range(1, 7) if _validates(s, 3, 6, 1)] == [3, 6]


def test_crops_cut_the_same_window_from_latents_and_images(monkeypatch):
    """align_crop: F and D_g see latent window (y, x, side c/f); the loss compares with image
    window (f y, f x, side c). Checked against slices written out by hand."""
    from baselines.lga import train as T
    from baselines.lga.model import LGAModel

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    got = T.take_crops(x, [0, 4], [2, 1], 4)
    assert torch.equal(got[0], x[0, :, 0:4, 2:6]) and torch.equal(got[1], x[1, :, 4:8, 1:5])
    torch.manual_seed(0)
    ys, xs = T.random_corners(500, 32, 16, 2)
    assert set(ys) == set(xs) == set(range(0, 17, 2))  # every corner of the 2-px grid

    cfg = _tiny(align_crop=16)       # f = 2: latent window 8 x 8 of the 16 x 16 latent
    torch.manual_seed(1)
    model = LGAModel(cfg).eval()
    g = torch.Generator().manual_seed(2)
    batch = {"ordinary": torch.rand(2, 5, 32, 32, generator=g) * 2 - 1,
             "gsi": torch.rand(2, 5, 32, 32, generator=g) * 2 - 1,
             "mask": (torch.rand(2, 1, 32, 32, generator=g) > 0.9).float(),
             "implant": torch.tensor([1, 2])}
    monkeypatch.setattr(T, "random_corners", lambda *a: ([4, 0], [2, 8]))
    losses = T.AlignStage(model)(batch)
    with torch.no_grad():
        z_n = model.vae.encode(batch["ordinary"]).mode()
        z_g = model.vae.encode(batch["gsi"]).mode()
        win = [(slice(4, 12), slice(2, 10)), (slice(0, 8), slice(8, 16))]
        big = [(slice(8, 24), slice(4, 20)), (slice(0, 16), slice(16, 32))]
        zc = torch.stack([z_n[i, :, a, b] for i, (a, b) in enumerate(win)])
        zg = torch.stack([z_g[i, :, a, b] for i, (a, b) in enumerate(win)])
        mc = torch.stack([batch["mask"][i, :, a, b] for i, (a, b) in enumerate(big)])
        tc = torch.stack([batch["gsi"][i, 2:3, a, b] for i, (a, b) in enumerate(big)])
        pred = model.align(zc, mc, batch["implant"])
        l_i = torch.mean((model.vae.decode_g(pred) - tc) ** 2)
        l_l = torch.mean((pred - zg) ** 2)
    assert float(losses["l_i"]) == pytest.approx(float(l_i), rel=1e-5)
    assert float(losses["l_l"]) == pytest.approx(float(l_l), rel=1e-5)


def test_info_nce_hand_computed():
    from baselines.lga.invariance import info_nce

    e_n = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e_g = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = 0.5
    # Row 0: logits (2, 1.2), row 1: (0, 1.6); columns: col 0 (2, 0), col 1 (1.2, 1.6).
    def ce(logits, i):
        return -logits[i] + math.log(sum(math.exp(v) for v in logits))
    want = 0.5 * ((ce([2, 1.2], 0) + ce([0, 1.6], 1)) / 2 + (ce([2, 0], 0) + ce([1.2, 1.6], 1))
                  / 2)
    assert float(info_nce(e_n, e_g, t)) == pytest.approx(want, rel=1e-6)
    # Same patient, adjacent positions: not negatives -> only positives remain -> loss 0.
    same = info_nce(e_n, e_g, t, torch.tensor([0, 0]), torch.tensor([3, 4]), min_gap=1)
    assert float(same) == pytest.approx(0.0, abs=1e-7)


def test_clean_mix_ratio_and_determinism():
    from baselines.lga.data import VAEVolumes

    class Pairs:
        def __len__(self):
            return 2000

        def __getitem__(self, i):
            return {"gsi": torch.zeros(1)}

    clean = [torch.ones(1)] * 7
    ds = VAEVolumes(Pairs(), clean, _tiny())
    frac = np.mean([bool(ds[i]["g_is_clean"]) for i in range(len(ds))])
    assert abs(frac - 0.75) < 0.03  # 25 % GSI / 75 % clean
    again = VAEVolumes(Pairs(), clean, _tiny())
    assert all(bool(ds[i]["g_is_clean"]) == bool(again[i]["g_is_clean"]) for i in range(50))
    only_gsi = VAEVolumes(Pairs(), None, _tiny())
    assert not any(bool(only_gsi[i]["g_is_clean"]) for i in range(50))


def _add_clean_config(folder: Path, n_slices: int = 3) -> np.ndarray:
    """Add a ``clean`` config (one no-implant patient, slices stored out of order) to a tiny
    built dataset: Parquet file, card entry and manifest entry. Returns the (S, H, W) HU."""
    import pyarrow.parquet as pq
    from datasets import Array2D, Dataset, Features, Value

    from artifactgsi.hub import sha256_file

    size = 32
    hu = np.stack([np.full((size, size), 100 * s - 500, np.int16) for s in range(n_slices)])
    order = [2, 0, 1][:n_slices]
    feats = Features({"patient_id": Value("string"), "slice_index": Value("int32"),
                      "ordinary": Array2D((size, size), "int16")})
    (folder / "clean").mkdir(exist_ok=True)
    rel = "clean/train-00000-of-00001.parquet"
    Dataset.from_dict({"patient_id": ["C000"] * n_slices, "slice_index": order,
                       "ordinary": [hu[i] for i in order]}, features=feats).to_parquet(
        folder / rel)
    card = (folder / "README.md").read_text()
    card = card.replace("configs:\n", "configs:\n- config_name: clean\n  data_files:\n"
                        "  - split: train\n    path: clean/train-*.parquet\n", 1)
    (folder / "README.md").write_text(card)
    manifest = json.loads((folder / "manifest.json").read_text())
    for e in manifest["files"]:
        if e["path"] == "README.md":
            e.update(sha256=sha256_file(folder / "README.md"),
                     bytes=(folder / "README.md").stat().st_size)
    manifest["files"].append({"path": rel, "sha256": sha256_file(folder / rel),
                              "bytes": (folder / rel).stat().st_size,
                              "rows": pq.read_metadata(folder / rel).num_rows})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return hu


def test_clean_config_is_read_as_volumes_in_slice_order(tmp_path, write_tiny_pairs):
    from baselines.lga.data import open_clean

    folder = write_tiny_pairs(tmp_path / "d", size=32, slices=2)
    cfg = _tiny(neighbour_slices=1)
    assert open_clean(folder, cfg) is None  # no clean config: D_g trains on GSI only
    hu = _add_clean_config(folder)
    clean = open_clean(folder, cfg)
    assert len(clean) == 3
    # Item i is the volume around slice i (edges repeated), HU -> [-1, 1].
    for i, want in enumerate(([0, 0, 1], [0, 1, 2], [1, 2, 2])):
        np.testing.assert_allclose(clean[i].numpy(), hu_to_pm1(
            torch.from_numpy(hu[want].astype(np.float32))).numpy(), atol=1e-6)


# ----------------------------------------------------------------------------- weights


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    from baselines.lga.model import LGAModel

    torch.manual_seed(0)
    model = LGAModel(_tiny()).eval()
    torch.nn.init.normal_(model.align.conv_out.weight, std=0.05)
    model.trained = {"vae": 5, "align": 7}
    model.save_pretrained(tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    loaded = LGAModel.from_pretrained(tmp_path / "w")
    assert loaded.config == model.config and loaded.trained == {"vae": 5, "align": 7}
    vol = torch.randn(2, 5, 32, 32) * 400
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[:, :, 3:6, 3:6] = True
    implant = torch.tensor([1, 2])
    assert torch.equal(model.restore(vol, mask, implant), loaded.restore(vol, mask, implant))


def test_lga_refuses_to_run_without_weights(tmp_path, monkeypatch):
    from baselines.lga.model import LGAModel
    from benchmark.learn.errors import WeightsError

    monkeypatch.delenv("MARBENCH_LGA_WEIGHTS", raising=False)
    method = LGA()
    with pytest.raises(WeightsError, match="no trained weights.*marbench train lga"):
        method.prepare(PrepareContext(cache_dir=tmp_path / "cache"))
    with pytest.raises(WeightsError, match="nowhere"):
        LGA(weights=str(tmp_path / "nowhere")).prepare(PrepareContext())
    x = torch.zeros(1, 1, 32, 32)
    batch = MARInput(ordinary=x, metal_mask=x > 0, pixel_spacing_mm=torch.ones(1),
                     implant_type=["none"], patient_id=["p"], slice_index=[0])
    with pytest.raises(WeightsError, match="prepare"):
        method.reduce(batch)
    # Weights of a run whose alignment stage never finished are refused too.
    half = LGAModel(_tiny())
    half.trained = {"vae": 3}
    half.save_pretrained(tmp_path / "half")
    with pytest.raises(WeightsError, match="align not trained"):
        LGA(weights=str(tmp_path / "half")).prepare(PrepareContext())


# ----------------------------------------------------------------------------- training


def test_tiny_training_gives_a_model_the_benchmark_runs(trained, data, tmp_path):
    from baselines.lga.model import LGAModel
    from benchmark.run import run_benchmark

    out = trained.parent
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in log] == ["vae", "invariance", "align", "align"]
    assert all(math.isfinite(e["val_metric"]) for e in log)
    model = LGAModel.from_pretrained(trained)
    assert set(model.trained) == {"vae", "invariance", "align"}
    # Each stage kept its last checkpoint with the step and best metric.
    state = json.loads((out / "checkpoints" / "align" / "last" / "state.json").read_text())
    assert state["step"] == 3 and state["best_metric"] is not None

    results = run_benchmark("baselines.lga:LGA", str(data), "test", tmp_path / "res", lpips=None,
                            clinical=False, figure=False, verbose=False,
                            options={"weights": str(trained)})
    from benchmark.registry import create_method

    assert results.method.options == {"weights": str(trained), "revision": None,
                                      "reinsert_metal": False}
    method = create_method("baselines.lga:LGA", weights=str(trained))
    method.prepare(PrepareContext())
    assert method.neighbour_slices == 2
    from benchmark.data import open_split

    split = open_split(data, "test")
    batch = next(split.iter_batches(3, neighbour_slices=2))
    img = validate_output("lga", batch.input, method.reduce(batch.input))
    assert img.shape == (3, 1, 32, 32)
    metal = batch.input.metal_mask
    # Default: the paper's D_g(F(E(V_n))) as is; -O reinsert_metal=true puts the metal back.
    assert bool(metal.any()) and not torch.equal(img[metal], batch.input.ordinary[metal])
    method = create_method("lga", weights=str(trained), reinsert_metal="true")
    method.prepare(PrepareContext())
    assert method.effective_options()["reinsert_metal"] is True
    kept = validate_output("lga", batch.input, method.reduce(batch.input))
    assert torch.equal(kept[metal], batch.input.ordinary[metal])
    assert torch.equal(kept[~metal], img[~metal])
    with pytest.raises(ValueError, match="reinsert_metal"):
        create_method("lga", weights=str(trained), reinsert_metal="x")
    # The contract test a plug-in author runs passes on the trained LGA.
    from benchmark.testing import check_method

    check_method(LGA, size=32, weights=str(trained))
    # The quality benchmark's own path through the model scores what the runner scored.
    from benchmark.results import METHOD_VS_GSI
    from tests.helpers.files import load_script

    mod = load_script("bench_lga_quality")
    lat = mod.latent_psnr(model, data, "test", batch_size=2)
    assert lat["lga_v1"] == pytest.approx(
        results.comparisons[METHOD_VS_GSI].summary["psnr"].mean, abs=0.01)


@pytest.mark.filterwarnings("ignore:.*only 1 training patient")
def test_table1_baseline_trains_without_the_invariance_stage(data, tmp_path):
    """2D VAE, one decoder, plain U-Net, beta = 0: two stages, and the method uses k = 0."""
    from baselines.lga.model import LGAModel
    from baselines.lga.train import train_lga

    cfg = dict(TINY, neighbour_slices=0, augment=False, dual_decoder=False, align_mask=False,
               align_transformer=False, beta=0.0, max_steps=1)
    model_dir = train_lga(cfg, data, tmp_path / "run")
    model = LGAModel.from_pretrained(model_dir)
    assert set(model.trained) == {"vae", "align"}
    assert not hasattr(model.align, "implant_embed") and model.vae.decoder_g is None
    method = LGA(weights=str(model_dir))
    method.prepare(PrepareContext())
    assert method.neighbour_slices == 0
    x = torch.full((2, 1, 32, 32), 40.0)
    batch = MARInput(ordinary=x, metal_mask=x > 1000, pixel_spacing_mm=torch.ones(2),
                     implant_type=["none", "spinal_fixation"], patient_id=["p", "p"],
                     slice_index=[0, 1], neighbours=x.repeat(1, 5, 1, 1))
    assert validate_output("lga", batch, method.reduce(batch)).shape == (2, 1, 32, 32)
    # An implant type the model does not know is an error, never silently "none".
    batch.implant_type[1] = "unknown_type"
    with pytest.raises(ValueError, match="unknown implant type 'unknown_type'"):
        method.reduce(batch)


def test_dihedral_gives_each_sample_one_symmetry_for_all_its_images():
    """random_dihedral: every sample's images get the same one of the 8 symmetries of the
    square (checked against numpy's rot90 / fliplr); other keys and the input are untouched;
    all 8 symmetries occur."""
    from baselines.lga.train import random_dihedral, step_generator

    b = 64
    x = torch.rand(b, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    batch = {"ordinary": x, "gsi": x * 3 + 1, "mask": (x[:, :1] > 0.5).float(),
             "implant": torch.arange(b)}
    before = {k: v.clone() for k, v in batch.items()}
    out = random_dihedral(batch, ("ordinary", "gsi", "mask"), step_generator(0, "align", 7, 0))
    syms = [(t, f) for t in range(4) for f in (False, True)]

    def apply(a: np.ndarray, t: int, f: bool) -> np.ndarray:
        r = np.rot90(a, t, axes=(-2, -1))
        return np.flip(r, -1) if f else r

    seen = set()
    for i in range(b):
        hits = [s for s in syms if np.array_equal(apply(x[i].numpy(), *s), out["ordinary"][i])]
        assert len(hits) == 1  # random x: the 8 symmetries give 8 different images
        seen.add(hits[0])
        for key in ("gsi", "mask"):
            assert np.array_equal(apply(batch[key][i].numpy(), *hits[0]), out[key][i])
    assert seen == set(syms)
    assert out["implant"] is batch["implant"]
    for k, v in before.items():
        assert torch.equal(batch[k], v)
    # The same step's generator draws the same symmetries (resume-exact).
    again = random_dihedral(batch, ("ordinary",), step_generator(0, "align", 7, 0))
    assert torch.equal(again["ordinary"], out["ordinary"])


@pytest.mark.filterwarnings("ignore:.*only 1 training patient")
def test_resume_continues_from_the_saved_step(data, tmp_path, monkeypatch):
    from baselines.lga import train as T
    from baselines.lga.model import LGAModel
    from baselines.lga.train import TrainError, train_lga

    # align: 2 steps per epoch -> 2 steps; cosine: the lr differs per step, so a resumed run
    # matches only if it continues the same curve.
    # Random crops and symmetries in the VAE and alignment stages: a resumed run must draw
    # the same ones.
    cfg = dict(TINY, align_epochs=1, max_steps=None, lr_schedule="cosine", vae_crop=16,
               align_crop=16, dihedral=["vae", "align"])
    full = train_lga(cfg, data, tmp_path / "full")

    class Stop(Exception):
        pass

    calls = {"n": 0}
    real = T.AlignStage.forward

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:  # dies in the 2nd align step, after the step-1 checkpoint
            raise Stop
        return real(self, batch)

    monkeypatch.setattr(T.AlignStage, "forward", interrupted)
    with pytest.raises(Stop):
        train_lga(cfg, data, tmp_path / "cut")
    last = tmp_path / "cut" / "checkpoints" / "align" / "last" / "state.json"
    assert json.loads(last.read_text())["step"] == 1
    with pytest.raises(TrainError, match="resume"):
        train_lga(cfg, data, tmp_path / "cut")           # refuses to overwrite
    with pytest.raises(TrainError, match="different config"):
        train_lga(dict(cfg, lr=0.5), data, tmp_path / "cut", resume=True)
    monkeypatch.setattr(T.AlignStage, "forward", real)
    resumed = train_lga(cfg, data, tmp_path / "cut", resume=True)
    log = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in log] == ["vae", "invariance", "align"]  # no stage re-run
    assert log[-1]["step"] == 2
    a, b = LGAModel.from_pretrained(full), LGAModel.from_pretrained(resumed)
    assert a.trained == b.trained == {"vae": 2, "invariance": 2, "align": 2}
    # The resumed run ends where the uninterrupted one does (same data order, same state).
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.slow
def test_two_process_cpu_run_with_accelerate_launch(data, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(dict(TINY, batch_size=1)))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               HF_DATASETS_CACHE=str(tmp_path / "hf"), PYTHONPATH=str(REPO))
    launcher = Path(sys.executable).parent / "accelerate"
    # accelerate 1.x: "--cpu" selects its single-process launcher; "--multi_gpu" starts the
    # processes with torchrun, and train_lga's Accelerator(cpu=True) (no CUDA) joins them
    # over gloo: 2 CPU processes.
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "benchmark.learn", "lga",
           "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    # On failure show every process's own traceback, not only the launcher's tail.
    ranks = "\n".join(x for x in proc.stderr.splitlines() if x.startswith("[rank"))
    assert proc.returncode == 0, proc.stdout[-2000:] + ranks[-6000:] + proc.stderr[-1500:]
    assert "2 process(es)" in proc.stdout
    from baselines.lga.model import LGAModel

    model = LGAModel.from_pretrained(tmp_path / "run" / "model")
    assert set(model.trained) == {"vae", "invariance", "align"}


def test_cached_items_equal_items_read_each_time(data, monkeypatch):
    """The in-memory item cache changes nothing: same tensors as reading from Arrow every
    time, and a fresh dict per call (VAEVolumes adds keys to it)."""
    import baselines.lga.data as lga_data
    from benchmark.data import open_split

    cfg = _tiny()
    split = open_split(data, "train")
    rows = list(range(len(split)))
    cached = lga_data.PairVolumes(split, rows, cfg)
    monkeypatch.setattr(lga_data, "CACHE_BYTES", 0)
    fresh = lga_data.PairVolumes(split, rows, cfg)
    assert cached._cache is not None and fresh._cache is None
    for i in range(len(rows)):
        a, b, again = cached[i], fresh[i], cached[i]
        assert a is not again and a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(again[key], b[key]), key
    a["extra"] = torch.zeros(1)
    assert "extra" not in cached[len(rows) - 1]


def test_shipped_demo_weights_are_complete_lga_cpu_and_named_in_their_card():
    """`make demo` scores weights/lga-cpu-demo: every stage trained, with the shipped lga-cpu
    config as it stands, accepted by the method, and the card names the file's sha256."""
    from artifactgsi.fileio import sha256_file
    from baselines.lga.model import LGAModel

    root = Path(__file__).resolve().parents[2] / "weights" / "lga-cpu-demo"
    model = LGAModel.from_pretrained(root)
    assert set(model.trained) == {"vae", "invariance", "align"}
    assert model.config == load_config("lga-cpu")
    LGA(weights=str(root)).prepare(PrepareContext())
    assert sha256_file(root / "model.safetensors") in (root / "README.md").read_text()
