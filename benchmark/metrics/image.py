"""Full-image fidelity metrics: PSNR, SSIM, LPIPS (pure, batched functions).

All three take images already on the evaluation grid and scaled to [0, 1] (see
:func:`benchmark.metrics.protocol.hu_to_unit`); :func:`image_metrics` does the whole protocol
from HU. PSNR and SSIM reproduce ``skimage.metrics`` (tested to 1e-4); LPIPS runs the
``lpips`` package's network with the real ImageNet AlexNet backbone (:mod:`.lpips_weights`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MARBenchError
from .lpips_weights import LPIPS_SLICE_OF_CONV, LPIPSWeightsError, load_lpips_backbone
from .protocol import MARBENCH_V1, Protocol, hu_to_unit, resample_hu
from .registry import MetricSpec, metrics_in_group

if TYPE_CHECKING:
    from .compute import ScoreView

IMAGE_METRICS: dict[str, MetricSpec] = metrics_in_group("image")


def _check_pair(pred: torch.Tensor, target: torch.Tensor, fn: str) -> None:
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"{fn}: pred and target must both be (B, 1, H, W); got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """Per-image PSNR in dB, (B,) float64; ``inf`` where the images are identical.

    Args:
        pred, target: (B, 1, H, W), values on a scale where ``data_range`` is the span.
        data_range: the span of possible values (1 for images scaled to [0, 1]).
    """
    _check_pair(pred, target, "psnr")
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)  # mse 0 -> inf (IEEE division)


def gaussian_kernel_1d(window: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length ``window`` (float64), as scipy builds it."""
    if window % 2 != 1:
        raise ValueError(f"SSIM window must be odd, got {window}")
    x = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float, *, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image mean SSIM, (B,) float64 (the mean; the local maps are float32).

    Equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False, data_range=data_range)``: local statistics under a Gaussian
    window, averaged over the pixels whose window lies inside the image (skimage filters with
    reflection and then crops (window - 1) / 2 pixels per side; a 'valid' convolution gives
    the same pixels directly). The moments are filtered in float32 (a grouped float64
    convolution is 8x slower on CPU); on [0, 1] images this differs from skimage's float64 by
    about 1e-7, far below the 1e-4 the tests demand.

    Args:
        pred, target: (B, 1, H, W) with H, W >= window.
        data_range: span of possible values; sets C1 = (k1 * data_range)^2, C2 likewise.
    """
    _check_pair(pred, target, "ssim")
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"ssim: images {tuple(pred.shape[-2:])} are smaller than the "
                         f"{window}x{window} window")
    x = pred.float()
    y = target.float()
    g = gaussian_kernel_1d(window, sigma).to(device=x.device, dtype=torch.float32)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, H, W)
    # Separable filter, one group per moment map.
    stack = F.conv2d(stack, g.view(1, 1, -1, 1).expand(5, 1, -1, 1).contiguous(), groups=5)
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(5, 1, 1, -1).contiguous(), groups=5)
    ux, uy, uxx, uyy, uxy = stack.unbind(1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.double().flatten(1).mean(1)


# ----------------------------------------------------------------------------- LPIPS


class LPIPSUnavailable(MARBenchError, RuntimeError):
    """LPIPS cannot be computed here (the message is the reason results files record)."""


class LPIPSMetric:
    """LPIPS v0.1 (AlexNet) with the real ImageNet backbone, ready to score.

    The network is the ``lpips`` package's own ``LPIPS`` module, built with ``pnet_rand=True``
    (so torchvision never tries to download anything) and then given the real backbone; its
    v0.1 linear heads come from the lpips wheel.

    Raises:
        LPIPSUnavailable: the lpips package or the real backbone is missing.
    """

    def __init__(self, weights: Path | str | None = None, device: torch.device | str = "cpu",
                 *, cache_path: Path | None = None, hub_dir: Path | None = None,
                 net: str = "alex", version: str = "0.1") -> None:
        if net != "alex":
            raise ValueError(f"LPIPS net {net!r}: only 'alex' is supported (marbench-v1)")
        try:
            import lpips
        except ImportError as e:
            raise LPIPSUnavailable("the lpips package is not installed (pip install lpips)") \
                from e
        try:
            backbone = load_lpips_backbone(weights, cache_path=cache_path, hub_dir=hub_dir)
        except LPIPSWeightsError as e:
            raise LPIPSUnavailable(str(e)) from e
        with warnings.catch_warnings():
            # torchvision warns that lpips uses its deprecated `pretrained=` argument.
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(pretrained=True, net=net, version=version, pnet_rand=True,
                                verbose=False)
        slices = {f"slice{LPIPS_SLICE_OF_CONV[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
                  for k, v in backbone.state.items()}
        model.net.load_state_dict(slices, strict=True)  # every backbone tensor, exactly
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.weights_path = backbone.path
        self.weights_fingerprint = backbone.fingerprint
        self.version = version

    def __call__(self, pred_unit: torch.Tensor, target_unit: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS, (B,) float64, for (B, 1, H, W) images in [0, 1]."""
        return lpips_distance(pred_unit, target_unit, self)

    def features(self, unit: torch.Tensor) -> list[torch.Tensor]:
        """The channel-normalised backbone features of (B, 1, H, W) images in [0, 1]: one
        (B, C_l, H_l, W_l) float32 tensor per layer, on the model's device.

        :meth:`distance` of two such lists equals ``self(a, b)`` bit for bit: both run the
        ``lpips`` package's own layers in its order (``LPIPS.forward`` computes each image's
        features separately too), so the features of a reference can be computed once and
        kept (:mod:`benchmark.refcache`).
        """
        import lpips

        x = (2.0 * unit.float().to(self.device) - 1.0).expand(-1, 3, -1, -1)
        m = self.model
        with torch.inference_mode():
            outs = m.net.forward(m.scaling_layer(x))
            return [lpips.normalize_tensor(outs[k]) for k in range(m.L)]

    def distance(self, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]
                 ) -> torch.Tensor:
        """LPIPS, (B,) float64, from two :meth:`features` lists (the linear heads and the
        spatial mean of ``lpips.LPIPS.forward``, in its order)."""
        m = self.model
        with torch.inference_mode():
            val: torch.Tensor | int = 0
            for k in range(m.L):
                d = (feats_a[k].to(self.device) - feats_b[k].to(self.device)) ** 2
                val = val + m.lins[k](d).mean([2, 3], keepdim=True)
        assert isinstance(val, torch.Tensor)
        return val.flatten().double().cpu()


def lpips_distance(pred_unit: torch.Tensor, target_unit: torch.Tensor,
                   metric: LPIPSMetric) -> torch.Tensor:
    """LPIPS of (B, 1, H, W) images in [0, 1]: scaled to [-1, 1], replicated to RGB."""
    _check_pair(pred_unit, target_unit, "lpips")
    dev = metric.device
    a = (2.0 * pred_unit.float().to(dev) - 1.0).expand(-1, 3, -1, -1)
    b = (2.0 * target_unit.float().to(dev) - 1.0).expand(-1, 3, -1, -1)
    with torch.inference_mode():
        d = metric.model(a, b)  # (B, 1, 1, 1)
    return d.flatten().double().cpu()


def image_metrics(pred_hu: torch.Tensor, target_hu: torch.Tensor,
                  protocol: Protocol = MARBENCH_V1,
                  lpips_metric: LPIPSMetric | None = None) -> dict[str, torch.Tensor]:
    """The protocol's full-image metrics from HU: {"psnr", "ssim"[, "lpips"]} -> (B,) float64.

    Both images are resampled to ``protocol.eval_size``, clipped to [hu_min, hu_max] and
    scaled to [0, 1]; LPIPS is included only when ``lpips_metric`` is given.
    """
    _check_pair(pred_hu, target_hu, "image_metrics")
    p = hu_to_unit(resample_hu(pred_hu.float(), protocol.eval_size, protocol.resample_mode),
                   protocol.hu_min, protocol.hu_max)
    t = hu_to_unit(resample_hu(target_hu.float(), protocol.eval_size, protocol.resample_mode),
                   protocol.hu_min, protocol.hu_max)
    out = {
        "psnr": psnr(p, t, protocol.data_range).cpu(),
        "ssim": ssim(p, t, protocol.data_range, window=protocol.ssim_window,
                     sigma=protocol.ssim_sigma, k1=protocol.ssim_k1, k2=protocol.ssim_k2).cpu(),
    }
    if lpips_metric is not None:
        out["lpips"] = lpips_distance(p, t, lpips_metric)
    return out


def score_image(view: ScoreView) -> dict[str, torch.Tensor]:
    """The image metrics' computation (registry ``compute``): PSNR and SSIM, and LPIPS when
    the view's resources hold an :class:`LPIPSMetric`. The LPIPS features of the reference are
    a reference state (cached per dataset revision); the scored image's are computed once per
    batch and shared by its comparisons."""
    p = view.protocol
    pred, ref = view.pred_unit, view.reference_unit
    out = {
        "psnr": psnr(pred, ref, p.data_range).cpu(),
        "ssim": ssim(pred, ref, p.data_range, window=p.ssim_window, sigma=p.ssim_sigma,
                     k1=p.ssim_k1, k2=p.ssim_k2).cpu(),
    }
    metric = view.resources.get("lpips")
    if metric is not None:
        key = f"lpips-features:{metric.weights_fingerprint}:{p.eval_size}"

        def ref_feats(rows: list[int]) -> list[dict]:
            f = metric.features(ref[rows])
            return [{f"f{k}": t[i].cpu().numpy() for k, t in enumerate(f)}
                    for i in range(len(rows))]

        def pred_feats() -> list[list[torch.Tensor]]:
            f = metric.features(pred)
            return [[t[i] for t in f] for i in range(pred.shape[0])]

        refs = view.reference_state(key, ref_feats)
        preds = view.scored_state(key, pred_feats)
        n_layers = len(preds[0]) if preds else 0
        fa = [torch.stack([pf[k] for pf in preds]) for k in range(n_layers)]
        fb = [torch.stack([torch.from_numpy(np.ascontiguousarray(rf[f"f{k}"])) for rf in refs])
              for k in range(n_layers)]
        out["lpips"] = metric.distance(fa, fb)
    return out
