"""The scanner's beam path beyond the ideal one: bowtie filter, scatter with its anti-scatter
grid and correction, focal-spot and detector blur; and the calibrations a scanner makes for
them (air scan through the bowtie, per-channel water beam-hardening correction, kernel scatter
correction).

:class:`ScanPhysics` holds one scanner's settings (a scanner profile's fields, see
``artifactgsi/scanners.py``); :class:`BeamPath` applies them to one beam (one tube spectrum)
and is what :class:`~artifactgsi.physics.scan.Scanner` calls around
:func:`~artifactgsi.physics.polychromatic.measure`. With no physics (``None``), a scanner is
the ideal one: a point source, one ray through each channel centre, no filter, no scatter.

Order of operations, as on a scanner: photons leave the focal spot, pass the bowtie and the
patient, scatter, pass the grid and reach the channel apertures (all in intensity, then Poisson
noise and electronic noise, then the log); the scanner then subtracts its scatter estimate,
divides by the air scan and applies its water beam-hardening correction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .blur import Blur
from .bowtie import Bowtie, ChannelWaterBHC, measure_filtered, photon_transmission
from .geometry import FanBeamGeometry
from .polychromatic import Beam, WaterBHC, measure
from .scatter import ScatterModel, mu_scatter
from .spectra import energy_grid_kev


@dataclass(frozen=True)
class ScanPhysics:
    """One scanner's non-ideal physics: ``None`` fields are off."""

    bowtie: Bowtie | None = None
    scatter: ScatterModel | None = None
    blur: Blur = field(default_factory=Blur)

    def to_dict(self) -> dict:
        return asdict(self)


class BeamPath:
    """One beam (tube spectrum) through a scanner with :class:`ScanPhysics`, and the
    scanner's calibrations for it.

    Args:
        physics: the scanner's physics (``None``: the ideal scanner).
        geom: the scanner's geometry (its real channels; sub-rays live on
            ``physics.blur.fine_geometry(geom)``).
        beam: the tube spectrum, before the bowtie.
        bhc_degree: degree of the water beam-hardening polynomial.
    """

    def __init__(self, physics: ScanPhysics | None, geom: FanBeamGeometry, beam: Beam,
                 bhc_degree: int = 5) -> None:
        self.physics = physics or ScanPhysics()
        self.geom, self.beam, self.bhc_degree = geom, beam, bhc_degree
        blur = self.physics.blur
        self.fine = blur.fine_geometry(geom) if blur.active else geom
        bt = self.physics.bowtie
        self.bowtie_mm = bt.thickness_mm(geom, self.fine.det_u_mm()) if bt else None
        # Photons per ray are quoted behind the bowtie's centre (the dose at the isocentre);
        # the tube emits 1 / T_centre times more.
        self.photon_scale = 1.0 / photon_transmission(beam, bt.material, bt.centre_mm) if bt \
            else 1.0
        self._air_log: torch.Tensor | None = None
        self._bhc = None
        # Scatter is computed at the beam's mean detected energy.
        self.scatter_kev = float((beam.signal_weights * energy_grid_kev()).sum())

    # ------------------------------------------------------------------ measurement
    @property
    def sub_rays(self) -> bool:
        """Whether lines come on the fine (sub-ray) detector."""
        return self.fine is not self.geom

    def _aperture(self):
        if not self.sub_rays:
            return None
        blur, geom = self.physics.blur, self.geom
        return lambda t: blur.reduce(t, geom)

    def reduce_lines(self, p: torch.Tensor) -> torch.Tensor:
        """Line integrals on the sub-ray detector ``(..., D')`` -> channels ``(..., D)``."""
        return self.physics.blur.reduce_lines(p, self.geom) if self.sub_rays else p

    def _raw(self, lines: torch.Tensor, materials: tuple[str, ...], **kw) -> torch.Tensor:
        bt = self.physics.bowtie
        if bt is None:
            return measure(lines, materials, self.beam, **kw)
        return measure_filtered(lines, materials, self.bowtie_mm, bt, self.beam, **kw)

    def measure(self, lines: torch.Tensor, materials: tuple[str, ...],
                photons_per_ray: float | None, electronic_noise_photons: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Detected log signal ``(..., D)``, relative to the tube's unfiltered output, before
        the scanner's corrections; ``lines`` ``(..., D', M)`` mm per material on the sub-ray
        detector. ``photons_per_ray``: air-scan photons of the centre channel (behind the
        bowtie), ``None`` for noise-free."""
        sc = self.physics.scatter
        scatter = None
        if sc is not None:
            mu_s = torch.as_tensor(mu_scatter(materials, self.scatter_kev), dtype=lines.dtype,
                                   device=lines.device)
            p_s = self.reduce_lines(lines @ mu_s)  # scatter line integral per channel
            pitch = self.geom.det_pitch_mm

            def scatter(primary: torch.Tensor) -> torch.Tensor:
                return sc.spread(primary * p_s.to(primary.dtype), pitch)

        n0 = None if photons_per_ray is None else photons_per_ray * self.photon_scale
        return self._raw(lines, materials, photons_per_ray=n0,
                         electronic_noise_photons=electronic_noise_photons, generator=generator,
                         aperture=self._aperture(), scatter=scatter)

    # ------------------------------------------------------------------ calibrations
    @property
    def air_log(self) -> torch.Tensor:
        """``(D,)`` log attenuation of the air scan (the bowtie alone; zeros without one)."""
        if self._air_log is None:
            if self.physics.bowtie is None:
                self._air_log = torch.zeros(self.geom.n_det, dtype=torch.float64)
            else:  # the bowtie alone: no patient material
                nothing = torch.zeros(1, self.fine.n_det, 0, dtype=torch.float64)
                self._air_log = self._raw(nothing, (), photons_per_ray=None,
                                          aperture=self._aperture())[0].double()
        return self._air_log

    def water_bhc(self):
        """The scanner's water beam-hardening correction for this beam: per channel through
        the bowtie (:class:`~artifactgsi.physics.bowtie.ChannelWaterBHC`), else the one
        polynomial of :class:`~artifactgsi.physics.polychromatic.WaterBHC`."""
        if self._bhc is None:
            if self.physics.bowtie is None:
                self._bhc = WaterBHC(self.beam, degree=self.bhc_degree)
            else:
                def slabs(t: torch.Tensor) -> torch.Tensor:
                    lines = t.view(-1, 1, 1).expand(-1, self.fine.n_det, 1)
                    return self._raw(lines, ("water",), photons_per_ray=None,
                                     aperture=self._aperture())

                self._bhc = ChannelWaterBHC(self.beam, self.air_log, slabs, self.bhc_degree)
        return self._bhc

    def correct(self, p_raw: torch.Tensor) -> torch.Tensor:
        """The scanner's processing of :meth:`measure`'s output: scatter correction (the
        kernel model assuming water), then division by the air scan. Returns the log
        attenuation of the patient ``(..., D)`` (float64; unchanged without bowtie and
        scatter), ready for the water correction."""
        sc = self.physics.scatter
        if self.physics.bowtie is None and (sc is None or not sc.correction):
            return p_raw
        p_raw = p_raw.double()
        if sc is not None and sc.correction:
            measured = torch.exp(-p_raw)
            floor = sc.correction_floor * measured
            primary = measured
            air = self.air_log.to(p_raw.device)
            bhc = self.water_bhc()
            mu_s_w = float(mu_scatter(("water",), self.scatter_kev)[0])
            for _ in range(sc.correction_iterations):
                # Water-equivalent thickness of the patient by the water calibration.
                water_mm = bhc(-torch.log(primary) - air) / bhc.mu_water_eff
                source = primary * mu_s_w * water_mm.clamp(0.0, 1000.0)
                s = sc.spread(source, self.geom.det_pitch_mm)
                primary = torch.maximum(measured - s, floor)
            p_raw = -torch.log(primary)
        return p_raw - self.air_log.to(p_raw.device) if self.physics.bowtie else p_raw

    def check_lines(self, lines: torch.Tensor) -> None:
        """A clear error when projections ``(B, M, V, D')`` are not on this path's detector."""
        if lines.shape[-1] != self.fine.n_det:
            raise ValueError(f"line integrals have {lines.shape[-1]} channels; this scanner "
                             f"projects onto {self.fine.n_det} (use Scanner.project)")

    def log_re_centre_air(self, p: torch.Tensor) -> torch.Tensor:
        """Air-normalised log readings ``p`` re-referenced to the centre channel's air count
        (the photons a protocol quotes): ``log(N_centre / expected)``, for starvation tests."""
        if self.physics.bowtie is None:
            return p
        return p + self.air_log.to(p.device) - math.log(self.photon_scale)
