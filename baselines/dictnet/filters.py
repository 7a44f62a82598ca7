"""Filter parameterisations of the dictionary networks.

* :func:`fourier_basis`: a 2-D Fourier-series basis on a ``size`` x ``size`` grid, evaluated
  on ``n_rot`` rotated copies of the grid (angles 2 pi i / n_rot), with a soft circular
  window, orthonormalised jointly over all orientations. The same linear combination of
  basis functions therefore gives the same filter rotated by 2 pi i / n_rot at orientation
  i: filters built from it are rotation-equivariant by construction (OSCNet).
* :class:`SharedCoefficients`: one coefficient vector per filter, shared by all
  orientations (OSCNet).
* :class:`CoefficientNet`: per-image coefficients predicted from two images (OSCNet+).
* :func:`init_free_filters`: the initial free filters (DICDNet's dictionary and every
  variant's initialisation filters): smooth windowed random filters of unit norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def window_grid(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, window) on a ``size`` x ``size`` grid: x along columns and y along rows, both
    in [-1, 1]; the window is 1 inside the unit disc and decays as exp(-(r^2 - 1) / 0.2)
    outside (float64)."""
    t = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    r2 = x ** 2 + y ** 2
    return x, y, torch.exp(-(r2 - 1.0).clamp(min=0.0) / 0.2)


def fourier_basis(size: int = 9, frequencies: int = 5, n_rot: int = 8,
                  smooth: bool = True) -> torch.Tensor:
    """The rotated Fourier basis, (n_rot, R, size, size) float32.

    Frequencies k, l take the ``frequencies`` integer values centred on 0 (5 -> -2..2), at
    angular step v = pi (p - 1) / p; cos and sin of (k v X + l v Y) on the grid rotated by
    theta_i (X = cos x - sin y, Y = cos y + sin x), times the window. The 2 p^2 functions
    are orthonormalised over the stacked orientations (eigenvectors of their Gram matrix);
    dependent ones (cos of -k = cos of k, sin 0) are dropped, so R = p^2 for odd p.
    ``smooth`` scales each basis function by 1 / (1 + roughness / mean roughness), a
    prior that lets smooth components move faster than rough ones.
    """
    x, y, win = window_grid(size)
    p = frequencies
    freqs = torch.arange(p, dtype=torch.float64) - (p - 1) // 2
    v = math.pi * (p - 1) / p
    theta = torch.arange(n_rot, dtype=torch.float64) * (2 * math.pi / n_rot)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    xr, yr = c * x - s * y, c * y + s * x                         # (n_rot, size, size)
    fk, fl = torch.meshgrid(freqs, freqs, indexing="ij")
    phase = v * (fk.reshape(-1, 1, 1, 1) * xr + fl.reshape(-1, 1, 1, 1) * yr)  # (p^2, rot, ...)
    funcs = torch.cat([torch.cos(phase), torch.sin(phase)]) * win   # (2 p^2, rot, ., .)
    mat = funcs.reshape(funcs.shape[0], -1).T                        # (rot * size^2, 2 p^2)
    evals, evecs = torch.linalg.eigh(mat.T @ mat)
    keep = evals > 1e-8 * evals.max()
    basis = mat @ evecs[:, keep] / evals[keep].sqrt()                # orthonormal columns
    basis = basis.T.reshape(-1, n_rot, size, size).transpose(0, 1)   # (rot, R, ., .)
    if smooth:
        dy = basis.diff(dim=-2).pow(2).sum((-2, -1))
        dx = basis.diff(dim=-1).pow(2).sum((-2, -1))
        rough = (dx + dy).sum(0)                                     # (R,)
        basis = basis / (1.0 + rough / rough.mean())[None, :, None, None]
    return basis.float().contiguous()


def init_free_filters(n: int, size: int, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """(1, n, size, size) smooth random filters of unit L2 norm (random combinations of the
    unrotated Fourier basis)."""
    b = fourier_basis(size, 5, 1, smooth=True)[0]                    # (R, size, size)
    coef = torch.randn(n, b.shape[0], generator=generator)
    f = torch.einsum("nr,rij->nij", coef, b)
    f = f / f.flatten(1).norm(dim=1).clamp(min=1e-8)[:, None, None]
    return f[None].contiguous()


def filters_from(coefficients: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Coefficients (..., M, R) and basis (n_rot, R, k, k) -> filters (..., M * n_rot, k, k),
    ordered filter-major (channel m * n_rot + i is filter m at orientation i)."""
    f = torch.einsum("...mr,orij->...moij", coefficients, basis)
    return f.reshape(*f.shape[:-4], f.shape[-4] * f.shape[-3], *f.shape[-2:])


class SharedCoefficients(nn.Module):
    """OSCNet's dictionary: M filters, each one coefficient vector shared by its n_rot
    orientations. ``forward()`` -> (1, M * n_rot, k, k) filters."""

    def __init__(self, n_filters: int, basis: torch.Tensor,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.register_buffer("basis", basis, persistent=False)
        r = basis.shape[1]
        bound = math.sqrt(6.0 / r)
        self.coefficients = nn.Parameter(
            (torch.rand(n_filters, r, generator=generator) * 2 - 1) * bound)

    def forward(self) -> torch.Tensor:
        return filters_from(self.coefficients, self.basis)[None]


class CoefficientNet(nn.Module):
    """OSCNet+'s coefficient predictor: (image, artifact-affected image) -> per-image
    coefficients (B, M, R), L2-normalised per filter.

    Three 3 x 3 convolutions (2 -> h -> h -> h), global average pooling, a linear layer to
    M * R values and a ReLU.
    """

    def __init__(self, n_filters: int, rank: int, hidden: int = 6) -> None:
        super().__init__()
        self.n_filters, self.rank = n_filters, rank
        self.convs = nn.Sequential(nn.Conv2d(2, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(hidden, hidden, 3, padding=1))
        self.linear = nn.Linear(hidden, n_filters * rank)

    def forward(self, image: torch.Tensor, x_ma: torch.Tensor) -> torch.Tensor:
        h = self.convs(torch.cat([image, x_ma], dim=1)).mean(dim=(-2, -1))
        w = F.relu(self.linear(h)).reshape(-1, self.n_filters, self.rank)
        return w / (w.norm(dim=-1, keepdim=True) + 1e-6)
