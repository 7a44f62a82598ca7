"""Reading training data: one config / split of a built dataset as a ``datasets.Dataset``.

The files are found and checked against the dataset's manifest by
:func:`benchmark.data.resolve_source` (folders and Hub repo ids alike), so every trainer records
the manifest sha256 of the data it learnt from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.data import DatasetError, DatasetSource, resolve_source


def load_split(data: str | Path, config: str, split: str, revision: str | None = None
               ) -> tuple[Any, DatasetSource]:
    """(the ``datasets.Dataset`` of ``config`` / ``split``, where it came from).

    Raises:
        DatasetError: no such folder, repo, config or split (the available ones listed).
    """
    import datasets

    source, files = resolve_source(data, config, split, revision)
    ds = datasets.load_dataset("parquet", split=split,
                               data_files={split: [str(source.folder / f.path) for f in files]})
    return ds, source


def load_optional_split(data: str | Path, config: str, split: str, *,
                        columns: tuple[str, ...] = ()) -> Any | None:
    """The ``datasets.Dataset`` of ``config`` / ``split``, or ``None`` when the dataset has no
    such config or split (e.g. no ``clean`` patients) or it is empty.

    Raises:
        DatasetError: the config exists but lacks one of ``columns``.
    """
    try:
        ds, source = load_split(data, config, split)
    except DatasetError:
        return None
    missing = set(columns) - set(ds.column_names)
    if missing:
        raise DatasetError(f"{source.folder}: config {config!r} lacks column(s) "
                           f"{', '.join(sorted(missing))}")
    return ds if len(ds) else None


def to_int16(hu: torch.Tensor | np.ndarray) -> np.ndarray:
    """HU images (float, any shape) rounded to int16, as the dataset stores them."""
    a = hu.float().numpy() if isinstance(hu, torch.Tensor) else np.asarray(hu, np.float32)
    return np.clip(np.rint(a), -32768, 32767).astype(np.int16)
