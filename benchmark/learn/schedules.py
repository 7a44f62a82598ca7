"""Learning-rate schedules: the rate of each optimiser step as a pure function of the step.

No scheduler object holds state, so a resumed run continues exactly the same curve, and every
family reads its schedule from the same three names.
"""

from __future__ import annotations

import math
from typing import Any

#: ``constant``: ``lr`` throughout; ``cosine``: from ``lr`` at step 0 down to
#: ``final_ratio * lr`` at the last step; ``step``: ``lr * gamma ** (step // decay_every)``.
SCHEDULES = ("constant", "cosine", "step")


def learning_rate(schedule: str, lr: float, step: int, total: int, *,
                  final_ratio: float = 0.02, gamma: float = 0.5, decay_every: int = 1) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of a run of ``total`` steps.

    Raises:
        ValueError: an unknown ``schedule``.
    """
    if schedule == "constant" or (schedule == "cosine" and total <= 1):
        return lr
    if schedule == "step":
        return lr * gamma ** (step // decay_every)
    if schedule != "cosine":
        raise ValueError(f"learning-rate schedule {schedule!r}: must be one of "
                         f"{', '.join(SCHEDULES)}")
    t = min(step, total - 1) / (total - 1)
    lo = lr * final_ratio
    return lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * t))


def set_learning_rate(optimizer: Any, lr: float) -> None:
    """Set every parameter group of ``optimizer`` to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
