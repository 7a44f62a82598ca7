"""The whole LGA model (VAE + invariance encoders + alignment net), its weights and
inference: S_p = D_g(F(E(V_n))) (paper Sec. 3.3).

Weights: the training kit's weights folder (:mod:`benchmark.learn.weights`: config.json,
model.safetensors, a model card) with ``save_pretrained`` / ``from_pretrained`` (a folder or a
Hub model repo id); the stages trained so far are recorded under ``training.trained``. Folders
of the earlier ``marbench-lga/1`` format (the config's fields, ``format`` and ``trained`` in
one flat config.json) still load.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from artifactgsi.schema import HU_MAX, HU_MIN
from baselines.lga.align import AlignmentNet
from baselines.lga.config import LGAConfig, hu_to_pm1, pm1_to_hu
from baselines.lga.invariance import InvarianceEncoder
from baselines.lga.vae import ARVAE
from benchmark.learn.weights import PretrainedModel, hu_window

LEGACY_FORMAT = "marbench-lga/1"


class LGAModel(PretrainedModel):
    """E, D_n, D_g (``vae``), F (``align``) and Ec_n, Ec_g (``ec_n``, ``ec_g``).

    ``trained`` records which stages have been trained (``{"vae": step, ...}``); inference
    needs at least the VAE and the alignment net.
    """

    family = "lga"
    config_class = LGAConfig
    legacy_formats = (LEGACY_FORMAT,)

    def __init__(self, config: LGAConfig) -> None:
        super().__init__(config)
        self.vae = ARVAE(config)
        self.align = AlignmentNet(config)
        self.ec_n = InvarianceEncoder(config)
        self.ec_g = InvarianceEncoder(config)
        self.training_info["trained"] = {}

    @property
    def trained(self) -> dict[str, int]:
        """Stages trained so far and the step each ended at."""
        return self.training_info.setdefault("trained", {})

    @trained.setter
    def trained(self, stages: dict[str, int]) -> None:
        self.training_info["trained"] = dict(stages)

    def normalisation(self) -> dict[str, Any]:
        return hu_window(HU_MIN, HU_MAX, -1.0, 1.0)

    @property
    def target(self) -> str:
        return "gsi"  # D_g decodes GSI-like images

    @classmethod
    def upgrade_legacy(cls, meta: dict[str, Any], where: str) -> dict[str, Any]:
        """``marbench-lga/1``: the config's fields, ``format`` and ``trained`` in one
        object."""
        config = {k: v for k, v in meta.items() if k not in ("format", "trained")}
        trained = {str(k): int(v) for k, v in (meta.get("trained") or {}).items()}
        return {"family": cls.family, "config": config, "training": {"trained": trained}}

    # ------------------------------------------------------------------------------ inference
    def prepare_inputs(self, volume_hu: torch.Tensor, mask: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 2k+1, H, W) HU -> [-1, 1] at ``image_size``; mask (B, 1, H, W) -> metal fraction
        at the same size."""
        s = self.config.image_size
        x = hu_to_pm1(volume_hu.float())
        if x.shape[-2:] != (s, s):
            x = resize(x, s)
        m = None
        if mask is not None:
            m = mask.float()
            if m.shape[-2:] != (s, s):
                m = F.interpolate(m, size=(s, s), mode="area")
        return x, m

    def align_latent(self, volume: torch.Tensor, mask: torch.Tensor | None,
                     implant: torch.Tensor | None) -> torch.Tensor:
        """F(E(V_n)): (B, 2k+1, S, S) in [-1, 1] -> (B, C, S/f, S/f) (posterior mean)."""
        z_n = self.vae.encode(volume).mode()
        return self.align(z_n, mask, implant)

    @torch.no_grad()
    def restore(self, volume_hu: torch.Tensor, mask: torch.Tensor | None = None,
                implant: torch.Tensor | None = None, reinsert_metal: bool = False
                ) -> torch.Tensor:
        """S_p = D_g(F(E(V_n))) in HU on the input grid.

        Args:
            volume_hu: (B, 2k+1, H, W) ordinary HU, centre slice at channel k.
            mask: (B, 1, H, W) metal mask of the centre slice (bool or fraction).
            implant: (B,) long implant-type indices (0 = none / unknown).
            reinsert_metal: copy the input's metal pixels (``mask`` > 0.5) into the output, as
                LI and NMAR do. Off by default: the paper's output is D_g's image as is, and
                GSI shows less metal blooming than the ordinary scan, so the ordinary metal
                mask covers tissue in GSI; D_g, trained on GSI, draws GSI-like metal.

        Returns:
            (B, 1, H, W) float32 HU.
        """
        h, w = volume_hu.shape[-2:]
        x, m = self.prepare_inputs(volume_hu, mask)
        out = self.vae.decode_g(self.align_latent(x, m, implant)).float()
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        out = pm1_to_hu(out)
        if reinsert_metal and mask is not None:
            k = self.config.neighbour_slices
            out = torch.where(mask > 0.5, volume_hu[:, k:k + 1].float(), out)
        return out


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): area when shrinking (no aliasing), else bilinear."""
    if x.shape[-1] >= size and x.shape[-2] >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def count_parameters(module: nn.Module) -> dict[str, Any]:
    """Parameter counts per part (for logs and the README)."""
    return {name: sum(p.numel() for p in m.parameters())
            for name, m in module.named_children()}
