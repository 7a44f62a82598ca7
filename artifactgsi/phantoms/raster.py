"""Anti-aliased rasterisation of painted 3D structures on an axial image grid.

Every pixel is sampled at ``s x s`` sub-sample points. Structures are painted in order (a
painter's algorithm: later ones overwrite earlier ones) into one tissue id and one label id per
sub-sample; each structure is evaluated only inside the window of sub-samples covered by its
cut's bounding box. Per pixel the tissue counts give volume fractions (through the tissue
mixtures of :data:`TISSUE_MIX`) and the label counts give the majority label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..physics.geometry import ImageGrid
from .shapes import Shape
from .tissues import LABEL_CLASSES, LABEL_PRIORITY, MATERIALS, TISSUE_MIX, Label, Tissue

N_TISSUES = len(Tissue)
N_LABELS = len(LABEL_CLASSES)


@dataclass(frozen=True)
class Pose2D:
    """Rigid in-plane patient pose: ``p_scanner = R(angle) @ p_patient + (tx, ty)``.

    ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` acts on ``(x, y)`` in mm; with ``y`` pointing
    down on screen a positive angle turns the patient clockwise as displayed.
    """

    angle_deg: float = 0.0
    tx_mm: float = 0.0
    ty_mm: float = 0.0

    def to_scanner(self, x: float, y: float) -> tuple[float, float]:
        """Patient ``(x, y)`` mm -> scanner ``(x, y)`` mm."""
        a = math.radians(self.angle_deg)
        c, s = math.cos(a), math.sin(a)
        return c * x - s * y + self.tx_mm, s * x + c * y + self.ty_mm


@dataclass(frozen=True)
class Structure:
    """One painted solid: what it is made of and which label it carries."""

    shape: Shape
    tissue: Tissue
    label: Label = Label.BACKGROUND
    name: str = ""


@lru_cache(maxsize=8)
def _pixel_index(h: int, w: int, s: int) -> torch.Tensor:
    """Flat pixel index ``(H s, W s)`` int32 of every sub-sample."""
    rows = torch.arange(h, dtype=torch.int32).repeat_interleave(s)
    cols = torch.arange(w, dtype=torch.int32).repeat_interleave(s)
    return rows[:, None] * w + cols[None, :]


def _subsample_axes(grid: ImageGrid, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scanner coordinates (mm, float64) of the sub-sample columns ``(W s,)`` and rows
    ``(H s,)``: sub-sample centres of each pixel, equally spaced by ``pixel / s``."""
    off = ((torch.arange(s, dtype=torch.float64) + 0.5) / s - 0.5) * grid.pixel_mm
    xs = (grid.x_mm()[:, None] + off[None, :]).reshape(-1)
    ys = (grid.y_mm()[:, None] + off[None, :]).reshape(-1)
    return xs, ys


def paint(structures: Sequence[Structure], z_mm: float, grid: ImageGrid,
          pose: Pose2D = Pose2D(), supersample: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Paint ``structures`` in order at the axial level ``z_mm`` (patient frame).

    Returns:
        tissue ids ``(H s, W s)`` uint8 (:class:`Tissue`) and label ids ``(H s, W s)`` uint8.
    """
    s = int(supersample)
    if s < 1:
        raise ValueError(f"rasterize: supersample must be >= 1, got {supersample}")
    h, w = grid.shape
    xs, ys = _subsample_axes(grid, s)
    hs, ws = h * s, w * s
    xs0, ys0, ds = float(xs[0]), float(ys[0]), grid.pixel_mm / s
    a = math.radians(pose.angle_deg)
    c, sn = math.cos(a), math.sin(a)
    rotated = pose.angle_deg != 0.0
    # Patient coordinates of the sub-samples: p = R^T (q - t). Without rotation they separate
    # into a row and a column vector, which most shape tests keep 1D (much cheaper).
    qx, qy = xs - pose.tx_mm, ys - pose.ty_mm
    if rotated:
        X = (c * qx).float()[None, :] + (sn * qy).float()[:, None]
        Y = (c * qy).float()[:, None] - (sn * qx).float()[None, :]
    else:
        X, Y = qx.float()[None, :], qy.float()[:, None]
    tissue = torch.zeros((hs, ws), dtype=torch.uint8)
    label = torch.zeros((hs, ws), dtype=torch.uint8)
    for st in structures:
        sec = st.shape.section(z_mm)
        if sec is None:
            continue
        x0, x1, y0, y1 = sec.bbox
        if rotated:
            cx = [c * px - sn * py for px in (x0, x1) for py in (y0, y1)]
            cy = [sn * px + c * py for px in (x0, x1) for py in (y0, y1)]
            bx0, bx1 = min(cx) + pose.tx_mm, max(cx) + pose.tx_mm
            by0, by1 = min(cy) + pose.ty_mm, max(cy) + pose.ty_mm
        else:
            bx0, bx1 = x0 + pose.tx_mm, x1 + pose.tx_mm
            by0, by1 = y0 + pose.ty_mm, y1 + pose.ty_mm
        j0 = max(0, math.ceil((bx0 - xs0) / ds - 1e-6))
        j1 = min(ws, math.floor((bx1 - xs0) / ds + 1e-6) + 1)
        i0 = max(0, math.ceil((by0 - ys0) / ds - 1e-6))
        i1 = min(hs, math.floor((by1 - ys0) / ds + 1e-6) + 1)
        if j0 >= j1 or i0 >= i1:
            continue
        if rotated:
            xw, yw = X[i0:i1, j0:j1], Y[i0:i1, j0:j1]
        else:
            xw, yw = X[:, j0:j1], Y[i0:i1, :]
        m = sec.inside(xw, yw)
        tissue[i0:i1, j0:j1].masked_fill_(m, int(st.tissue))
        label[i0:i1, j0:j1].masked_fill_(m, int(st.label))
    return tissue, label


# (tissue, material, volume fraction) of every non-zero entry of the tissue mixtures
_MIX_TERMS = [(t, m, float(TISSUE_MIX[t, m])) for t in range(N_TISSUES)
              for m in range(len(MATERIALS)) if TISSUE_MIX[t, m] != 0]


def _counts(ids: torch.Tensor, pix: torch.Tensor, n: int, hw: int) -> torch.Tensor:
    """Per-pixel histogram ``(n, H W)`` of sub-sample ids (id-major: rows are contiguous)."""
    idx = ids.to(torch.int32)
    idx *= hw
    idx += pix
    return torch.bincount(idx.view(-1), minlength=n * hw).view(n, hw)


def accumulate(tissue: torch.Tensor, label: torch.Tensor, grid: ImageGrid, supersample: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-sample ids -> ``(len(MATERIALS), H, W)`` float32 fractions and ``(H, W)`` uint8
    majority labels (ties go to the higher :data:`LABEL_PRIORITY`, then the lower class)."""
    h, w = grid.shape
    s = int(supersample)
    hw = h * w
    pix = _pixel_index(h, w, s)
    tc = _counts(tissue, pix, N_TISSUES, hw)
    frac = torch.zeros(len(MATERIALS), hw)
    for t, m, v in _MIX_TERMS:
        frac[m].add_(tc[t], alpha=v)
    frac.mul_(1.0 / (s * s)).clamp_(0.0, 1.0)
    lc = _counts(label, pix, N_LABELS, hw)
    best = lc[0] * 4 + LABEL_PRIORITY[0]
    labels = torch.zeros(hw, dtype=torch.uint8)
    for k in range(1, N_LABELS):
        score = lc[k] * 4 + LABEL_PRIORITY[k]  # the priority only breaks exact count ties
        better = score > best
        best = torch.where(better, score, best)
        labels.masked_fill_(better, k)
    return frac.view(len(MATERIALS), h, w), labels.view(h, w)


def rasterize(structures: Sequence[Structure], z_mm: float, grid: ImageGrid,
              pose: Pose2D = Pose2D(), supersample: int = 3
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Volume fractions ``(len(MATERIALS), H, W)`` and labels ``(H, W)`` of one axial slice."""
    tissue, label = paint(structures, z_mm, grid, pose, supersample)
    return accumulate(tissue, label, grid, supersample)
