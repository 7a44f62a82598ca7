"""An exponential moving average of a model's weights, with ``ema-pytorch``.

``ema(model, decay)`` copies the weights at the first update, then after step ``s`` (counted
from that copy) keeps ``decay_s * ema + (1 - decay_s) * weights`` with the warm-up
``decay_s = min(decay, 1 - (1 + s) ** (-2/3))`` (the schedule of diffusers' ``EMAModel`` with
``use_ema_warmup`` and of ``ema-pytorch``'s defaults), or ``decay_s = decay`` without warm-up.
The averaged copy is ``.ema_model``; ``state_dict()`` holds it and the step count, so a
resumed run continues the same average.
"""

from __future__ import annotations

from torch import nn


def ema(model: nn.Module, decay: float, warmup: bool = True) -> nn.Module:
    """An ``ema_pytorch.EMA`` of ``model`` (not holding ``model`` itself in its state),
    updated at every call of ``.update()``."""
    from ema_pytorch import EMA

    return EMA(model, beta=decay, update_after_step=0, update_every=1, inv_gamma=1.0,
               power=2 / 3, min_value=0.0 if warmup else decay, include_online_model=False)
