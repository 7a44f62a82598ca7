"""Training data for LGA: (2k+1)-slice volumes from a built ArtifactGSI dataset (docs/dataset.md).

* :class:`PairVolumes`: rows of the ``pairs`` config -> ordinary and GSI volumes around a
  slice (edge slices repeated, as ``PairsSplit.neighbour_rows``), the centre metal mask and
  the implant type; images resampled to ``image_size`` and scaled to [-1, 1].
* :class:`CleanVolumes`: the ``clean`` config (no-implant ordinary slices) for D_g.
* :class:`VAEVolumes`: pairs plus the volume D_g learns from: a clean volume with probability
  clean_fraction / (gsi_fraction + clean_fraction), else the pair's GSI volume.

The held-out validation patients and the epoch order come from the training kit
(:func:`benchmark.learn.split.patient_split`, :class:`benchmark.learn.rng.EpochSampler`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from baselines.lga.config import LGAConfig, hu_to_pm1, implant_index
from baselines.lga.model import resize
from benchmark.data import PairsSplit
from benchmark.learn.data import load_optional_split


def _to_unit(arr: np.ndarray, size: int) -> torch.Tensor:
    """(S, H, W) HU (any int/float dtype) -> (S, size, size) float32 in [-1, 1]."""
    x = hu_to_pm1(torch.from_numpy(np.asarray(arr, np.float32)))
    if x.shape[-2:] != (size, size):
        x = resize(x[None], size)[0]
    return x


#: Datasets whose items together take at most this many bytes keep them in memory after the
#: first read: reading a volume from Arrow and resampling it is ~15 % of a toy-scale training
#: step on 2 CPU cores, and every epoch reads the same items. Full-scale data (512 px) is
#: larger and is read each time.
CACHE_BYTES = 1 << 30

_Item = TypeVar("_Item")


def _cached(cache: dict[int, _Item] | None, i: int, read: Callable[[int], _Item]) -> _Item:
    """Item ``i`` from ``cache`` (read and kept on first use); ``read(i)`` when no cache."""
    if cache is None:
        return read(i)
    if i not in cache:
        cache[i] = read(i)
    return cache[i]


class PairVolumes(Dataset):
    """Volumes around the given rows of a ``pairs`` split.

    Item: ``ordinary``, ``gsi`` (2k+1, S, S) float32 in [-1, 1]; ``mask`` (1, S, S) metal
    fraction in [0, 1]; ``implant`` long; ``patient`` long (index in ``self.patients``);
    ``position`` long (slice index). Items are kept in memory when all of them fit in
    :data:`CACHE_BYTES` (the same values either way; a new dict each call).
    """

    def __init__(self, split: PairsSplit, rows: Sequence[int], config: LGAConfig) -> None:
        self.split = split
        self.rows = [int(r) for r in rows]
        self.k = config.neighbour_slices
        self.size = config.image_size
        self.patients = sorted({split.slice_id(r)[0] for r in self.rows})
        self._pidx = {p: i for i, p in enumerate(self.patients)}
        item_bytes = (2 * (2 * self.k + 1) + 1) * self.size ** 2 * 4
        self._cache: dict[int, dict[str, torch.Tensor]] | None = (
            {} if len(self.rows) * item_bytes <= CACHE_BYTES else None)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        # A new dict: callers add keys (VAEVolumes); the tensors themselves are not edited.
        return dict(_cached(self._cache, i, self._read))

    def _read(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i]
        b = self.split.batch(self.split.neighbour_rows(row, self.k))
        ordinary = _to_unit(b.input.ordinary[:, 0].numpy(), self.size)
        gsi = _to_unit(b.gsi_hu[:, 0].numpy(), self.size)
        mask = b.input.metal_mask[self.k:self.k + 1].float()          # (1, 1, H, W)
        if mask.shape[-2:] != (self.size, self.size):
            mask = F.interpolate(mask, size=(self.size, self.size), mode="area")
        pid, sidx = self.split.slice_id(row)
        return {"ordinary": ordinary, "gsi": gsi, "mask": mask[0],
                "implant": torch.tensor(implant_index(b.input.implant_type[self.k])),
                "patient": torch.tensor(self._pidx[pid]), "position": torch.tensor(sidx)}


class CleanVolumes(Dataset):
    """Volumes of the ``clean`` config (ordinary slices of patients without implant).

    Item: (2k+1, S, S) float32 in [-1, 1].
    """

    def __init__(self, dataset: Any, config: LGAConfig) -> None:
        table = dataset.data
        pids = [str(p) for p in table.column("patient_id").to_pylist()]
        sidx = [int(s) for s in table.column("slice_index").to_pylist()]
        self._np = dataset.with_format("numpy", columns=["ordinary"], dtype=None)
        by_patient: dict[str, list[tuple[int, int]]] = {}
        for r, (p, s) in enumerate(zip(pids, sidx, strict=True)):
            by_patient.setdefault(p, []).append((s, r))
        self._stacks = [[r for _, r in sorted(v)] for _, v in sorted(by_patient.items())]
        self._items = [(p, j) for p, rows in enumerate(self._stacks) for j in range(len(rows))]
        self.k = config.neighbour_slices
        self.size = config.image_size
        fits = len(self._items) * (2 * self.k + 1) * self.size ** 2 * 4 <= CACHE_BYTES
        self._cache: dict[int, torch.Tensor] | None = {} if fits else None

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return _cached(self._cache, i, self._read)

    def _read(self, i: int) -> torch.Tensor:
        p, j = self._items[i]
        rows = self._stacks[p]
        need = [rows[min(max(j + d, 0), len(rows) - 1)] for d in range(-self.k, self.k + 1)]
        return _to_unit(np.asarray(self._np[need]["ordinary"]), self.size)


def open_clean(data: str | Path, config: LGAConfig) -> CleanVolumes | None:
    """The ``clean`` config's train split, or ``None`` when the dataset has none."""
    ds = load_optional_split(data, "clean", "train",
                             columns=("patient_id", "slice_index", "ordinary"))
    return CleanVolumes(ds, config) if ds is not None else None


class VAEVolumes(Dataset):
    """Pairs plus ``g`` (2k+1, S, S): the volume D_g reconstructs (GSI or clean).

    The choice is random but reproducible: it depends on (seed, epoch, index) only, so a
    resumed run and every data-loader worker make the same choices.
    """

    def __init__(self, pairs: PairVolumes, clean: CleanVolumes | None, config: LGAConfig
                 ) -> None:
        self.pairs = pairs
        self.clean = clean
        total = config.gsi_fraction + config.clean_fraction
        self.p_clean = config.clean_fraction / total if clean is not None else 0.0
        self.seed = config.seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.pairs[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.clean is not None and rng.random() < self.p_clean:
            item["g"] = self.clean[int(rng.integers(len(self.clean)))]
            item["g_is_clean"] = torch.tensor(True)
        else:
            item["g"] = item["gsi"]
            item["g_is_clean"] = torch.tensor(False)
        return item
