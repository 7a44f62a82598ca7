"""Figures of a benchmark run: a Fig. 4-style panel (paper Fig. 4).

One row per slice, columns ordinary | method | GSI [| ideal], every image shown in the same
CT window (default level 500 HU, width 2000 HU, i.e. -500 ... 1500 HU: bone and metal streaks
visible, soft tissue grey). A caption under an image carries its scores.

Matplotlib is used through its object API with the Agg canvas (no pyplot state), so figures
can be made from any thread and never open a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artifactgsi.fileio import atomic_path

#: The paper's display window for Fig. 4, HU.
WINDOW_LEVEL_HU = 500.0
WINDOW_WIDTH_HU = 2000.0


def window_hu(image_hu: np.ndarray, level_hu: float = WINDOW_LEVEL_HU,
              width_hu: float = WINDOW_WIDTH_HU) -> np.ndarray:
    """(H, W) HU -> (H, W) float in [0, 1]: ``level - width/2`` is black, ``level + width/2``
    white, linear in between."""
    if width_hu <= 0:
        raise ValueError(f"window width must be > 0 HU, got {width_hu}")
    lo = level_hu - width_hu / 2.0
    return np.clip((np.asarray(image_hu, np.float64) - lo) / width_hu, 0.0, 1.0)


@dataclass
class PanelImage:
    """One cell: column title, (H, W) HU image, optional caption (e.g. its scores)."""

    title: str
    image_hu: np.ndarray
    caption: str = ""


@dataclass
class PanelRow:
    """One row: a label (e.g. ``"P001 slice 12"``) and its cells, left to right."""

    label: str
    images: list[PanelImage] = field(default_factory=list)


def save_panel(rows: Sequence[PanelRow], path: Path | str, *, title: str = "",
               level_hu: float = WINDOW_LEVEL_HU, width_hu: float = WINDOW_WIDTH_HU,
               cell_inches: float = 2.6, dpi: int = 120) -> Path:
    """Draw ``rows`` as a grid and write a PNG atomically (temporary name, then rename).

    Rows may have different numbers of cells (e.g. an ideal image only for simulated
    slices); empty cells are left blank.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("save_panel: no rows to draw")
    n_rows = len(rows)
    n_cols = max(len(r.images) for r in rows)
    fig = Figure(figsize=(cell_inches * n_cols, cell_inches * n_rows + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row.images):
                ax.set_axis_off()
                continue
            cell = row.images[j]
            ax.imshow(window_hu(cell.image_hu, level_hu, width_hu), cmap="gray", vmin=0.0,
                      vmax=1.0, interpolation="nearest")
            above = rows[i - 1].images if i else []
            if j >= len(above) or above[j].title != cell.title:
                ax.set_title(cell.title, fontsize=9)
            if cell.caption:
                ax.set_xlabel(cell.caption, fontsize=7)
            if j == 0:
                ax.set_ylabel(row.label, fontsize=8)
    lo, hi = level_hu - width_hu / 2, level_hu + width_hu / 2
    fig.suptitle((title + "\n" if title else "") +
                 f"window L {level_hu:g} / W {width_hu:g} HU ([{lo:g}, {hi:g}])", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
