"""``unet``: a supervised image-domain U-Net for metal artifact reduction.

The network sees the ordinary image and, by default, the LI image and the metal mask
(``inputs``), and predicts a residual: output = ordinary + U-Net(inputs), in the model's
units (HU clipped to [hu_min, hu_max] and mapped to [0, scale]). It is a
``segmentation_models_pytorch.Unet`` without pretrained encoder weights. Supervised by GSI
(``target: gsi``, default) or by the artifact-free simulated image (``target: clean``),
with an L1 (or MSE) loss on whole patches, metal included: the output is compared with
the target everywhere, as the benchmark does.

Train: ``marbench train unet --config unet-cpu --data DATA --out RUN``; run:
``marbench run --method unet -O weights=RUN/model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from baselines.deep_common import DeepMARMethod, DeepModel, TrainConfig
from baselines.deep_train import run_training

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
INPUTS = ("ordinary", "li", "mask")
#: (encoder depth that first runs it, attribute) of the ResNet encoder levels.
PRUNABLE = ((4, "layer3"), (5, "layer4"))


@dataclass
class UNetConfig(TrainConfig):
    """Every setting of the U-Net baseline. Defaults = ``unet-paper``: a ResNet-34 encoder
    of depth 5, decoder widths 256..16, on 256 px patches of 512 px slices, batch 8, Adam
    at 1e-4 with a cosine decay over 100k steps, bf16 on GPU."""

    config_dir: ClassVar[Path] = CONFIG_DIR
    default_name: ClassVar[str] = "unet-paper"

    variant: str = "unet"
    encoder_name: str = "resnet34"    # any smp encoder; trained from scratch (no download)
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    inputs: tuple[str, ...] = ("ordinary", "li", "mask")
    loss: str = "l1"                  # "l1" or "mse" on whole patches (metal included)
    patch_size: int = 256
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    max_steps: int = 100_000
    lr_schedule: str = "cosine"
    val_every: int = 2000
    checkpoint_every: int = 2000
    mixed_precision: str = "bf16"

    def validate(self, where: str = "config") -> UNetConfig:
        super().validate(where)
        if self.variant != "unet":
            raise self.bad(where, "variant", f"must be 'unet', got {self.variant!r}")
        bad = [i for i in self.inputs if i not in INPUTS]
        if bad or "ordinary" not in self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise self.bad(where, "inputs", "must include 'ordinary' and may add 'li', 'mask' "
                           f"(each once); got {list(self.inputs)}")
        if len(self.decoder_channels) != self.encoder_depth:
            raise self.bad(where, "decoder_channels", "needs one width per encoder level "
                           f"({self.encoder_depth}), got {list(self.decoder_channels)}")
        if self.patch_size % (2 ** self.encoder_depth):
            raise self.bad(where, "patch_size", f"{self.patch_size} px is not divisible by "
                           f"2^encoder_depth = {2 ** self.encoder_depth}")
        if self.loss not in ("l1", "mse"):
            raise self.bad(where, "loss", f"must be 'l1' or 'mse', got {self.loss!r}")
        return self


def load_unet_config(config: Any = None, overrides: dict[str, Any] | None = None
                     ) -> UNetConfig:
    """A :class:`UNetConfig` from a shipped name (``unet-cpu``), a YAML path, a dict or
    ``None`` (``unet-paper`` defaults), with ``overrides`` last."""
    return UNetConfig.load(config, overrides)


class UNetModel(DeepModel):
    """smp U-Net on the stacked inputs, residual output (model units)."""

    family = "unet"
    config_class = UNetConfig

    def __init__(self, config: UNetConfig) -> None:
        import segmentation_models_pytorch as smp

        super().__init__(config)
        torch.manual_seed(config.seed)  # smp initialises from the global generator
        self.net = smp.Unet(encoder_name=config.encoder_name, encoder_weights=None,
                            encoder_depth=config.encoder_depth,
                            decoder_channels=tuple(config.decoder_channels),
                            in_channels=len(config.inputs), classes=1)
        # ResNet-style encoders keep all their levels whatever the depth; the ones a shallow
        # U-Net never runs are dropped (smp builds, then initialises them, first: the
        # remaining weights are the same as with them).
        for level, name in PRUNABLE:
            if config.encoder_depth < level and isinstance(
                    getattr(self.net.encoder, name, None), nn.Module):
                setattr(self.net.encoder, name, nn.Identity())

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False
                        ) -> Any:
        # Weights written before the unused encoder levels were dropped still load.
        dropped = [f"net.encoder.{n}." for lvl, n in PRUNABLE
                   if self.config.encoder_depth < lvl]
        state = {k: v for k, v in state_dict.items() if not k.startswith(tuple(dropped))}
        return super().load_state_dict(state, strict=strict, assign=assign)

    @property
    def uses_li(self) -> bool:  # type: ignore[override]
        return "li" in self.config.inputs

    def _stack(self, x_ma: torch.Tensor, li: torch.Tensor, metal: torch.Tensor
               ) -> torch.Tensor:
        parts = {"ordinary": x_ma, "li": li, "mask": metal.to(x_ma.dtype)}
        return torch.cat([parts[k] for k in self.config.inputs], dim=1)

    def restore_units(self, x_ma: torch.Tensor, li: torch.Tensor, metal: torch.Tensor
                      ) -> torch.Tensor:
        h, w = x_ma.shape[-2:]
        d = 2 ** self.config.encoder_depth
        ph, pw = (-h) % d, (-w) % d
        inp = self._stack(x_ma, li, metal)
        if ph or pw:  # the encoder halves the size encoder_depth times
            inp = F.pad(inp, (0, pw, 0, ph), mode="reflect")
        return x_ma + self.net(inp)[..., :h, :w]

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.restore_units(batch["ordinary"], batch["li"], batch["mask"])
        fn = F.l1_loss if self.config.loss == "l1" else F.mse_loss
        loss = fn(out.float(), batch["target"].float())
        return {"loss": loss}


#: A trained :class:`UNetModel` from a weights folder or Hub repo id.
load_unet = UNetModel.from_pretrained


class UNetMAR(DeepMARMethod):
    """Supervised image-domain U-Net (ordinary + LI + mask in, residual out); needs weights.

    Options: ``weights`` (folder written by ``marbench train unet``, or a Hub repo id with
    ``revision``), ``device``, ``batch_size``, ``reinsert_metal`` (default false: the
    network was trained on whole images, metal included), ``target`` (checked against the
    weights).
    """

    name = "unet"
    version = "1"
    default_reinsert_metal = False
    model_class = UNetModel


def train(config: str, data: str, out: Path, *, resume: bool = False,
          overrides: dict[str, Any] | None = None) -> Path:
    """Train the U-Net from ``config`` (``unet-tiny``, ``unet-cpu``, ``unet-paper`` or a
    YAML path) on the built dataset ``data`` into run folder ``out``; returns ``out/model``.
    ``overrides``: config keys (e.g. ``{"target": "clean", "seed": 1}``)."""
    cfg, name = UNetConfig.load_named(config, overrides)
    return run_training(cfg, UNetModel, data, out, resume=resume, reinsert_metal=False,
                        tag="unet", config_name=name)


train.configs = ["unet-tiny", "unet-cpu", "unet-paper"]  # type: ignore[attr-defined]
