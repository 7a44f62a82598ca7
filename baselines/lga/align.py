"""Alignment network F (paper Sec. 3.3, Fig. 3b, Eq. 9): ordinary latent -> clean latent.

A U-Net over latents (B, C, h, w) built from diffusers blocks:

* residual blocks (``ResnetBlock2D``) into which the metal mask is merged: the mask, area
  down-sampled to each level's size (so a latent pixel holds the metal fraction of its
  footprint, in [0, 1]), goes through a 3x3 conv and is added to the block input;
* transformer blocks (``Transformer2DModel``: self-attention, cross-attention, feed-forward)
  into which the implant type is fused by cross-attention to ``implant_tokens`` learned
  tokens of that type (several tokens, so the attention weights are not trivially 1);
  "none" also stands for an unknown type.

F predicts a residual: F(z_n) = z_n + U(z_n, mask, implant), with the last conv zero-initialised,
so training starts from the identity (the ordinary latent is already close to the clean one
outside the artifacts). With ``align_mask = align_transformer = False`` it is the plain U-Net
of the paper's ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.lga.config import IMPLANT_TYPES, LGAConfig


class MaskResBlock(nn.Module):
    """``ResnetBlock2D`` with the metal mask merged into its input (added after a 3x3 conv)."""

    def __init__(self, cin: int, cout: int, groups: int, use_mask: bool) -> None:
        super().__init__()
        from diffusers.models.resnet import ResnetBlock2D

        self.mask_proj = nn.Conv2d(1, cin, 3, padding=1) if use_mask else None
        self.block = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=None,
                                   groups=groups, groups_out=groups)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.mask_proj is not None and mask is not None:
            h = h + self.mask_proj(mask.to(h.dtype))
        return self.block(h, None)


class AlignmentNet(nn.Module):
    """F: (B, C, h, w) ordinary latent (+ (B, 1, h, w) metal fraction, (B,) implant index)
    -> (B, C, h, w) aligned latent."""

    def __init__(self, config: LGAConfig) -> None:
        super().__init__()
        from diffusers.models.resnet import Downsample2D, Upsample2D
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        c = config
        ch = c.align_channels
        g = c.align_norm_groups
        self.use_mask = c.align_mask
        self.use_transformer = c.align_transformer
        self.n_levels = len(ch)
        self.implant_tokens = c.implant_tokens
        attn = set(c.align_attention_levels) if c.align_transformer else set()
        ctx_dim = ch[0]
        if c.align_transformer:
            self.implant_embed = nn.Embedding(len(IMPLANT_TYPES), c.implant_tokens * ctx_dim)

        def transformer(width: int) -> nn.Module:
            return Transformer2DModel(
                num_attention_heads=c.align_heads, attention_head_dim=width // c.align_heads,
                in_channels=width, norm_num_groups=g, cross_attention_dim=ctx_dim)

        self.conv_in = nn.Conv2d(c.latent_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        prev = ch[0]
        for i, width in enumerate(ch):
            level = nn.ModuleDict()
            level["res"] = nn.ModuleList(
                MaskResBlock(prev if j == 0 else width, width, g, c.align_mask)
                for j in range(c.align_layers_per_block))
            level["attn"] = nn.ModuleList(
                transformer(width) for _ in range(c.align_layers_per_block if i in attn else 0))
            if i < len(ch) - 1:
                level["down"] = Downsample2D(width, use_conv=True, name="op")  # no alias
            self.down.append(level)
            prev = width
        self.mid_res1 = MaskResBlock(ch[-1], ch[-1], g, c.align_mask)
        self.mid_attn = transformer(ch[-1]) if c.align_transformer else None
        self.mid_res2 = MaskResBlock(ch[-1], ch[-1], g, c.align_mask)
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch))):
            level = nn.ModuleDict()
            if i < len(ch) - 1:
                level["up"] = Upsample2D(prev, use_conv=True)
            level["res"] = nn.ModuleList(
                MaskResBlock(prev + ch[i] if j == 0 else ch[i], ch[i], g, c.align_mask)
                for j in range(c.align_layers_per_block))
            level["attn"] = nn.ModuleList(
                transformer(ch[i]) for _ in range(c.align_layers_per_block if i in attn else 0))
            self.up.append(level)
            prev = ch[i]
        self.norm_out = nn.GroupNorm(g, ch[0])
        self.conv_out = nn.Conv2d(ch[0], c.latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # F starts as the identity (residual output)
        nn.init.zeros_(self.conv_out.bias)

    def _context(self, implant: torch.Tensor | None, b: int, device: torch.device
                 ) -> torch.Tensor | None:
        if not self.use_transformer:
            return None
        if implant is None:
            implant = torch.zeros(b, dtype=torch.long, device=device)  # "none" when unknown
        return self.implant_embed(implant.long()).view(b, self.implant_tokens, -1)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None,
                implant: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, C, h, w); mask (B, 1, H, W) or (B, 1, h, w) metal indicator/fraction in
        [0, 1] (any size, area-resampled per level); implant (B,) long indices into
        :data:`~baselines.lga.config.IMPLANT_TYPES`. Returns (B, C, h, w)."""
        b, _, h, w = z.shape
        masks: list[torch.Tensor | None] = [None] * self.n_levels
        if self.use_mask:
            if mask is None:
                mask = torch.zeros(b, 1, h, w, device=z.device)
            mask = mask.float()
            for i in range(self.n_levels):
                masks[i] = F.adaptive_avg_pool2d(mask, (h >> i, w >> i))
        ctx = self._context(implant, b, z.device)
        if ctx is not None:
            ctx = ctx.to(z.dtype)

        def attend(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return block(x, encoder_hidden_states=ctx, return_dict=False)[0]

        x = self.conv_in(z)
        skips = []
        for i, level in enumerate(self.down):
            for j, res in enumerate(level["res"]):
                x = res(x, masks[i])
                if len(level["attn"]):
                    x = attend(level["attn"][j], x)
            skips.append(x)
            if "down" in level:
                x = level["down"](x)
        x = self.mid_res1(x, masks[-1])
        if self.mid_attn is not None:
            x = attend(self.mid_attn, x)
        x = self.mid_res2(x, masks[-1])
        for n, level in enumerate(self.up):
            i = self.n_levels - 1 - n
            if "up" in level:
                x = level["up"](x)
            x = torch.cat([x, skips[i]], dim=1)
            for j, res in enumerate(level["res"]):
                x = res(x, masks[i])
                if len(level["attn"]):
                    x = attend(level["attn"][j], x)
        return z + self.conv_out(F.silu(self.norm_out(x)))
