"""The DuDoDp prior: an unconditional image diffusion model (diffusers ``UNet2DModel`` and
``DDPMScheduler``) that predicts the clean image x0 from a noisy one.

* Input / output: ``(B, 1, S, S)`` model units (HU window -> [-1, 1], see
  :class:`~baselines.dudodp.config.DuDoDpConfig`). With ``patchify = p > 1`` the slice is
  rearranged by ``PixelUnshuffle(p)`` into ``(B, p^2, S/p, S/p)`` before the UNet and back by
  ``PixelShuffle(p)`` after it (the published 512 px prior runs its UNet at 128 x 128).
* Diffusion: ``DDPMScheduler(prediction_type="sample")``, linear betas over
  ``train_timesteps`` (1000) steps. Training minimises ``|| x0_hat(x_t, t) - x0 ||^2`` with
  ``t`` uniform and ``x_t = scheduler.add_noise(x0, noise, t)``.
* Weights: ``save_pretrained`` / ``from_pretrained`` (:func:`load_prior`) use the training
  kit's weights folder (:mod:`benchmark.learn.weights`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.deep_common import DeepModel
from baselines.dudodp.config import DuDoDpConfig
from benchmark.learn.weights import hu_window


def make_scheduler(config: DuDoDpConfig):
    """The diffusers ``DDPMScheduler`` of ``config`` (x0 prediction, linear betas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.train_timesteps,
                         beta_start=config.beta_start, beta_end=config.beta_end,
                         beta_schedule="linear", prediction_type="sample",
                         variance_type=config.variance_type, clip_sample=True,
                         clip_sample_range=1.0)


class DiffusionPrior(DeepModel):
    """x0-predicting diffusion prior on ``config.image_size`` px slices."""

    family = "dudodp"
    config_class = DuDoDpConfig
    uses_li = False

    def __init__(self, config: DuDoDpConfig) -> None:
        super().__init__(config)
        from diffusers import UNet2DModel

        p = config.patchify
        size = config.image_size
        # learned_range: a second set of channels interpolates the log variance (unused by
        # the MAR sampler, trained only through a variational bound we do not optimise).
        out_ch = p * p * (2 if config.variance_type == "learned_range" else 1)
        self.unet = UNet2DModel(
            sample_size=None if size is None else size // p,
            in_channels=p * p, out_channels=out_ch,
            block_out_channels=tuple(config.block_out_channels),
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D"
                                   for a in config.attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D"
                                 for a in reversed(config.attention)),
            layers_per_block=config.layers_per_block, norm_num_groups=config.norm_num_groups,
            dropout=config.dropout)
        self.unshuffle = nn.PixelUnshuffle(p) if p > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(p) if p > 1 else nn.Identity()
        self.scheduler = make_scheduler(config)

    def normalisation(self) -> dict[str, Any]:
        """HU clipped to the config's window and mapped to [-1, 1]."""
        return hu_window(self.config.hu_min, self.config.hu_max, -1.0, 1.0)

    @staticmethod
    def legacy_range(scale: float) -> list[float]:
        return [-1.0, 1.0]  # [0, scale] shifted by -1 (config.hu_to_pm1)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 estimate ``(B, 1, S, S)`` (model units, clipped to [-1, 1]) of ``x_t``
        ``(B, 1, S, S)`` at training timesteps ``t`` ``(B,)`` long."""
        p = self.config.patchify
        out = self.unet(self.unshuffle(x_t), t).sample[:, : p * p]
        return self.shuffle(out).clamp(-1.0, 1.0)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch``: ``x0`` (B, 1, S, S) model units, ``t`` (B,) long, ``noise`` like x0."""
        x0, t, noise = batch["x0"], batch["t"], batch["noise"]
        x_t = self.scheduler.add_noise(x0, noise, t)
        p = self.config.patchify
        pred = self.shuffle(self.unet(self.unshuffle(x_t), t).sample[:, : p * p])
        return {"loss": torch.mean((pred.float() - x0.float()) ** 2)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.losses(batch)


#: ``from_pretrained``: a weights folder written by ``marbench train dudodp`` (or a Hub repo).
load_prior = DiffusionPrior.from_pretrained
