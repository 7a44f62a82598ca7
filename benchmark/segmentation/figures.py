"""Label-overlay figure of the downstream segmenter: for a few slices, the segmenter's labels
drawn over the ordinary image, a method's output, GSI and the ideal image, beside the
reference labels, so a reader sees what a method's output made the segmenter find or miss.

Images are shown in the paper's display window (level 500 HU, width 2000 HU); each class has
one colour (legend at the bottom); a caption gives the slice's IoU per present class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifactgsi.fileio import atomic_path

from ..figures import WINDOW_LEVEL_HU, WINDOW_WIDTH_HU, window_hu
from ..metrics.segmentation import CLASS_KEYS, CLASS_TITLES, slice_counts

#: RGB colours of the foreground classes: metal, L pelvis, R pelvis, L femur, R femur.
CLASS_COLOURS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.15, 0.15), (0.2, 0.45, 1.0), (0.1, 0.8, 0.9), (0.2, 0.85, 0.2), (1.0, 0.8, 0.1))


@dataclass
class OverlaySlice:
    """One figure row: a label (``"P003 slice 5"``), the images to segment by column title
    (``{"ordinary": hu, "LI": hu, "GSI": hu, "ideal": hu}``, (H, W) HU, shown in this order),
    and the reference labels (H, W) uint8 (``None`` on data without labels)."""

    label: str
    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None


def overlay_rgb(image_hu: np.ndarray, labels: np.ndarray, alpha: float = 0.45,
                level_hu: float = WINDOW_LEVEL_HU, width_hu: float = WINDOW_WIDTH_HU
                ) -> np.ndarray:
    """(H, W) HU + (H, W) labels -> (H, W, 3) float RGB in [0, 1]: the windowed image with
    each foreground class blended in its colour."""
    grey = window_hu(image_hu, level_hu, width_hu)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for c, colour in enumerate(CLASS_COLOURS, start=1):
        m = labels == c
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour)
    return rgb


def _caption(pred: np.ndarray, ref: np.ndarray | None) -> str:
    if ref is None:
        return ""
    inter, union = slice_counts(torch.from_numpy(pred[None].astype(np.int64)),
                                torch.from_numpy(ref[None].astype(np.int64)))
    parts = [f"{k.replace('_', ' ')} {float(inter[0, c] / union[0, c]):.2f}"
             for c, k in enumerate(CLASS_KEYS, start=1) if union[0, c] > 0]
    # Two lines of at most three classes keep the caption inside its cell.
    return "IoU " + ", ".join(parts[:3]) + ("\n" + ", ".join(parts[3:]) if parts[3:] else "")


def overlay_figure(segmenter: Any, slices: Sequence[OverlaySlice], path: Path | str, *,
                   title: str = "", cell_inches: float = 2.6, dpi: int = 120) -> Path:
    """Segment every image of ``slices`` with ``segmenter`` (``predict((B, 1, H, W) HU) ->
    (B, H, W)``) and write a PNG grid atomically: one row per slice, one column per image
    plus a last column with the reference labels over the first image.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not slices:
        raise ValueError("overlay_figure: no slices")
    path = Path(path)
    n_cols = max(len(s.images) + (s.labels is not None) for s in slices)
    fig = Figure(figsize=(cell_inches * n_cols, cell_inches * len(slices) + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(slices), n_cols, squeeze=False)
    for r, s in enumerate(slices):
        names = list(s.images)
        stack = torch.from_numpy(np.stack([np.asarray(s.images[n], np.float32)
                                           for n in names]))[:, None]
        preds = segmenter.predict(stack).cpu().numpy()
        cells = [(n, s.images[n], preds[j], _caption(preds[j], s.labels))
                 for j, n in enumerate(names)]
        if s.labels is not None:
            cells.append(("reference labels", s.images[names[0]], s.labels, ""))
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(cells):
                continue
            name, img, lab, cap = cells[c]
            ax.imshow(overlay_rgb(np.asarray(img), np.asarray(lab)), interpolation="nearest")
            if r == 0 or name == "reference labels":
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.text(-0.04, 0.5, s.label, transform=ax.transAxes, rotation=90,
                        ha="right", va="center", fontsize=8)
            if cap:
                ax.text(0.5, -0.02, cap, transform=ax.transAxes, ha="center", va="top",
                        fontsize=6.5)
    fig.legend(handles=[Patch(color=col, label=t) for col, t in
                        zip(CLASS_COLOURS, CLASS_TITLES, strict=True)],
               loc="lower center", ncol=5, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.99, top=0.92 if title else 0.96, bottom=0.1,
                        hspace=0.35, wspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path
