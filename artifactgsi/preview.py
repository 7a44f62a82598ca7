"""PNG panels of a raw patient folder: ordinary | GSI | clean | labels at the paper's display
window (level 500 HU, width 2000 HU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WINDOW_LEVEL_HU = 500.0
WINDOW_WIDTH_HU = 2000.0


def _read_series(folder: Path):
    import SimpleITK as sitk

    if not folder.is_dir():  # checked first: ITK would print warnings before failing
        raise FileNotFoundError(f"{folder}: no such folder (a raw patient folder holds "
                                "ordinary/ and, for implant patients, gsi/)")
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    if not files:
        raise FileNotFoundError(f"{folder}: no DICOM series found")
    reader.SetFileNames(files)
    return reader.Execute()


def preview_patient(patient_dir: Path, out_png: Path, slice_index: int | None = None) -> Path:
    """Write a 1 x 4 panel for one slice of the GSI grid (default: the slice with most metal).

    The ordinary series is resampled onto the GSI grid with the DICOM geometry only (no
    registration), so residual misalignment from patient motion stays visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise FileNotFoundError(f"{patient_dir}: no such patient folder")
    ordinary = _read_series(patient_dir / "ordinary")
    has_gsi = (patient_dir / "gsi").is_dir()
    ref = _read_series(patient_dir / "gsi") if has_gsi else ordinary
    ordinary_on_ref = sitk.Resample(ordinary, ref, sitk.Transform(), sitk.sitkLinear, -1024.0)
    panels = [("ordinary (on GSI grid)", sitk.GetArrayFromImage(ordinary_on_ref))]
    labels = None
    if has_gsi:
        panels.append(("GSI", sitk.GetArrayFromImage(ref)))
        clean = patient_dir / "clean.nii.gz"
        if clean.exists():
            clean_hu = sitk.GetArrayFromImage(sitk.ReadImage(str(clean)))
            panels.append(("clean (no implant)", clean_hu))
        lab = patient_dir / "labels.nii.gz"
        if lab.exists():
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(lab)))
    vol = panels[-1][1] if labels is None else panels[1][1]
    if slice_index is None:
        metal = (vol > 2000).reshape(vol.shape[0], -1).sum(1)
        slice_index = int(np.argmax(metal))
    slice_index = int(np.clip(slice_index, 0, vol.shape[0] - 1))
    lo = WINDOW_LEVEL_HU - WINDOW_WIDTH_HU / 2
    hi = WINDOW_LEVEL_HU + WINDOW_WIDTH_HU / 2
    n = len(panels) + (labels is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, (title, v) in zip(axes, panels, strict=False):
        ax.imshow(v[min(slice_index, v.shape[0] - 1)], cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
    if labels is not None:
        ax = axes[len(panels)]
        ax.imshow(panels[1][1][slice_index], cmap="gray", vmin=lo, vmax=hi)
        lab = np.ma.masked_equal(labels[slice_index], 0)
        ax.imshow(lab, cmap="tab10", vmin=0, vmax=9, alpha=0.6, interpolation="nearest")
        ax.set_title("labels", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{patient_dir.name}  slice {slice_index}  (WL {WINDOW_LEVEL_HU:g} / "
                 f"WW {WINDOW_WIDTH_HU:g} HU)", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png
