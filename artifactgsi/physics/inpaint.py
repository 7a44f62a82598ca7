"""Sinogram inpainting across a metal trace, shared by the scanner's metal correction and the
image-domain baselines (LI, NMAR)."""

from __future__ import annotations

import torch


def interpolate_trace(sino: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
    """Replace the trace samples of every view by linear interpolation along the channels.

    Each trace sample gets the straight line between the nearest unaffected channels on its
    left and right (in channel index); where the trace reaches a detector edge, the value of
    the one unaffected neighbour is extended (constant extrapolation). A view whose channels
    are all in the trace keeps its values (nothing to interpolate from). Samples outside the
    trace are returned unchanged (bit for bit).

    Args:
        sino: ``(..., D)`` float sinogram (channels last).
        trace: bool, same shape.

    Returns:
        Tensor like ``sino``.
    """
    if trace.shape != sino.shape:
        raise ValueError(f"interpolate_trace: trace shape {tuple(trace.shape)} differs from "
                         f"sinogram shape {tuple(sino.shape)}")
    if trace.dtype != torch.bool:
        raise ValueError(f"interpolate_trace: trace must be bool, got {trace.dtype}")
    d = sino.shape[-1]
    idx = torch.arange(d, device=sino.device).expand_as(sino)
    valid = ~trace
    # Nearest valid channel at or left of each channel (-1: none), and at or right (d: none).
    left = torch.where(valid, idx, -1).cummax(dim=-1).values
    right = torch.where(valid, idx, d).flip(-1).cummin(dim=-1).values.flip(-1)
    has_l, has_r = left >= 0, right < d
    vl = sino.gather(-1, left.clamp(0, d - 1))
    vr = sino.gather(-1, right.clamp(0, d - 1))
    span = (right - left).clamp_min(1).to(sino.dtype)
    w = (idx - left).to(sino.dtype) / span  # 0 at the left neighbour, 1 at the right one
    both = torch.lerp(vl, vr, w)
    filled = torch.where(has_l & has_r, both, torch.where(has_l, vl, vr))
    filled = torch.where(has_l | has_r, filled, sino)
    return torch.where(trace, filled, sino)
