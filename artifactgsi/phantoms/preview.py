"""A quick look at a phantom slice: pseudo-CT grey values with the label overlay."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..physics.geometry import ImageGrid
from .tissues import LABEL_CLASSES, MATERIALS

if TYPE_CHECKING:
    from .patient import Patient

# Approximate CT numbers (HU at ~70 keV) of the materials, for display only.
_DISPLAY_HU = {"adipose": -90.0, "soft_tissue": 50.0, "blood": 45.0, "lung": -740.0,
               "trabecular_bone": 250.0, "cortical_bone": 1400.0, "ti6al4v": 3000.0,
               "cocrmo": 6000.0, "steel316l": 6000.0}


def preview_png(patient: Patient, z_mm: float, path: str | Path, *, size: int = 384,
                fov_mm: float = 440.0, implant: bool = True) -> Path:
    """Write a PNG of the slice at ``z_mm`` (window 400/1000 HU, labels in colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = ImageGrid((size, size), fov_mm / size)
    frac, lab = patient.rasterize(z_mm, grid, implant=implant)
    hu = torch.tensor([_DISPLAY_HU[m] for m in MATERIALS])
    img = (frac * hu[:, None, None]).sum(0) - 1000.0 * (1.0 - frac.sum(0))
    half = fov_mm / 2
    ext = (-half, half, half, -half)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(img.numpy(), cmap="gray", vmin=-460, vmax=540, extent=ext)
    lab_np = lab.numpy()
    ax.imshow(np.ma.masked_where(lab_np == 0, lab_np), cmap="tab10", vmin=0, vmax=9, alpha=0.4,
              extent=ext, interpolation="nearest")
    present = [LABEL_CLASSES[i] for i in np.unique(lab_np) if i]
    ax.set_title(f"seed {patient.seed} {patient.body_region} {patient.implant_type} "
                 f"z={z_mm:.1f} mm\n{', '.join(present)}", fontsize=9)
    ax.set_xlabel("x (mm, patient left ->)")
    ax.set_ylabel("y (mm, posterior ->)")
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
