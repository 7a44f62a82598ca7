"""Small file and cache helpers for tests: a private ``datasets`` cache, an edited copy of a
weights folder, the benchmark scripts as modules, anti-aliased disc phantoms."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def private_datasets_cache(folder: Path) -> Iterator[None]:
    """Point ``datasets`` at ``folder`` for its Arrow copies (never the user's cache)."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(folder))
        yield


def edited_weights(source: Path, dest: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of weights folder ``source`` at ``dest`` whose config.json went through
    ``edit`` (a function that changes the dict in place)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "model.safetensors", dest / "model.safetensors")
    meta = json.loads((source / "config.json").read_text(encoding="utf-8"))
    edit(meta)
    (dest / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    return dest


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def disc_fractions(grid: Any, discs: Any, ss: int = 4) -> np.ndarray:
    """Area fractions of discs ((x, y, r) in mm) on ``grid`` (an ``ImageGrid``) by ss x ss
    supersampling: (H, W), an anti-aliased phantom made without the library's rasteriser."""
    h, w = grid.shape
    o = (np.arange(ss) + 0.5) / ss - 0.5
    x = grid.x_mm().numpy()[None, :, None, None] + o[None, None, None, :] * grid.pixel_mm
    y = grid.y_mm().numpy()[:, None, None, None] + o[None, None, :, None] * grid.pixel_mm
    inside = np.zeros((h, w, ss, ss), bool)
    for cx, cy, r in discs:
        inside |= (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    return inside.mean((2, 3))
