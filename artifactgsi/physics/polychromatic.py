"""Polychromatic energy-integrating measurement, water beam-hardening correction and
projection-domain two-material decomposition (the per-ray physics; geometry lives in the
projector).

Line integrals are given per material in mm of path length: ``L`` of shape ``(..., M)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .materials import mu_matrix
from .spectra import TubeSpec, cache_dir, energy_grid_kev, spectrum

_CHUNK = 1 << 17  # rays per chunk: bounds the (rays, energies) intermediate to ~ 40 MB
_MIN_ROWS = 256  # rays per product at least when the empty rays are left out


@dataclass(frozen=True)
class Beam:
    """A tube spectrum seen by an energy-integrating detector.

    ``photon_weights`` (E,) is the normalised photon spectrum; ``signal_weights`` (E,) is the
    detector signal per energy (photons x energy, normalised), as for a scintillator that
    integrates deposited energy. Detector absorption efficiency is taken as 1.
    """

    spec: TubeSpec

    @property
    def photon_weights(self) -> np.ndarray:
        return spectrum(self.spec)

    @property
    def signal_weights(self) -> np.ndarray:
        w = spectrum(self.spec) * energy_grid_kev()
        return w / w.sum()


def _transmission(lines_mm: torch.Tensor, mu: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_E w_E exp(-sum_m mu_mE L_m) for rays ``(R, M)``, chunked, -> ``(R, K)`` for K weights.

    Rays that cross nothing but the last material (beside the body: often half of a sinogram;
    the last material is the bowtie when :func:`~artifactgsi.physics.bowtie.measure_filtered`
    appends it, else the path is empty) depend on that one path length only: their
    transmission is computed once per distinct length (one per detector channel at most) and
    the products run over the other rays. A row's products do not depend on the other rows of
    a large product, so the result is bit-identical to the product over every ray. (Products
    of a handful of rows take another BLAS kernel whose rounding differs, so every product
    here has at least ``_MIN_ROWS`` rows, padded with empty rays, as over every ray.)
    """
    n_rays, n_mat = lines_mm.shape
    if n_rays < 8 * _MIN_ROWS:
        return _transmission_rows(lines_mm, mu, weights)
    tail = n_rays % _CHUNK
    if 0 < tail < _MIN_ROWS:  # the product over every ray ends with a small one: keep it
        return torch.cat([_transmission(lines_mm[:-tail], mu, weights),
                          _transmission_rows(lines_mm[-tail:], mu, weights)])
    lone = ~lines_mm[:, :-1].ne(0).any(1)  # rays through the last material at most
    n_lone = int(lone.sum())
    if n_lone < 0.125 * n_rays:
        return _transmission_rows(lines_mm, mu, weights)
    out = lines_mm.new_empty(n_rays, weights.shape[1])
    values, inverse = torch.unique(lines_mm[lone, -1], return_inverse=True)
    distinct = lines_mm.new_zeros(values.numel(), n_mat)
    distinct[:, -1] = values
    out[lone] = _transmission_padded(distinct, mu, weights)[inverse]
    if n_lone < n_rays:
        out[~lone] = _transmission_padded(lines_mm[~lone], mu, weights)
    return out


def _transmission_padded(lines_mm: torch.Tensor, mu: torch.Tensor, weights: torch.Tensor
                         ) -> torch.Tensor:
    """:func:`_transmission_rows` with the last product padded to ``_MIN_ROWS`` rows."""
    n = lines_mm.shape[0]
    tail = n % _CHUNK  # the last product's rows
    if 0 < tail < _MIN_ROWS:
        lines_mm = torch.cat([lines_mm, lines_mm.new_zeros(_MIN_ROWS - tail,
                                                           lines_mm.shape[1])])
    return _transmission_rows(lines_mm, mu, weights)[:n]


def _transmission_rows(lines_mm: torch.Tensor, mu: torch.Tensor, weights: torch.Tensor
                       ) -> torch.Tensor:
    out = []
    for chunk in lines_mm.split(_CHUNK):
        t = torch.exp(-(chunk @ mu))  # (r, E)
        out.append(t @ weights)  # (r, K)
    return torch.cat(out) if out else lines_mm.new_zeros((0, weights.shape[1]))


def measure(
    lines_mm: torch.Tensor,
    materials: tuple[str, ...],
    beam: Beam,
    photons_per_ray: float | None,
    electronic_noise_photons: float = 0.0,
    generator: torch.Generator | None = None,
    aperture: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scatter: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Log-normalised projection ``p = -ln(I / I0)`` of an energy-integrating detector.

    Args:
        lines_mm: ``(..., M)`` path length in mm through each of ``materials``.
        materials: material names, length M.
        beam: the tube spectrum.
        photons_per_ray: incident photons per detector reading (air scan); ``None`` for a
            noise-free measurement.
        electronic_noise_photons: SD of additive Gaussian electronic noise, in units of the
            signal of one photon of the incident beam's mean energy.
        generator: random generator (determinism for a seed).
        aperture: sub-rays to readings (``physics/blur.py``): maps the noise-free photon and
            energy fractions of the rays, ``(..., 2)``, to those of the readings (an
            intensity average over each reading's sub-rays); ``None``: one ray per reading.
        scatter: scatter signal of each reading (``physics/scatter.py``), in units of the
            incident beam's signal, from the readings' noise-free primary signal ``(...)``;
            scattered photons add to the reading (Poisson, at the incident mean energy).

    Returns:
        ``(...)`` float tensor. Noise: the number of detected photons is Poisson with the
        expected count; each carries the mean energy of the transmitted spectrum (this drops the
        Swank factor of energy integration, a few percent of variance); electronic noise is
        added; readings are floored at 0.25 photon-equivalents before the log, as scanners do,
        so photon-starved rays behind metal come out as the clipped, noisy values that make
        dark streaks.
    """
    shape = lines_mm.shape[:-1]
    dev, dt = lines_mm.device, torch.float64
    energies = energy_grid_kev()
    keep = beam.photon_weights > 0  # bins above the tube potential carry no photons
    e_k = energies[keep]
    # Transmission sums in float32 (relative error ~1e-7, far below quantum noise); counts and
    # logs in float64.
    mu = torch.as_tensor(mu_matrix(materials, e_k), dtype=torch.float32, device=dev)
    s = torch.as_tensor(beam.photon_weights[keep], dtype=torch.float32, device=dev)
    w = torch.stack([s, s * torch.as_tensor(e_k, dtype=torch.float32, device=dev)], dim=1)
    flat = lines_mm.reshape(-1, len(materials)).to(torch.float32)
    tr = _transmission(flat, mu, w).to(dt)
    if aperture is not None:
        tr = aperture(tr.reshape(*shape, 2))
        shape = tr.shape[:-1]
        tr = tr.reshape(-1, 2)
    n_frac, e_frac = tr[:, 0], tr[:, 1]  # photon fraction, photon-energy fraction
    mean_e0 = float((beam.photon_weights * energies).sum())
    sc = None if scatter is None else scatter((e_frac / mean_e0).reshape(shape)).reshape(-1)
    if photons_per_ray is None:
        ratio = e_frac / mean_e0 if sc is None else e_frac / mean_e0 + sc
        return (-torch.log(ratio.clamp_min(1e-30))).reshape(shape).to(lines_mm.dtype)
    expected = photons_per_ray * n_frac
    counts = torch.poisson(expected, generator=generator)
    mean_e = e_frac / n_frac.clamp_min(1e-300)  # mean energy of the transmitted photons
    signal = counts * mean_e / mean_e0  # in incident-photon equivalents
    if sc is not None:
        signal = signal + torch.poisson(photons_per_ray * sc.clamp_min(0), generator=generator)
    if electronic_noise_photons > 0:
        signal = signal + electronic_noise_photons * torch.randn(
            signal.shape, generator=generator, dtype=dt, device=dev)
    ratio = signal.clamp_min(0.25) / photons_per_ray
    return (-torch.log(ratio)).reshape(shape).to(lines_mm.dtype)


@dataclass(frozen=True)
class WaterBHC:
    """Water beam-hardening correction: polynomial p_corr = sum_k c_k p^k (k = 1..degree).

    Fitted, as a scanner's calibration does, to noise-free measurements of water slabs from 0
    to ``max_water_mm``, so that corrected projections are linear in water thickness with slope
    ``mu_water_eff`` (the attenuation of water at zero thickness for this beam, 1/mm). Bone and
    metal stay uncorrected: their beam hardening shows up as streaks and cupping.
    """

    beam: Beam
    degree: int = 5
    max_water_mm: float = 600.0

    @property
    def mu_water_eff(self) -> float:
        return _bhc_fit(self.beam.spec, self.degree, self.max_water_mm)[1]

    @property
    def coefficients(self) -> np.ndarray:
        return _bhc_fit(self.beam.spec, self.degree, self.max_water_mm)[0]

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        c = self.coefficients
        out = torch.zeros_like(p)
        for k in range(len(c), 0, -1):  # Horner
            out = (out + float(c[k - 1])) * p
        return out


@lru_cache(maxsize=8)
def _bhc_fit(spec: TubeSpec, degree: int, max_water_mm: float) -> tuple[np.ndarray, float]:
    beam = Beam(spec)
    t = torch.linspace(0, max_water_mm, 241, dtype=torch.float64)[:, None]
    p = measure(t, ("water",), beam, None).numpy()
    e = energy_grid_kev()
    mu_w = mu_matrix(("water",), e)[0]
    mu_eff = float((beam.signal_weights * mu_w).sum())  # d p / d L at L = 0
    target = mu_eff * t[:, 0].numpy()
    a = np.stack([p ** k for k in range(1, degree + 1)], axis=1)
    coef, *_ = np.linalg.lstsq(a, target, rcond=None)
    return coef, mu_eff


@dataclass(frozen=True)
class Decomposer:
    """Two-material (basis) decomposition of a dual-kVp ray pair, by a cached inverse table.

    The forward model maps basis thicknesses ``(a_1, a_2)`` in mm to the noise-free log
    projections ``(p_low, p_high)`` of the two beams. Its inverse is tabulated once on a
    regular grid of ``(p_low, p_high)`` by damped Newton iterations on the exact forward model
    (vectorised over the table), cached on disk; each measured ray is then decomposed by
    bilinear interpolation in that table. Rays outside the table (photon starvation behind
    metal) are clamped to its edge, which is how residual metal artifacts arise in GSI too.
    """

    low: TubeSpec
    high: TubeSpec
    basis: tuple[str, str] = ("water", "cortical_bone")
    p_max: float = 16.0
    table_size: int = 256

    def table(self) -> torch.Tensor:
        """``(2, T, T)`` float64: basis thicknesses (mm) at ``p_low`` (rows), ``p_high`` (cols)."""
        return torch.from_numpy(_inverse_table(self))

    @property
    def p_min(self) -> float:
        return -0.5

    def __call__(self, p_low: torch.Tensor, p_high: torch.Tensor) -> torch.Tensor:
        """``(...)``, ``(...)`` log projections -> ``(..., 2)`` basis thicknesses in mm."""
        tab = self.table().to(device=p_low.device, dtype=torch.float32)
        scale = 2.0 / (self.p_max - self.p_min)
        gx = (p_high.float() - self.p_min) * scale - 1.0  # grid_sample x indexes columns
        gy = (p_low.float() - self.p_min) * scale - 1.0
        grid = torch.stack([gx, gy], dim=-1).reshape(1, 1, -1, 2)
        a = torch.nn.functional.grid_sample(tab[None], grid, mode="bilinear",
                                            padding_mode="border", align_corners=True)
        return a[0, :, 0, :].T.reshape(*p_low.shape, 2)

    def vmi(self, a: torch.Tensor, kev: float) -> torch.Tensor:
        """Virtual monochromatic line integral at ``kev`` from basis thicknesses ``(..., 2)``."""
        mu = torch.as_tensor(mu_matrix(self.basis, np.array([kev]))[:, 0], dtype=a.dtype,
                             device=a.device)
        return a @ mu


def _inverse_table(d: Decomposer) -> np.ndarray:
    key = hashlib.sha256(json.dumps([repr(d), "v1"]).encode()).hexdigest()[:16]
    path = cache_dir() / "decomposition" / f"{key}.npy"
    if path.exists():
        return np.load(path)
    e = energy_grid_kev()
    mu = torch.as_tensor(mu_matrix(d.basis, e), dtype=torch.float64)  # (2, E)
    beams = [Beam(d.low), Beam(d.high)]
    sw = [torch.as_tensor(b.signal_weights, dtype=torch.float64) for b in beams]
    pl = torch.linspace(d.p_min, d.p_max, d.table_size, dtype=torch.float64)
    ph = torch.linspace(d.p_min, d.p_max, d.table_size, dtype=torch.float64)
    target = torch.stack(torch.meshgrid(pl, ph, indexing="ij"), dim=-1).reshape(-1, 2)
    # Start from the solution of the linear model with zero-thickness effective attenuation.
    m0 = torch.stack([(w[:, None] * mu.T).sum(0) for w in sw])  # (2 beams, 2 basis)
    a = target @ torch.linalg.inv(m0).T
    logw = [torch.log(w.clamp_min(1e-300)) for w in sw]
    eye = torch.eye(2, dtype=torch.float64)
    active = torch.arange(a.shape[0])
    for _ in range(80):
        f, jac = [], []
        aa = a[active]
        for lw in logw:
            z = lw - aa @ mu  # (n, E); log-sum-exp keeps far-out corners finite
            f.append(-torch.logsumexp(z, dim=1))
            jac.append(torch.softmax(z, dim=1) @ mu.T)  # d p / d a: transmitted-mean mu
        f = torch.stack(f, 1)
        jac = torch.stack(jac, 1)  # (n, beam, basis)
        resid = target[active] - f
        step = torch.linalg.solve(jac + 1e-9 * eye, resid[..., None])[..., 0]
        step = step.clamp(-200.0, 200.0)  # damping: far-out table corners converge slowly
        a[active] = (aa + step).clamp(-2000.0, 4000.0)
        active = active[step.abs().amax(1) > 1e-7]  # iterate only what has not converged
        if active.numel() == 0:
            break
    tab = a.reshape(d.table_size, d.table_size, 2).permute(2, 0, 1).contiguous().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, tab)
    os.replace(tmp, path)
    return tab
