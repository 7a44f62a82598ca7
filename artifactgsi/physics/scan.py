"""Scanner acquisitions over material line integrals: ordinary single-kVp CT, rapid
kVp-switching dual-energy (GSI) CT with virtual monochromatic images, and the noise-free
monochromatic "ideal" image.

Every acquisition takes material path-length sinograms ``lines`` of shape ``(B, M, V, D)``
in mm (from :meth:`Scanner.project` of material volume fractions) and returns images in HU,
shape ``(B, 1, H, W)`` on the requested :class:`ImageGrid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .acquisition import BeamPath, ScanPhysics
from .geometry import FanBeamGeometry, ImageGrid
from .materials import mu_matrix
from .polychromatic import Beam, Decomposer
from .spectra import TubeSpec

# Photon counts are quoted for the clinical geometry (984 views, 888 channels at
# 0.65 mm pitch at the isocentre); a scaled-down geometry keeps the same dose per area.
_CLINICAL = FanBeamGeometry.clinical()


@dataclass(frozen=True)
class OrdinaryProtocol:
    """Single-energy acquisition as in a routine scan (the "ordinary" series)."""

    kvp: float = 120.0
    # Incident photons per channel and view at the clinical geometry: ~ a 250 mAs abdomen
    # scan reads 2e5 photons behind no object (order of magnitude from published CT
    # simulators, e.g. XCIST's defaults).
    photons_per_ray: float = 2.0e5
    electronic_noise_photons: float = 5.0
    bhc_degree: int = 5
    filter: str = "hann"  # FBP kernel, one of physics.projector.FBP_FILTERS
    # Beam filtration (inherent + added), in mm; the bowtie is the scanner's (ScanPhysics).
    filter_al_mm: float = 3.0
    filter_cu_mm: float = 0.1

    def tube(self) -> TubeSpec:
        """The tube spectrum settings of this protocol."""
        return TubeSpec(self.kvp, filter_al_mm=self.filter_al_mm,
                        filter_cu_mm=self.filter_cu_mm)


@dataclass(frozen=True)
class GSIProtocol:
    """Rapid kVp-switching dual-energy acquisition: 80 kVp on even views, 140 kVp on odd
    views, missing views filled by interpolation along the angle, water / cortical-bone
    decomposition per ray, virtual monochromatic image at ``kev``."""

    kvp_low: float = 80.0
    kvp_high: float = 140.0
    kev: float = 100.0  # chosen by benchmarks/bench_gsi_kev.py (README: keV curve)
    photons_low: float = 2.0e5  # per channel and view, clinical geometry
    photons_high: float = 2.0e5
    electronic_noise_photons: float = 5.0
    basis: tuple[str, str] = ("water", "cortical_bone")
    filter: str = "hann"
    # Low-kVp readings with fewer expected photons than this are treated as starved, with a
    # smooth hand-over over ``starved_width`` in log units (see Scanner.gsi_measurement).
    starved_photons: float = 50.0
    starved_width: float = 1.0
    # Vendor-style projection-based metal correction on the VMI sinogram (clinical metal
    # protocols use it; see physics/metal_correction.py): "on", "off", or "auto" = on for the
    # slices whose low-kVp readings are photon-starved (large CoCr / steel implants, where the
    # decomposition fails), as a technologist picks it for a hip prosthesis. Measured with
    # benchmarks/bench_gsi_kev.py: it cuts a CoCr hip's artifact 2-3x but doubles it around
    # titanium pedicle screws, hence "auto".
    metal_correction: str = "auto"
    starved_fraction: float = 0.002  # "auto": share of starved rays that switches it on

    def metal_correction_setup(self):
        """The :class:`~artifactgsi.physics.metal_correction.MetalCorrection` settings this
        protocol applies (when ``metal_correction`` switches it on)."""
        from .metal_correction import MetalCorrection

        return MetalCorrection(filter=self.filter)


@dataclass
class GSIMeasurement:
    """One rapid-switching acquisition after decomposition, per ray ``(B, V, D)``.

    Attributes:
        basis: ``(B, V, D, 2)`` basis path lengths in mm (water, cortical bone).
        water_mm: water-equivalent path length in mm from the high-kVp reading alone.
        trust: weight of the decomposition in [0, 1] (0 where the low kVp is starved).
    """

    basis: torch.Tensor
    water_mm: torch.Tensor
    trust: torch.Tensor

    def vmi_sinogram(self, decomposer: Decomposer, kev: float) -> torch.Tensor:
        """Virtual monochromatic line integrals at ``kev``, ``(B, V, D)``."""
        dual = decomposer.vmi(self.basis.float(), kev)
        single = self.water_mm * mu_water(kev)
        return self.trust * dual + (1.0 - self.trust) * single


def dose_scale(geom: FanBeamGeometry) -> float:
    """Photons per ray relative to the clinical geometry at equal dose per area."""
    iso_pitch = geom.det_pitch_mm / geom.magnification
    clin_pitch = _CLINICAL.det_pitch_mm / _CLINICAL.magnification
    return (_CLINICAL.n_views / geom.n_views) * (iso_pitch / clin_pitch)


@dataclass
class Scanner:
    """A fan-beam scanner with its two protocols, holding the (cached) projector.

    ``physics`` adds the bowtie, scatter and focal-spot / detector blur of
    :mod:`artifactgsi.physics.acquisition` (``None``: the ideal scanner)."""

    geom: FanBeamGeometry
    ordinary_protocol: OrdinaryProtocol = field(default_factory=OrdinaryProtocol)
    gsi_protocol: GSIProtocol = field(default_factory=GSIProtocol)
    device: str = "cpu"
    physics: ScanPhysics | None = None

    def __post_init__(self) -> None:
        from .projector import FanBeamProjector

        self.projector = FanBeamProjector(self.geom, device=self.device)
        self._paths: dict[tuple, BeamPath] = {}
        # With detector sub-sampling, projections are taken on the sub-ray detector.
        blur = self.physics.blur if self.physics else None
        self._ray_projector = (FanBeamProjector(blur.fine_geometry(self.geom), device=self.device)
                               if blur is not None and blur.active else self.projector)

    def beam_path(self, spec: TubeSpec, bhc_degree: int = 5) -> BeamPath:
        """The (cached) :class:`BeamPath` of one tube spectrum through this scanner."""
        key = (spec, bhc_degree)
        if key not in self._paths:
            self._paths[key] = BeamPath(self.physics, self.geom, Beam(spec), bhc_degree)
        return self._paths[key]

    def project(self, fractions: torch.Tensor) -> torch.Tensor:
        """Material volume fractions ``(B, M, N, N)`` on the object grid -> path lengths in mm,
        ``(B, M, V, D')`` (``D'`` = channels times the detector sub-rays of ``physics``)."""
        return self._ray_projector.forward(fractions.to(self.device, torch.float32))

    # ---------------------------------------------------------------- ordinary
    def ordinary_sinogram(self, lines: torch.Tensor, materials: tuple[str, ...],
                          generator: torch.Generator | None, noise: bool = True
                          ) -> tuple[torch.Tensor, float]:
        """-> (water-BHC-corrected log sinogram ``(B, 1, V, D)``, mu_water_eff in 1/mm)."""
        pr = self.ordinary_protocol
        path = self.beam_path(pr.tube(), pr.bhc_degree)
        path.check_lines(lines)
        photons = pr.photons_per_ray * dose_scale(self.geom) if noise else None
        p = path.measure(lines.movedim(1, -1), materials, photons,
                         pr.electronic_noise_photons, generator)
        bhc = path.water_bhc()
        return bhc(path.correct(p).double()).float()[:, None], bhc.mu_water_eff

    def ordinary(self, lines: torch.Tensor, materials: tuple[str, ...], grid: ImageGrid,
                 generator: torch.Generator | None = None, noise: bool = True) -> torch.Tensor:
        """Ordinary 120 kVp image in HU, ``(B, 1, H, W)`` on ``grid``."""
        p, mu_w = self.ordinary_sinogram(lines, materials, generator, noise)
        mu = self.projector.fbp(p, grid, filter=self.ordinary_protocol.filter)
        return 1000.0 * (mu - mu_w) / mu_w

    # --------------------------------------------------------------------- GSI
    def decomposer(self) -> Decomposer:
        pr = self.gsi_protocol
        return Decomposer(TubeSpec(pr.kvp_low), TubeSpec(pr.kvp_high), basis=pr.basis)

    def gsi_measurement(self, lines: torch.Tensor, materials: tuple[str, ...],
                        generator: torch.Generator | None, noise: bool = True
                        ) -> GSIMeasurement:
        """Rapid-switching measurement and per-ray decomposition (see :class:`GSIMeasurement`)."""
        pr = self.gsi_protocol
        if self.geom.n_views % 2:
            raise ValueError(f"GSI needs an even number of views, got {self.geom.n_views}")
        scale = dose_scale(self.geom)
        ln = lines.movedim(1, -1)  # (B, V, D', M)
        n_lo = pr.photons_low * scale
        n_hi = pr.photons_high * scale
        path_lo = self.beam_path(TubeSpec(pr.kvp_low))
        path_hi = self.beam_path(TubeSpec(pr.kvp_high))
        path_lo.check_lines(lines)
        p_lo = path_lo.measure(ln[:, 0::2], materials, n_lo if noise else None,
                               pr.electronic_noise_photons, generator)
        p_hi = path_hi.measure(ln[:, 1::2], materials, n_hi if noise else None,
                               pr.electronic_noise_photons, generator)
        p_lo = path_lo.correct(p_lo)
        p_hi = path_hi.correct(p_hi)
        # Each kVp is seen on every other view; fill the others by linear interpolation in
        # angle between the neighbouring views (circular), as rapid-switching scanners do.
        lo = torch.empty((ln.shape[0], ln.shape[1], self.geom.n_det), dtype=p_lo.dtype,
                         device=p_lo.device)
        hi = torch.empty_like(lo)
        lo[:, 0::2] = p_lo
        lo[:, 1::2] = 0.5 * (p_lo + torch.roll(p_lo, -1, dims=1))
        hi[:, 1::2] = p_hi
        hi[:, 0::2] = 0.5 * (p_hi + torch.roll(p_hi, 1, dims=1))
        if self.physics is not None and self.physics.bowtie is not None:
            # Decompose bowtie and patient together, then remove the bowtie's own basis
            # thicknesses (aluminium lies in the water / bone basis; physics/bowtie.py).
            air_lo, air_hi = path_lo.air_log.to(lo.device), path_hi.air_log.to(lo.device)
            basis = self.decomposer()(lo + air_lo, hi + air_hi) - self.decomposer()(air_lo, air_hi)
        else:
            basis = self.decomposer()(lo, hi)
        bhc = path_hi.water_bhc()
        water_mm = bhc(hi.double()).float() / bhc.mu_water_eff
        # Trust in the decomposition falls to 0 where the low-kVp reading is photon-starved
        # (fewer than ~starved_photons expected): there the pair carries no spectral
        # information and its inverse diverges, so such rays fall back to the high-kVp reading
        # alone (water beam-hardening corrected), as the single-energy series would do.
        p_starved = math.log(n_lo / pr.starved_photons) if noise else float("inf")
        trust = ((p_starved - path_lo.log_re_centre_air(lo)) / pr.starved_width
                 ).clamp(0.0, 1.0).float()
        return GSIMeasurement(basis=basis, water_mm=water_mm, trust=trust)

    def gsi(self, lines: torch.Tensor, materials: tuple[str, ...], grid: ImageGrid,
            generator: torch.Generator | None = None, kev: float | None = None,
            noise: bool = True) -> torch.Tensor:
        """GSI virtual monochromatic image at ``kev`` (default: the protocol's) in HU."""
        kev = self.gsi_protocol.kev if kev is None else kev
        return self.vmi_image(self.gsi_measurement(lines, materials, generator, noise), grid, kev)

    def vmi_image(self, m: GSIMeasurement, grid: ImageGrid, kev: float) -> torch.Tensor:
        """VMI at ``kev`` in HU ``(B, 1, H, W)`` from a :class:`GSIMeasurement`."""
        p, use = self.vmi_sinogram(m, kev)
        return self.vmi_reconstruct(p, use, grid, kev)

    def vmi_sinogram(self, m: GSIMeasurement, kev: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(VMI line integrals (B, 1, V, D), (B,) bool: the slices that get the metal
        correction)`` (see :attr:`GSIProtocol.metal_correction`)."""
        p = m.vmi_sinogram(self.decomposer(), kev)[:, None]
        pr = self.gsi_protocol
        if pr.metal_correction not in ("on", "off", "auto"):
            raise ValueError(f"metal_correction must be 'on', 'off' or 'auto', got "
                             f"{pr.metal_correction!r}")
        use = torch.full((p.shape[0],), pr.metal_correction == "on", device=p.device)
        if pr.metal_correction == "auto":
            use = (m.trust < 0.5).flatten(1).float().mean(1) > pr.starved_fraction
        return p, use

    def vmi_reconstruct(self, p: torch.Tensor, use: torch.Tensor, grid: ImageGrid, kev: float,
                        fbp: torch.Tensor | None = None) -> torch.Tensor:
        """VMI in HU ``(B, 1, H, W)`` from :meth:`vmi_sinogram`'s output. ``fbp``: the plain
        FBP of ``p`` on ``grid`` if already computed (e.g. batched with other images; it is
        overwritten where the metal correction applies)."""
        mu_w = mu_water(kev)
        pr = self.gsi_protocol
        mu = self.projector.fbp(p, grid, filter=pr.filter) if fbp is None else fbp
        if bool(use.any()):
            from .metal_correction import correct

            corrected = correct(self.projector, p[use], mu_w, grid, pr.metal_correction_setup())
            mu[use] = corrected
        return 1000.0 * (mu - mu_w) / mu_w

    # ------------------------------------------------------------------- ideal
    def monochromatic(self, lines: torch.Tensor, materials: tuple[str, ...], grid: ImageGrid,
                      kev: float | None = None) -> torch.Tensor:
        """Noise-free monochromatic image at ``kev`` in HU: linear in the line integrals, so no
        beam hardening, no photon starvation, no noise; only the scanner's resolution."""
        kev = self.gsi_protocol.kev if kev is None else kev
        p = self.monochromatic_sinogram(lines, materials, kev)
        img = self.projector.fbp(p, grid, filter=self.gsi_protocol.filter)
        mu_w = mu_water(kev)
        return 1000.0 * (img - mu_w) / mu_w

    def monochromatic_sinogram(self, lines: torch.Tensor, materials: tuple[str, ...],
                               kev: float | None = None) -> torch.Tensor:
        """Monochromatic line integrals at ``kev``, ``(B, 1, V, D)``."""
        kev = self.gsi_protocol.kev if kev is None else kev
        mu = torch.as_tensor(mu_matrix(materials, np.array([kev]))[:, 0], dtype=torch.float32,
                             device=lines.device)
        p = torch.einsum("bmvd,m->bvd", lines.float(), mu)
        # Sub-rays averaged in line integral: the scanner's resolution, no non-linear effects.
        return self.beam_path(TubeSpec(self.gsi_protocol.kvp_high)).reduce_lines(p)[:, None]


def mu_water(kev: float) -> float:
    """Water attenuation in 1/mm at ``kev``."""
    return float(mu_matrix(("water",), np.array([kev]))[0, 0])
