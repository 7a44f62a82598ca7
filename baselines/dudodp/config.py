"""Settings of the DuDoDp prior (an unconditional image diffusion model) and its training.

One dataclass, :class:`DuDoDpConfig`, read from YAML configs with ``base:`` chains (shipped:
``dudodp-tiny``, ``dudodp-cpu``, ``dudodp-paper`` in ``configs/``); unknown keys and wrong
types are errors naming the file and the key, with a "did you mean".

Images enter the network in *model units*: HU clipped to ``[hu_min, hu_max]`` and mapped
linearly to ``[-1, 1]`` (the range the published prior works in).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from artifactgsi.schema import HU_MAX, HU_MIN
from baselines.deep_common import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Output variances diffusers' DDPMScheduler implements. The published prior learns its
#: variance ("learned_range"); the MAR sampler never uses it (each step re-noises the fused
#: image with q(x_t | x_0)), so the shipped configs train the x0 head only ("fixed_small").
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


@dataclass
class DuDoDpConfig(TrainConfig):
    """Every setting of the DuDoDp prior. Defaults = ``dudodp-paper``: 512 px slices
    patchified 4 x 4 (PixelUnshuffle) into a 128 x 128 x 16 UNet, 128 base channels with
    multipliers 1, 1, 2, 2, 4, two residual blocks per level, attention at the two coarsest
    levels; x0 prediction, 1000 linear-beta steps (1e-4 .. 0.02), Adam at 1e-4, EMA 0.9999.
    """

    config_dir: ClassVar[Path] = CONFIG_DIR
    default_name: ClassVar[str] = "dudodp-paper"

    variant: str = "dudodp"
    # ---- data: GSI + clean slices of the training split, whole slices (the sampler
    # denoises whole slices), random flips
    clean_fraction: float = 0.5       # share of batch draws from the ``clean`` config
    hu_min: float = HU_MIN
    hu_max: float = HU_MAX
    scale: float = 2.0                # [hu_min, hu_max] -> [0, 2]; minus 1 gives [-1, 1]
    patch_size: int = 0
    image_size: int | None = 512
    # ---- network (diffusers UNet2DModel)
    patchify: int = 4                 # PixelUnshuffle factor (1 = none)
    block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512)
    attention: tuple[bool, ...] = (False, False, False, True, True)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    dropout: float = 0.0
    # ---- diffusion (diffusers DDPMScheduler)
    train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    variance_type: str = "fixed_small"
    # ---- optimisation
    batch_size: int = 8
    lr: float = 1e-4
    lr_schedule: str = "constant"
    max_steps: int = 300_000
    ema_decay: float = 0.9999
    ema_warmup: bool = True           # EMA warm-up: the decay grows from 0 early on (false:
    #                                   the decay from the start; see benchmark.learn.ema)
    val_every: int = 1000             # steps between log lines (no validation metric)
    checkpoint_every: int = 5000
    mixed_precision: str = "bf16"

    def validate(self, where: str = "config") -> DuDoDpConfig:
        super().validate(where)

        def bad(key: str, why: str) -> Exception:
            return self.bad(where, key, why)

        if self.variant != "dudodp":
            raise bad("variant", f"must be 'dudodp', got {self.variant!r}")
        if self.patch_size != 0:
            raise bad("patch_size", "must be 0: the prior learns whole slices (the sampler "
                      "denoises whole slices)")
        if not 0.0 <= self.clean_fraction <= 1.0:
            raise bad("clean_fraction", f"must be in [0, 1], got {self.clean_fraction}")
        if self.patchify < 1:
            raise bad("patchify", f"must be >= 1, got {self.patchify}")
        if not self.block_out_channels or len(self.attention) != len(self.block_out_channels):
            raise bad("attention", f"needs one true/false per level of block_out_channels "
                      f"({len(self.block_out_channels)}), got {list(self.attention)}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise bad("norm_num_groups", f"{self.norm_num_groups} must divide every width in "
                      f"block_out_channels {list(self.block_out_channels)}")
        if self.image_size is not None:
            down = self.patchify * 2 ** (len(self.block_out_channels) - 1)
            if self.image_size % down:
                raise bad("image_size", f"{self.image_size} px is not divisible by patchify x "
                          f"2^(levels - 1) = {down}")
        if self.train_timesteps < 2:
            raise bad("train_timesteps", "must be >= 2")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise bad("beta_end", "need 0 < beta_start < beta_end < 1")
        if self.variance_type not in VARIANCE_TYPES:
            raise bad("variance_type", f"must be one of {', '.join(VARIANCE_TYPES)}, got "
                      f"{self.variance_type!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise bad("ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        return self

    # ---- units ---------------------------------------------------------------------------
    def hu_to_pm1(self, hu: torch.Tensor) -> torch.Tensor:
        """HU -> model units in [-1, 1] (clipped to the window), any shape."""
        return self.hu_to_model(hu) * (2.0 / self.scale) - 1.0

    def pm1_to_hu(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> HU (no clipping), any shape."""
        return self.model_to_hu((x + 1.0) * (self.scale / 2.0))


def load_dudodp_config(config: str | Path | dict[str, Any] | DuDoDpConfig | None = None,
                       overrides: dict[str, Any] | None = None) -> DuDoDpConfig:
    """A :class:`DuDoDpConfig` from a shipped name (``dudodp-cpu``), a YAML path, a dict, an
    instance or ``None`` (the ``dudodp-paper`` defaults), with ``overrides`` applied last."""
    return DuDoDpConfig.load(config, overrides)
