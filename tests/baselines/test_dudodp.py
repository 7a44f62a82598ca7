"""DuDoDp: config checks, the scheduler as published, the sampler's data consistency, an
oracle prior recovering the ground truth, seeded determinism and batch independence, the
steps bounds, and a tiny prior trained, round-tripped and run through ``check_method``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from artifactgsi.physics.sinogram_inpainting import (
    hu_to_mu,
    mu_to_hu,
    projector_for,
    quantise_spacing,
    water_mu,
)
from baselines.dudodp import DuDoDp
from baselines.dudodp.config import load_dudodp_config
from baselines.dudodp.prior import DiffusionPrior, load_prior, make_scheduler
from baselines.dudodp.sampler import Fusion, check_steps, dudodp
from benchmark.learn.errors import ConfigError, ImageSizeMismatchError, WeightsError
from benchmark.method import MARInput, PrepareContext

torch.set_num_threads(1)
CFG = load_dudodp_config("dudodp-tiny")
N, PX = 48, 0.8


def phantom(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """(ground truth (1, 1, n, n) HU without metal, metal mask (1, 1, n, n))."""
    c = torch.arange(n) - n / 2 + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    r = torch.hypot(xx, yy)
    gt = torch.full((n, n), -1000.0)
    gt[r < 0.42 * n] = 40.0
    gt[(r > 0.28 * n) & (r < 0.34 * n)] = 1200.0
    mask = torch.hypot(xx - 0.12 * n, yy - 0.05 * n) < 0.05 * n
    return gt[None, None], mask[None, None]


def corrupted(gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """gt with 8000 HU metal and streaks that live on the metal trace only (as metal's)."""
    from baselines.li import SinogramSetup, reproject

    proj = projector_for(gt.shape[-1], PX)
    ordinary = torch.where(mask, torch.tensor(8000.0), gt)
    rp = reproject(proj, ordinary, mask, PX, SinogramSetup())
    g = torch.Generator().manual_seed(3)
    bad = torch.where(rp.trace, 0.3 * torch.randn(rp.sino.shape, generator=g), 0.0)
    streaks = proj.fbp(bad, filter="hann") * (1000.0 / rp.mu_water)
    return ordinary + torch.where(mask, 0.0, streaks)


def run(ordinary, mask, predict, steps=4, seed=0, keys=None, inspect=None, reinsert=False):
    return dudodp(ordinary, mask, PX, predict, make_scheduler(CFG), steps=steps, seed=seed,
                  slice_keys=keys, hu_to_pm1=CFG.hu_to_pm1, pm1_to_hu=CFG.pm1_to_hu,
                  reinsert=reinsert, inspect=inspect)


# ----------------------------------------------------------------------------- config


def test_configs_and_published_scheduler():
    paper = load_dudodp_config("dudodp-paper")
    assert (paper.image_size, paper.patchify, paper.layers_per_block) == (512, 4, 2)
    assert paper.block_out_channels == (128, 128, 256, 256, 512)
    assert paper.ema_decay == 0.9999 and paper.lr == 1e-4
    with pytest.raises(ConfigError, match="did you mean 'patchify'"):
        load_dudodp_config("dudodp-cpu", {"patchfy": 2})
    with pytest.raises(ConfigError, match="attention"):
        load_dudodp_config("dudodp-cpu", {"attention": [True]})
    with pytest.raises(ConfigError, match="variance_type"):
        load_dudodp_config("dudodp-cpu", {"variance_type": "learned_sometimes"})
    with pytest.raises(ConfigError, match="image_size"):
        load_dudodp_config("dudodp-cpu", {"image_size": 100})
    s = make_scheduler(paper)
    assert s.config.prediction_type == "sample" and s.config.num_train_timesteps == 1000
    # Ho et al.'s linear schedule, computed independently.
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.alphas_cumprod.double().numpy(), np.cumprod(1 - betas),
                               rtol=1e-5)
    # model units: the HU window onto [-1, 1]
    hu = torch.tensor([-2000.0, -1024.0, 1023.5, 3071.0, 9000.0])
    torch.testing.assert_close(paper.hu_to_pm1(hu), torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(paper.pm1_to_hu(paper.hu_to_pm1(hu[1:4])), hu[1:4])


def test_patchified_prior_shapes():
    cfg = load_dudodp_config("dudodp-tiny", {"patchify": 4, "image_size": 32})
    prior = DiffusionPrior(cfg)
    assert prior.unet.config.in_channels == 16 and prior.unet.config.sample_size == 8
    x = torch.randn(2, 1, 32, 32)
    y = prior.predict_x0(x, torch.tensor([0, 999]))
    assert y.shape == x.shape and float(y.detach().abs().max()) <= 1.0


def test_steps_bounds_are_refused_clearly():
    assert check_steps(100, 1000) == 100 and check_steps("7", 1000) == 7
    for bad in (0, -3, 1001):
        with pytest.raises(ValueError, match=r"outside 1\.\.1000"):
            check_steps(bad, 1000)
    with pytest.raises(ValueError, match="integer"):
        check_steps("many", 1000)
    with pytest.raises(ValueError, match=">= 1"):
        DuDoDp(steps=0)
    gt, mask = phantom()
    with pytest.raises(ValueError, match=r"outside 1\.\.1000"):
        run(gt, mask, lambda x, t: x, steps=1001)


def test_published_fusion_schedule():
    f = Fusion()
    # delta(k) = 1 - (1 - a) exp(-n (k + 1) / S), a = 0.4, n = 4 (hand computed)
    assert math.isclose(f.delta(99, 100), 1 - 0.6 * math.exp(-4.0), rel_tol=1e-12)
    assert math.isclose(f.delta(0, 100), 1 - 0.6 * math.exp(-0.04), rel_tol=1e-12)
    assert f.delta_y == 0.8 and 0.25 < f.trace_weight < 0.27


# ----------------------------------------------------------------------------- sampler


def test_data_consistency_outside_the_trace_is_exact():
    gt, mask = phantom()
    ordinary = corrupted(gt, mask)
    g = torch.Generator().manual_seed(0)
    noise_img = torch.rand((1, 1, N, N), generator=g) * 2 - 1

    def prior(x, t):  # an arbitrary (wrong) prior: consistency must not depend on it
        return (0.5 * x + 0.5 * noise_img).clamp(-1, 1)

    recs = []
    run(ordinary, mask, prior, steps=3, inspect=recs.append)
    assert [r.k for r in recs] == [2, 1, 0]
    proj = projector_for(N, quantise_spacing(PX))  # the sampler's projector
    for r in recs:
        out_t = ~r.trace
        assert bool(r.trace.any()) and bool(out_t.any())
        assert torch.equal(r.sinogram[out_t], r.measured[out_t])
        inside = proj.forward(hu_to_mu(r.x0_hu, water_mu(70.0)))
        assert torch.equal(r.sinogram[r.trace], inside[r.trace])


def test_oracle_prior_returns_the_ground_truth_within_fbp_error():
    # The measured sinogram outside the trace is the ground truth's (metal only corrupts
    # the trace), so a prior that knows the truth must give it back, metal pixels included.
    gt, mask = phantom()
    ordinary = torch.where(mask, torch.tensor(8000.0), gt)
    gt_unit = CFG.hu_to_pm1(gt)
    out = run(ordinary, mask, lambda x, t: gt_unit.expand(x.shape[0], -1, -1, -1), steps=5)
    c = torch.arange(N) - N / 2 + 0.5
    body = (torch.hypot(*torch.meshgrid(c, c, indexing="ij")) < 0.45 * N)[None, None]
    proj, mw = projector_for(N, quantise_spacing(PX)), water_mu(70.0)
    fbp_rt = mu_to_hu(proj.fbp(proj.forward(hu_to_mu(gt, mw)), filter="hann"), mw)

    def rmse(a, where=body):
        return float(((a - gt)[where] ** 2).mean().sqrt())

    assert rmse(ordinary) > 500.0                      # the metal is really there
    assert rmse(out) < 0.2 * rmse(fbp_rt)              # within the FBP round trip's error
    assert rmse(out, mask) < rmse(fbp_rt, mask) + 20.0  # and on the metal pixels too


def test_seeded_determinism_and_batch_independence():
    gt, mask = phantom(32)
    ordinary = corrupted(gt, mask)
    torch.manual_seed(0)
    prior = DiffusionPrior(CFG).eval()  # random weights: the output depends on the noise

    def predict(x, t):
        with torch.no_grad():
            return prior.predict_x0(x, t)

    a = run(ordinary, mask, predict, seed=1, keys=["p/1"])
    b = run(ordinary, mask, predict, seed=1, keys=["p/1"])
    c = run(ordinary, mask, predict, seed=2, keys=["p/1"])
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1.0
    other = corrupted(*phantom(32)).flip(-1)
    pair = run(torch.cat([other, ordinary]), torch.cat([mask.flip(-1), mask]), predict,
               seed=1, keys=["q/0", "p/1"])
    torch.testing.assert_close(pair[1:], a, atol=0.05, rtol=0)


def test_slices_without_metal_are_returned_unchanged():
    gt, mask = phantom()
    out = run(gt, torch.zeros_like(mask), lambda x, t: x, steps=2)
    assert torch.equal(out, gt)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_prior(tiny_built, tmp_path_factory, isolated_datasets_cache):
    from baselines.dudodp.train import train

    out = tmp_path_factory.mktemp("dudodp") / "run"
    folder = train("dudodp-tiny", tiny_built.built, out)
    return out, folder, tiny_built.built


@pytest.mark.slow
def test_tiny_prior_trains_round_trips_and_resumes(tiny_prior):
    from safetensors.torch import load_file

    from baselines.dudodp.train import train

    out, folder, built = tiny_prior
    meta = json.loads((folder / "config.json").read_text())
    info = meta["training"]
    manifest = Path(built) / "manifest.json"
    import hashlib

    assert info["dataset_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert info["image_size"] == 32 and info["steps"] == 3 and info["finished"]
    assert info["gsi_slices"] > 0 and info["clean_slices"] > 0
    assert info["split"] == "train"
    prior = load_prior(folder)
    state = load_file(str(folder / "model.safetensors"))
    for k, v in prior.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(prior.eval().predict_x0(x, t),
                                   DiffusionPrior.from_pretrained(folder).eval()
                                   .predict_x0(x, t))
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == [1, 2, 3]
    assert all(math.isfinite(json.loads(s)["train_loss"]) for s in lines)
    with pytest.raises(Exception, match="--resume"):
        train("dudodp-tiny", built, out)
    train("dudodp-tiny", built, out, resume=True, overrides={"max_steps": 4})
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 4


@pytest.mark.slow
def test_method_contract_and_refusals(tiny_prior):
    from benchmark.testing import check_method

    _, folder, _ = tiny_prior
    m = check_method(DuDoDp, size=32, weights=str(folder), steps=2, seed=0, batch_size=2)
    assert m.weights_sha256 and len(m.weights_sha256) == 64
    assert m.effective_options()["steps"] == 2
    with pytest.raises(WeightsError, match="marbench train dudodp"):
        DuDoDp().prepare(PrepareContext())
    with pytest.raises(ValueError, match=r"outside 1\.\.1000"):
        DuDoDp(weights=str(folder), steps=1001).prepare(PrepareContext())
    wrong = DuDoDp(weights=str(folder), steps=2)
    wrong.prepare(PrepareContext())
    gt, mask = phantom(48)
    batch = MARInput(ordinary=gt, metal_mask=mask, pixel_spacing_mm=torch.tensor([PX]),
                     implant_type=["hip"], patient_id=["p"], slice_index=[0])
    with pytest.raises(ImageSizeMismatchError, match="32 px"):
        wrong.reduce(batch)
