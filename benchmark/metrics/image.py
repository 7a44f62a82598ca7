"""Full-image fidelity metrics: PSNR, SSIM, LPIPS (pure, batched functions).

All three take images already on the evaluation grid and scaled to [0, 1] (see
:func:`benchmark.metrics.protocol.hu_to_unit`); :func:`image_metrics` does the whole protocol
from HU. PSNR and SSIM reproduce ``skimage.metrics`` (tested to 1e-12); LPIPS runs the
``lpips`` package's network with the real ImageNet AlexNet backbone (:mod:`.lpips_weights`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import MARBenchError
from . import ssim as _ssim
from .lpips_weights import LPIPS_SLICE_OF_CONV, LPIPSWeightsError, load_lpips_backbone
from .protocol import MARBENCH_V1, Protocol, hu_to_unit, resample_hu
from .registry import MetricSpec, metrics_in_group
from .slices import map_slices

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


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float, *, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image mean SSIM, (B,) float64.

    Equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False, data_range=data_range)`` to about 1e-15 (:mod:`.ssim`): local
    statistics under a Gaussian window (the border extended by reflection), averaged over the
    pixels whose window lies inside the image, all in float64.

    Args:
        pred, target: (B, 1, H, W) with H, W >= window.
        data_range: span of possible values; sets C1 = (k1 * data_range)^2, C2 likewise.
        window: the window's width; it must be skimage's for ``sigma`` (11 for 1.5).
    """
    _check_pair(pred, target, "ssim")
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"ssim: images {tuple(pred.shape[-2:])} are smaller than the "
                         f"{window}x{window} window")
    radius = _ssim.check_window(window, sigma)
    kernel = _ssim.gaussian_kernel(sigma, radius)
    x = pred.detach().double().cpu().numpy()[:, 0]
    y = target.detach().double().cpu().numpy()[:, 0]

    def one(i: int) -> float:
        return _ssim.ssim_pair(_ssim.moments(x[i], kernel), _ssim.moments(y[i], kernel), kernel,
                               data_range, k1=k1, k2=k2, radius=radius)

    return torch.tensor([one(i) for i in range(x.shape[0])], dtype=torch.float64)


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

        :meth:`distance` of two images' features equals ``self(a, b)`` to float32 rounding
        (the tests hold it to 1e-6): both run the ``lpips`` package's own layers in its
        order (``LPIPS.forward`` computes each image's features separately too), so the
        features of a reference can be computed once and kept (:mod:`benchmark.refcache`).
        """
        import lpips

        x = (2.0 * unit.float().to(self.device) - 1.0).expand(-1, 3, -1, -1)
        m = self.model
        with torch.inference_mode():
            outs = m.net.forward(m.scaling_layer(x))
            return [lpips.normalize_tensor(outs[k]) for k in range(m.L)]

    def _head(self, k: int) -> torch.Tensor:
        """(C_k,) the weights of linear head ``k`` (``lins[k]``: dropout, then a bias-free
        1x1 convolution to one channel)."""
        heads: dict[int, torch.Tensor] = self.__dict__.setdefault("_heads", {})
        if k not in heads:
            conv = self.model.lins[k].model[-1]
            if not isinstance(conv, torch.nn.Conv2d) or conv.bias is not None \
                    or conv.out_channels != 1 or conv.kernel_size != (1, 1):
                raise LPIPSUnavailable(f"lpips head {k} is not a bias-free 1x1 convolution to "
                                       "one channel (an lpips version this code does not know)")
            heads[k] = conv.weight.detach().reshape(-1)
        return heads[k]

    def _scratch(self, k: int, like: torch.Tensor) -> torch.Tensor:
        bufs: dict[int, torch.Tensor] = self.__dict__.setdefault("_bufs", {})
        buf = bufs.get(k)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype \
                or buf.device != like.device:
            buf = bufs[k] = torch.empty_like(like)
        return buf

    def distance(self, feats_a: Sequence[Sequence[torch.Tensor]],
                 feats_b: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """LPIPS, (B,) float64, of B pairs of feature lists (each row: one (C_l, H_l, W_l)
        tensor per layer, as :meth:`features` gives them per image): the squared difference,
        the linear heads' weighted sum over channels and the spatial mean of
        ``lpips.LPIPS.forward``, in its order (each head as a matrix-vector product).

        Row by row, so the references' features are used where they lie (views of the
        reference cache's mapped files) and never stacked into a batch."""
        m = self.model
        out = torch.empty(len(feats_a), dtype=torch.float64)
        with torch.inference_mode():
            for i, (row_a, row_b) in enumerate(zip(feats_a, feats_b, strict=True)):
                val: torch.Tensor | int = 0
                for k in range(m.L):
                    a = row_a[k].to(self.device)[None]
                    # (a - b) ** 2 in place, in a buffer kept from row to row: the same values,
                    # without a fresh 10 MB allocation (and its page faults) per row
                    d = self._scratch(k, a)
                    torch.sub(a, row_b[k].to(self.device)[None], out=d)
                    d.mul_(d)
                    # the linear head (a 1x1 convolution to one channel, no bias) as the
                    # matrix-vector product it is: the same weighted sum over channels,
                    # without the convolution's reordering of d (a third less time)
                    head = torch.mv(d.view(d.shape[1], -1).t(), self._head(k))
                    val = val + head.mean()
                assert isinstance(val, torch.Tensor)
                out[i] = val.reshape(()).double().cpu()
        return out


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
    the view's resources hold an :class:`LPIPSMetric`.

    What depends on the reference alone (its SSIM moments, its LPIPS features) is a reference
    state (cached per dataset revision); what depends on the scored image alone (its SSIM
    moments, its LPIPS features) is computed once per batch and shared by its comparisons."""
    p = view.protocol
    pred, ref = view.pred_unit, view.reference_unit
    ssim_values, psnr_values = _shared_ssim_psnr(view)
    out = {"psnr": psnr_values, "ssim": ssim_values}
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
        out["lpips"] = metric.distance(
            preds, [[torch.from_numpy(np.asarray(rf[f"f{k}"])) for k in range(len(rf))]
                    for rf in refs])
    return out


def _shared_ssim_psnr(view: ScoreView) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ssim` and PSNR of the view's images on the evaluation grid, each (B,) float64,
    slice by slice on the scoring threads (:func:`map_slices`).

    SSIM from the scored image's moments (made once per batch) and the reference's (a
    reference state). PSNR as ``skimage.metrics.peak_signal_noise_ratio`` computes it (NumPy's
    float64 mean of the squared difference), which equals :func:`psnr` to rounding."""
    p = view.protocol
    if min(view.pred_unit.shape[-2:]) < p.ssim_window:
        raise ValueError(f"ssim: images {tuple(view.pred_unit.shape[-2:])} are smaller than "
                         f"the {p.ssim_window}x{p.ssim_window} window")
    radius = _ssim.check_window(p.ssim_window, p.ssim_sigma)
    kernel = _ssim.gaussian_kernel(p.ssim_sigma, radius)
    key = f"ssim-moments:{p.eval_size}:{p.ssim_window}:{p.ssim_sigma}"
    ref = view.reference_unit_np[:, 0]
    pred = view.pred_unit_np[:, 0]  # made here: the slices' threads must not run torch

    def pred_moments() -> list[_ssim.Moments]:
        return _ssim.batch_moments(pred, kernel)

    def ref_moments(rows: list[int]) -> list[dict[str, np.ndarray]]:
        return [m.to_state() for m in _ssim.batch_moments([ref[i] for i in rows], kernel)]

    preds = view.scored_state(key, pred_moments)
    refs = view.reference_state(key, ref_moments)

    def one(i: int) -> tuple[float, float]:
        my = _ssim.Moments.from_state(ref[i], refs[i], scratch=True)
        s = _ssim.ssim_pair(preds[i], my, kernel, p.data_range, k1=p.ssim_k1, k2=p.ssim_k2,
                            radius=radius)
        d = np.subtract(pred[i], ref[i], out=_ssim.scratch_array("diff", pred[i].shape))
        mse = np.multiply(d, d, out=d).mean(dtype=np.float64)  # a NumPy float64
        with np.errstate(divide="ignore"):  # identical images: inf, as psnr() gives
            return s, float(10.0 * np.log10(np.float64(p.data_range) ** 2 / mse))

    rows = map_slices(one, view.n)
    return (torch.tensor([r[0] for r in rows], dtype=torch.float64),
            torch.tensor([r[1] for r in rows], dtype=torch.float64))
