"""Validation on held-out training patients, never on test patients.

Whole patients are held out (slices of one patient are not independent), chosen by the sha256
of their ids: deterministic, independent of row order and of the seed, and the same for every
family trained on the same data.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def patient_split(patient_ids: Sequence[str], val_fraction: float, *, where: str = "data"
                  ) -> tuple[list[int], list[int]]:
    """(train positions, validation positions) into ``patient_ids`` (one id per slice).

    ``ceil(val_fraction * patients)`` patients are held out, at least one when there are two
    or more and never all of them. With a single patient both lists hold every position and
    a ``UserWarning`` naming ``where`` says that validation is not held out.
    """
    patients = sorted(set(patient_ids), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    every = list(range(len(patient_ids)))
    if len(patients) < 2:
        warnings.warn(f"{where}: only {len(patients)} training patient(s); validation uses "
                      "the training slices (no held-out patient)", stacklevel=2)
        return every, every
    n_val = math.ceil(val_fraction * len(patients)) if val_fraction > 0 else 0
    held = set(patients[:min(max(n_val, 1), len(patients) - 1)])
    train = [i for i in every if patient_ids[i] not in held]
    val = [i for i in every if patient_ids[i] in held]
    return train, val


def evenly_spaced(items: Sequence[T], most: int | None) -> list[T]:
    """At most ``most`` of ``items``, evenly spaced from the first to the last (all of them
    when ``most`` is ``None`` or not smaller)."""
    if most is None or len(items) <= most:
        return list(items)
    pick = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in pick]
