"""Information-invariant encoders Ec_n and Ec_g (paper Sec. 3.4, Eq. 10-11).

Ec_n embeds ordinary latents z_n = E(V_n), Ec_g embeds clean latents z_g = E(V_g); both map a
(B, C, h, w) latent to an L2-normalised (B, D) vector. They are trained contrastively: the
two latents of the same slice (same patient, same position) are pulled together, latents of
other positions and other patients pushed apart. Then they are frozen and give the alignment
loss L_inv = ||Ec_n(F(z_n)) - Ec_g(z_g)||^2 (Eq. 12).

Eq. 11 as printed is unbounded below (it rewards pushing negatives apart without limit), so
this implementation uses the standard bounded form, InfoNCE (van den Oord et al. 2018) on
L2-normalised embeddings with a temperature, symmetric in n -> g and g -> n.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.lga.config import LGAConfig


class InvarianceEncoder(nn.Module):
    """Small conv net: (B, C, h, w) latent -> (B, D) unit-length embedding."""

    def __init__(self, config: LGAConfig) -> None:
        super().__init__()
        chans = config.inv_channels
        groups = config.vae_norm_groups
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, chans[0], 3, padding=1)]
        prev = chans[0]
        for i, ch in enumerate(chans):
            stride = 1 if i == 0 else 2
            layers += [nn.GroupNorm(groups, prev), nn.SiLU(),
                       nn.Conv2d(prev, ch, 3, stride=stride, padding=1)]
            prev = ch
        layers += [nn.GroupNorm(groups, prev), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                   nn.Flatten(), nn.Linear(prev, config.inv_embed_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(z).float(), dim=1)


def info_nce(e_n: torch.Tensor, e_g: torch.Tensor, temperature: float,
             patient: torch.Tensor | None = None, position: torch.Tensor | None = None,
             min_gap: int = 0) -> torch.Tensor:
    """Symmetric InfoNCE between paired unit embeddings (B, D): row i of ``e_n`` and ``e_g``
    are the same slice (positive); every other row is a negative.

    Slices of the same ``patient`` (B,) whose ``position`` (B,) differs by at most ``min_gap``
    share input slices of their 2k+1 volumes, so they are not used as negatives (they are
    near-duplicates, not different anatomy).
    """
    logits = e_n @ e_g.t() / temperature                       # (B, B)
    b = logits.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=logits.device)
    if patient is not None and position is not None and min_gap > 0:
        near = (patient[:, None] == patient[None, :]) & \
               ((position[:, None] - position[None, :]).abs() <= min_gap)
        logits = logits.masked_fill(near & ~eye, float("-inf"))
    target = torch.arange(b, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def invariance_distance(e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
    """L_inv: mean squared distance of unit embeddings (B, D) (= 2 - 2 cos), a scalar."""
    return (e_a - e_b).pow(2).sum(1).mean()


@torch.no_grad()
def retrieval_accuracy(e_n: torch.Tensor, e_g: torch.Tensor) -> float:
    """Share of rows whose nearest ``e_g`` (cosine) is their own pair: validation metric of
    the invariance stage (higher is better)."""
    return float(((e_n @ e_g.t()).argmax(1) == torch.arange(len(e_n), device=e_n.device))
                 .float().mean())
