"""One configuration for the LGA reference method: model shapes, losses, data and training.

All defaults live in :class:`LGAConfig` (they are the paper's full model at 512 px, the
``lga-paper`` config); YAML files in ``baselines/lga/configs/`` override some of them. A YAML
file may name another one with ``base: NAME`` (a file in that folder, or a path) and override
it in turn. Unknown keys are errors, so a typo never silently trains the default.

HU normalisation (used everywhere in LGA): clip to the dataset's HU window [-1024, 3071]
and map linearly to [-1, 1], the range the diffusers VAE blocks are built for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.learn.config import ConfigBase
from benchmark.learn.errors import ConfigError
from benchmark.learn.schedules import learning_rate

#: Folder of the shipped YAML configs.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: The dataset's HU window (mapped to [-1, 1] here) and implant classes: one definition, in
#: the dataset schema.
from artifactgsi.schema import HU_MAX, HU_MIN, IMPLANT_TYPES, hu_to_unit01, implant_index  # noqa: E402,F401

STAGES = ("vae", "invariance", "align")


def hu_to_pm1(hu: torch.Tensor) -> torch.Tensor:
    """HU -> [-1, 1], the VAE's input range: the dataset window's [0, 1] scaling
    (:func:`artifactgsi.schema.hu_to_unit01`) stretched to [-1, 1] (any shape)."""
    return hu_to_unit01(hu) * 2.0 - 1.0


def pm1_to_hu(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> HU (inverse of :func:`hu_to_pm1`; values outside [-1, 1] are clipped)."""
    return (x.clamp(-1.0, 1.0) + 1.0) / 2.0 * (HU_MAX - HU_MIN) + HU_MIN


@dataclass
class LGAConfig(ConfigBase):
    """Every setting of LGA. Defaults = the paper's full model (``lga-paper``)."""

    config_dir: ClassVar[Path] = CONFIG_DIR
    default_name: ClassVar[str] = "lga-paper"

    # ---- images and latents
    image_size: int = 512             # px; slices are resampled to this square size
    neighbour_slices: int = 2         # k: the encoder sees 2k+1 adjacent slices (0 = 2D VAE)
    latent_channels: int = 4          # C of the latent z (B, C, H/f, W/f)
    # VAE widths; f = 2 ** (len - 1): 4 levels -> f = 8 (as Stable Diffusion's VAE)
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_norm_groups: int = 32         # GroupNorm groups (must divide every width)
    vae_mid_attention: bool = True    # self-attention in the VAE's middle block
    dual_decoder: bool = True         # D_n and D_g (ARVAE); False = one decoder (2D baseline)

    # ---- volume aggregation augmentation (centre slice only; paper Sec. 3.2)
    augment: bool = True
    augment_prob: float = 0.5         # chance per sample that the centre slice is altered
    mask_ratio: tuple[float, float] = (0.1, 0.5)    # fraction of 16x16-cell grid masked
    blur_sigma_px: tuple[float, float] = (1.0, 4.0)  # Gaussian sigma at 512 px (scaled)
    downsample_factor: tuple[int, int] = (2, 4)      # area down, bilinear up

    # ---- VAE losses
    recon_loss: str = "l1"            # "l1" or "mse", in [-1, 1] units
    # Random square crops (px) the VAE trains on; 0 = whole slices. E and D are convolutional
    # (the optional mid-block attention takes any size), so they run on whole slices
    # afterwards, as LDM's autoencoders train on 256 px crops and decode larger images.
    vae_crop: int = 0
    # Random flip / 90-degree rotation (one of the 8 symmetries of the square) of each training
    # sample, the same for every image of a sample (volumes, GSI, mask): CT artifacts have no
    # preferred orientation, and a toy set of a few patients is easily memorised.
    # Stages that use it: any of "vae", "align".
    dihedral: tuple[str, ...] = ()
    kl_weight: float = 1e-6           # weight of the KL term (as LDM's autoencoders)
    gsi_fraction: float = 0.25        # D_g batches: 25 % GSI ...
    clean_fraction: float = 0.75      # ... and 75 % clean no-implant slices (paper Sec. 4)

    # ---- information-invariant encoders Ec_n, Ec_g (Sec. 3.4)
    inv_channels: tuple[int, ...] = (64, 128, 256)
    inv_embed_dim: int = 128
    inv_temperature: float = 0.1      # InfoNCE temperature

    # ---- alignment network F (Sec. 3.3)
    align_channels: tuple[int, ...] = (128, 256, 512)
    align_layers_per_block: int = 2
    align_norm_groups: int = 32
    align_mask: bool = True           # merge the latent-size metal mask into residual blocks
    align_transformer: bool = True    # transformer blocks + implant-type cross-attention
    align_attention_levels: tuple[int, ...] = (1, 2)  # U-Net levels with transformer blocks
    align_heads: int = 8
    implant_tokens: int = 4           # learned tokens per implant type (cross-attention keys)

    # ---- alignment loss (Eq. 12-13): L = L_i + alpha L_l + beta L_inv
    alpha: float = 1.0
    # Random square crops (px, image side) for F's loss: latents are computed on whole
    # slices, then F and D_g run on the matching latent window (0 = whole slices).
    align_crop: int = 0
    beta: float = 0.001               # 0 disables L_inv (and the invariance stage)

    # ---- training
    lr: float = 1e-5                  # AdamW, paper
    lr_schedule: str = "constant"     # "constant" (paper) or "cosine": each stage decays its
    #                                   lr to lr_final_ratio * lr at its last step (short runs)
    lr_final_ratio: float = 0.02
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    batch_size: int = 4               # per process
    vae_epochs: int = 10              # paper: VAE 10 epochs
    invariance_epochs: int = 10
    align_epochs: int = 50            # paper: alignment net 50 epochs
    max_steps: int | None = None      # cap on optimiser steps per stage (None = epochs decide)
    val_fraction: float = 0.2         # held-out share of the training patients
    val_max_slices: int | None = 256  # validation subset per epoch (None = all)
    checkpoint_every: int = 1000      # steps between "last" checkpoints (also each validation)
    val_every: int = 1                # epochs between validations (and the last epoch always)
    num_workers: int = 4
    mixed_precision: str = "bf16"     # on GPU; CPU always runs fp32
    seed: int = 0

    # -------------------------------------------------------------------------------- derived
    @property
    def downsample_factor_latent(self) -> int:
        """f: image size / latent size."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor_latent

    @property
    def in_slices(self) -> int:
        """2k+1."""
        return 2 * self.neighbour_slices + 1

    def stage_lr(self, step: int, total: int) -> float:
        """Learning rate of step ``step`` (0-based) of a stage of ``total`` steps:
        ``constant``, or ``cosine`` down to ``lr_final_ratio * lr`` at the stage's last step."""
        return learning_rate(self.lr_schedule, self.lr, step, total,
                             final_ratio=self.lr_final_ratio)

    def validate(self, where: str = "config") -> LGAConfig:
        """Check values; raise :class:`ConfigError` naming ``where`` and the key."""

        def bad(key: str, why: str) -> ConfigError:
            return self.bad(where, key, why)

        f = self.downsample_factor_latent
        if self.image_size % f:
            raise bad("image_size", f"{self.image_size} px is not divisible by f = {f}")
        n_down = len(self.align_channels) - 1
        if self.latent_size % (2 ** n_down):
            raise bad("align_channels", f"{n_down} U-Net down-samplings do not divide the "
                      f"latent size {self.latent_size}")
        if self.neighbour_slices < 0:
            raise bad("neighbour_slices", "must be >= 0")
        if self.augment and self.neighbour_slices == 0:
            raise bad("augment", "the centre-slice augmentation needs neighbour slices "
                      "(neighbour_slices >= 1) to recover the slice from; set augment: false")
        for key, chans, groups in (("vae_channels", self.vae_channels, self.vae_norm_groups),
                                   ("align_channels", self.align_channels,
                                    self.align_norm_groups),
                                   ("inv_channels", self.inv_channels, self.vae_norm_groups)):
            if not chans or any(c % groups for c in chans):
                raise bad(key, f"every width must be divisible by the GroupNorm groups "
                          f"({groups}); got {list(chans)}")
        if self.align_transformer:
            for lvl in self.align_attention_levels:
                if not 0 <= lvl < len(self.align_channels):
                    raise bad("align_attention_levels", f"level {lvl} does not exist "
                              f"(levels 0..{len(self.align_channels) - 1})")
                if self.align_channels[lvl] % self.align_heads:
                    raise bad("align_heads", f"{self.align_heads} heads do not divide "
                              f"width {self.align_channels[lvl]} of level {lvl}")
        for key, crop, multiple in (("vae_crop", self.vae_crop, f),
                                    ("align_crop", self.align_crop, f * 2 ** n_down)):
            if crop and (crop % multiple or not 0 < crop <= self.image_size):
                raise bad(key, f"{crop} px must be 0 (whole slices) or a multiple of "
                          f"{multiple} px up to image_size {self.image_size}")
        if set(self.dihedral) - {"vae", "align"}:
            raise bad("dihedral", f"stages must be 'vae' and/or 'align', got {list(self.dihedral)}")
        if self.val_every < 1:
            raise bad("val_every", "must be >= 1 (epochs)")
        if self.recon_loss not in ("l1", "mse"):
            raise bad("recon_loss", f"must be 'l1' or 'mse', got {self.recon_loss!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise bad("lr_schedule", f"must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.lr_final_ratio <= 1.0:
            raise bad("lr_final_ratio", f"must be in [0, 1], got {self.lr_final_ratio}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise bad("mixed_precision", "must be 'no', 'bf16' or 'fp16'")
        if self.gsi_fraction < 0 or self.clean_fraction < 0 or \
                self.gsi_fraction + self.clean_fraction <= 0:
            raise bad("gsi_fraction", "gsi_fraction and clean_fraction must be >= 0, not both 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "must be in [0, 1)")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        return self



def load_config(config: str | Path | dict[str, Any] | LGAConfig | None = None,
                **overrides: Any) -> LGAConfig:
    """An :class:`LGAConfig` from a shipped name (``"lga-cpu"``), a YAML path, a dict, or
    ``None`` (the defaults), with keyword ``overrides`` applied last."""
    return LGAConfig.load(config, overrides)
