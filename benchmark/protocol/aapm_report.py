"""Tables and figures of ``aapm-ctmar-2024`` runs.

- :func:`aapm_table`: ``marbench compare`` for runs of this protocol: one row per method, the
  eight sub-scores and the final score (mean over scored slices), optionally with the
  challenge's published rows beside them (``--paper``);
- :func:`save_structures_figure`: the protocol's structures drawn on one slice;
- :func:`save_run_figure`: uncorrected | anchor (NMAR) | method | reference on that slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..compare import ComparisonTable, TableCell
from ..results import Results
from .aapm import SCORE_KEYS
from .aapm_structures import CaseStructures

__all__ = ["PUBLISHED", "aapm_table", "save_run_figure", "save_structures_figure"]

#: Column titles of the score columns, in the challenge's order.
SCORE_LABELS = {"aapm_score_ct": "CT#", "aapm_score_noise": "noise",
                "aapm_score_sharpness": "sharpness", "aapm_score_streak": "streak",
                "aapm_score_ssim": "SSIM", "aapm_score_metal": "metal",
                "aapm_score_bone": "bone", "aapm_score_proton": "proton",
                "aapm_score": "final"}

#: The challenge's published rows (Haneda et al., Med Phys 2025): final scores of the top
#: entries and the NMAR reference with its sub-scores; 29 clinical cases, lower is better.
PUBLISHED: list[tuple[str, dict[str, float]]] = [
    ("AAPM CT-MAR 2024: winner (dual-domain closed loop)", {"aapm_score": 0.96}),
    ("AAPM CT-MAR 2024: 2nd (NMAR + implicit neural prior)", {"aapm_score": 0.98}),
    ("AAPM CT-MAR 2024: 3rd (segmentation + LI + DICDNet + inpainting)",
     {"aapm_score": 0.99}),
    ("AAPM CT-MAR 2024: best image-domain entry", {"aapm_score": 1.05}),
    ("AAPM CT-MAR 2024: NMAR reference", {
        "aapm_score_ct": 2.03, "aapm_score_noise": 1.06, "aapm_score_sharpness": 0.58,
        "aapm_score_streak": 1.99, "aapm_score_ssim": 2.03, "aapm_score_metal": 2.06,
        "aapm_score_bone": 2.05, "aapm_score_proton": 2.76, "aapm_score": 1.82}),
]


def _comparison(r: Results) -> str:
    avail = [k for k, c in r.comparisons.items() if c.available]
    if len(avail) != 1:
        raise ValueError(f"{r.method.name}: an aapm-ctmar-2024 run has one comparison, "
                         f"found {avail}")
    return avail[0]


def aapm_table(runs: Sequence[tuple[str, Results]], paper: bool = False) -> ComparisonTable:
    """One row per run (mean over its scored slices of each sub-score and the final score),
    then, with ``paper``, the challenge's published rows (numbers not comparable: see
    docs/protocol.md). The lowest finite mean of each column among the runs is flagged."""
    if not runs:
        raise ValueError("aapm_table: no results given")
    warnings: list[str] = []
    first_label, first = runs[0]
    for label, r in runs:
        if r.protocol.version != "aapm-ctmar-2024":
            raise ValueError(f"{label}: protocol {r.protocol.version!r}; runs of different "
                             "protocols cannot share a table")
    for label, r in runs[1:]:
        for what, a, b in (("dataset manifest", first.dataset.manifest_sha256,
                            r.dataset.manifest_sha256),
                           ("split", first.dataset.split, r.dataset.split),
                           ("scored slices", first.dataset.n_slices_scored,
                            r.dataset.n_slices_scored),
                           ("reference", _comparison(first), _comparison(r))):
            if a != b:
                warnings.append(f"{label}: {what} {b!r} differs from {first_label}'s {a!r}; "
                                "these numbers are not comparable")
    keys = list(SCORE_KEYS)
    rows: list[tuple[str, list[TableCell]]] = []
    for _label, r in runs:
        comp = r.comparisons[_comparison(r)]
        cells = []
        for k in keys:
            s = comp.summary.get(k)
            cells.append(TableCell(mean=None) if s is None else TableCell(mean=s.mean,
                                                                          std=s.std))
        rows.append((r.method.name + (f" v{r.method.version}" if r.method.version else ""),
                     cells))
    for j in range(len(keys)):
        finite = [c[j].mean for _, c in rows if c[j].mean is not None
                  and math.isfinite(c[j].mean)]
        if len(finite) >= 2:
            best = min(finite)
            for _, c in rows:
                c[j].best = c[j].mean == best
    if paper:
        for name, vals in PUBLISHED:
            rows.append((name, [TableCell(mean=vals[k]) if k in vals else
                                TableCell(mean=None, note="—") for k in keys]))
        warnings.append("the challenge's rows are 29 clinical cases at 512 x 512 with "
                        "hand-drawn structures; this toolkit's rows are its own data with "
                        "derived structures: compare the spread, not the numbers")
    return ComparisonTable(headers=[SCORE_LABELS[k] for k in keys],
                           higher_is_better=[False] * len(keys),
                           groups=["0-4"] * len(keys), rows=rows,
                           clinical_reference=_comparison(first).rsplit("_vs_", 1)[1],
                           warnings=warnings)


# ----------------------------------------------------------------------------- figures

#: (structure, colour, label) drawn by :func:`save_structures_figure`.
_LAYERS = (("body", "#ffffff", "patient outline"), ("metal_region", "#ffb000", "metal region"),
           ("metal", "#ff2020", "metal"), ("noise_roi", "#00e0ff", "noise ROI"),
           ("edge_bone", "#40ff40", "bone edge ROI"), ("edge_fat", "#ff60ff", "fat edge ROI"),
           ("streak_roi", "#ffff00", "streak ROI"), ("target", "#ff8040", "proton target"))


def _window(img: np.ndarray, level: float = 40.0, width: float = 800.0) -> np.ndarray:
    lo = level - width / 2
    return np.clip((np.asarray(img, np.float64) - lo) / width, 0.0, 1.0)


def save_structures_figure(reference_hu: np.ndarray, s: CaseStructures, path: Path,
                           title: str = "") -> Path:
    """The reference (window L 40 / W 800 HU) with every structure outlined and the beam
    paths shaded, one panel; PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from artifactgsi.fileio import atomic_path

    fig = Figure(figsize=(7.5, 6.0))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.04, 0.66, 0.88))
    rgb = np.repeat(_window(reference_hu)[..., None], 3, axis=2)
    beam_colours = ("#3080ff", "#30c0a0", "#a060ff", "#c0c030")
    for j, beam in enumerate(s.beams):
        c = np.array(to_rgb(beam_colours[j % len(beam_colours)]))
        rgb[beam] = 0.75 * rgb[beam] + 0.25 * c
    ax.imshow(rgb, interpolation="nearest")
    handles = []
    for name, colour, label in _LAYERS:
        m = getattr(s, name)
        if m.any():
            ax.contour(m.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)
            handles.append(Patch(edgecolor=colour, facecolor="none", label=label))
    for j, angle in enumerate(s.beam_angles_deg):
        if s.beams[j].any():
            handles.append(Patch(color=beam_colours[j % len(beam_colours)], alpha=0.5,
                                 label=f"beam path {angle:g} deg"))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.text(0.70, 0.08, f"metal threshold {s.metal_threshold_hu:.0f} HU\n"
             f"pixel {s.pixel_mm:.3g} mm\nwindow L 40 / W 800 HU"
             + ("\n" + "; ".join(s.notes) if s.notes else ""), fontsize=7)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def save_run_figure(case: Any, label: str, method_name: str, anchor_name: str, kind: str,
                    path: Path) -> Path:
    """uncorrected | anchor | method | reference on the figure slice, with their raw values
    and the method's final score (``case``: the run's figure case, with ``images``,
    ``anchors`` and ``values``)."""
    from ..figures import PanelImage, PanelRow, save_panel

    def cap(v: dict[str, float]) -> str:
        return (f"RMSE {v['aapm_ct_rmse_hu']:.1f} HU, SSIM {v['aapm_ssim']:.3f}, "
                f"streak {v['aapm_streak_hu']:.0f} HU")

    cells = [PanelImage("uncorrected (score-4 anchor)", case.images["uncorrected"],
                        cap(case.anchors.uncorrected)),
             PanelImage(f"{anchor_name} (score-2 anchor)", case.images[anchor_name],
                        cap(case.anchors.anchor)),
             PanelImage(f"{method_name}: aapm score {case.values['aapm_score']:.2f}",
                        case.images["method"], cap(case.values)),
             PanelImage(kind, case.images[kind])]
    return save_panel([PanelRow(label, cells)], path, cell_inches=3.2,
                      title=f"{method_name} under aapm-ctmar-2024 (slice with the most metal)")
