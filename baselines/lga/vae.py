"""Artifact-reducing VAE (paper Sec. 3.2, Fig. 3a) and its volume aggregation augmentation.

One encoder E maps a volume of 2k+1 adjacent slices (slices as input channels, values in
[-1, 1], see :func:`baselines.lga.config.hu_to_pm1`) to a diagonal Gaussian over the latent
of the centre slice, (B, C, H/f, W/f). Two decoders share it: D_n reconstructs the ordinary
centre slice, D_g decodes to clean images (trained on GSI and clean no-implant slices). The
blocks are diffusers' ``Encoder`` / ``Decoder`` (the Stable Diffusion VAE's), with the 1x1
``quant_conv`` / ``post_quant_conv`` as in diffusers' ``AutoencoderKL``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.lga.config import LGAConfig


def _diffusers():
    try:
        from diffusers.models.autoencoders import vae
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("LGA needs diffusers: pip install diffusers accelerate") from e
    return vae


class ARVAE(nn.Module):
    """Artifact-reducing VAE: encoder E over 2k+1 slices, decoders D_n and D_g.

    With ``config.dual_decoder = False`` (the 2D baseline of Table 1) there is one decoder,
    and :meth:`decode_n` and :meth:`decode_g` are the same module.
    """

    def __init__(self, config: LGAConfig) -> None:
        super().__init__()
        vae = _diffusers()
        c = config
        n = len(c.vae_channels)
        self.encoder = vae.Encoder(
            in_channels=c.in_slices, out_channels=c.latent_channels,
            down_block_types=("DownEncoderBlock2D",) * n, block_out_channels=c.vae_channels,
            layers_per_block=c.vae_layers_per_block, norm_num_groups=c.vae_norm_groups,
            double_z=True, mid_block_add_attention=c.vae_mid_attention)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1)

        def decoder() -> nn.Module:
            return vae.Decoder(
                in_channels=c.latent_channels, out_channels=1,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=c.vae_channels,
                layers_per_block=c.vae_layers_per_block, norm_num_groups=c.vae_norm_groups,
                mid_block_add_attention=c.vae_mid_attention)

        self.decoder_n = decoder()
        # The 2D baseline shares one decoder; ARVAE has a second, distinct one.
        self.decoder_g = decoder() if c.dual_decoder else None
        self.dual_decoder = c.dual_decoder

    def encode(self, volume: torch.Tensor):
        """(B, 2k+1, H, W) in [-1, 1] -> ``DiagonalGaussianDistribution`` over (B, C, h, w)."""
        moments = self.quant_conv(self.encoder(volume))
        return _diffusers().DiagonalGaussianDistribution(moments)

    def _decode(self, decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return decoder(self.post_quant_conv(z))

    def decode_n(self, z: torch.Tensor) -> torch.Tensor:
        """D_n: (B, C, h, w) latent -> (B, 1, H, W) ordinary-like slice in [-1, 1] units."""
        return self._decode(self.decoder_n, z)

    def decode_g(self, z: torch.Tensor) -> torch.Tensor:
        """D_g: (B, C, h, w) latent -> (B, 1, H, W) clean slice in [-1, 1] units."""
        return self._decode(self.decoder_g if self.decoder_g is not None else self.decoder_n, z)


# ----------------------------------------------------------------------------- augmentation


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (B, 1, H, W) with its own sigma (B,) in px (separable, reflect)."""
    radius = int(math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)                              # (B, 2r+1)
    b = x.shape[0]
    xp = F.pad(x.reshape(1, b, *x.shape[2:]), (radius, radius, radius, radius), mode="reflect")
    xp = F.conv2d(xp, k.view(b, 1, 1, -1), groups=b)
    xp = F.conv2d(xp, k.view(b, 1, -1, 1), groups=b)
    return xp.view_as(x)


def augment_centre_slice(volume: torch.Tensor, config: LGAConfig,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Volume aggregation augmentation: alter only the centre slice of each volume.

    With probability ``config.augment_prob`` per sample, one of three corruptions is applied
    to channel k (the centre) of (B, 2k+1, H, W): random masking (cells of a 16 x 16 grid
    set to -1, i.e. air, a fraction drawn from ``mask_ratio``), Gaussian blurring (sigma from
    ``blur_sigma_px``, given at 512 px and scaled to H), or down-sampling (area down by a
    factor from ``downsample_factor``, bilinear back up). The other 2k slices are untouched,
    so the encoder must learn to take the lost detail from them; the loss compares the decoded
    slice with the unaltered centre. Returns a new tensor; the input is not modified.
    """
    out = volume.clone()
    b, s, h, w = volume.shape
    if not config.augment or s == 1:
        return out
    kc = s // 2
    dev = volume.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device="cpu").to(dev)

    which = torch.randint(0, 3, (b,), generator=generator).tolist()
    apply = (rand(b) < config.augment_prob).tolist()
    centre = volume[:, kc:kc + 1]
    scale = h / 512.0
    for i in range(b):
        if not apply[i]:
            continue
        x = centre[i:i + 1]
        if which[i] == 0:       # random masking on a 16 x 16 grid of cells
            lo, hi = config.mask_ratio
            ratio = lo + (hi - lo) * float(rand(1))
            cells = (rand(1, 1, 16, 16) < ratio).to(x.dtype)
            m = F.interpolate(cells, size=(h, w), mode="nearest")
            x = x * (1 - m) - m
        elif which[i] == 1:     # Gaussian blur
            lo, hi = config.blur_sigma_px
            sigma = (lo + (hi - lo) * rand(1)) * scale
            x = _gaussian_blur(x, sigma.clamp_min(0.3))
        else:                   # down-sampling
            lo, hi = config.downsample_factor
            fac = int(torch.randint(lo, hi + 1, (1,), generator=generator))
            small = F.interpolate(x, size=(max(1, h // fac), max(1, w // fac)), mode="area")
            x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        out[i, kc] = x[0, 0]
    return out
