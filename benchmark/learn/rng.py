"""Seeds and random draws that make training reproducible and exactly resumable.

- :func:`seed_everything`: the global seeds (Python, numpy, torch) before a model is built, so
  its initial weights depend on the config's seed only.
- :func:`step_generator`: the generator of one optimiser step's draws (patches, flips,
  augmentation, noise), a pure function of a key such as (seed, step, process): a resumed run
  draws exactly what the uninterrupted one did, whatever else consumed the global generator.
- :class:`EpochSampler` / :func:`epoch_permutation`: the order of an epoch, a pure function of
  (seed, epoch), the same on every process (accelerate shards the batches).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CUDA included) with ``seed``."""
    from accelerate.utils import set_seed

    set_seed(int(seed))


def step_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from the sha256 of ``"/".join(key)``, e.g.
    ``step_generator("deep", seed, step, rank)``."""
    digest = hashlib.sha256("/".join(str(k) for k in key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of ``range(n)`` in ``epoch`` (depends on seed and epoch only)."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` that depends only on (seed, epoch): resumable, and the
    same on every process. Call :meth:`set_epoch` before each epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(epoch_permutation(self.n, self.seed, self.epoch))
