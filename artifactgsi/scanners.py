"""Scanner profiles of ArtifactGSI-Sim: the GSI scanner the dataset comes from, and others.

A profile fixes what a routine (ordinary) scan looks like on one scanner: its fan-beam
geometry (source and detector distances, channels, views), the tube voltage and beam
filtration, the dose (photons per ray at the reference geometry), the reconstruction
kernel, and the physics an ideal scanner lacks: bowtie filter, scatter (collimation and
anti-scatter grid, with the scanner's own scatter correction) and focal-spot / detector blur.
``artifactgsi simulate --scanner NAME`` scans the same procedural patients on it, so a
method trained on the default profile can be tested on scanners it never saw (the paper's
generalization set, Fig. 4b) -- here with a ground truth, which real data cannot give.

Only the ordinary series changes with the profile. The GSI series, the ideal image and the
labels are always those of the GSI scanner (``gsi-hd``): rapid kVp switching is that
scanner's mode, and keeping the references fixed lets a cross-scanner table compare like
with like. The profiles are classes of scanners (published geometry ranges), not models of
any product.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .physics.acquisition import ScanPhysics
from .physics.blur import Blur
from .physics.bowtie import Bowtie
from .physics.geometry import FanBeamGeometry
from .physics.projector import FBP_FILTERS
from .physics.scan import OrdinaryProtocol
from .physics.scatter import ScatterModel

DEFAULT_SCANNER = "gsi-hd"


@dataclass(frozen=True)
class ScannerProfile:
    """One scanner's routine-scan settings; channel and view counts are for a 512-px image
    (scaled with the image size, see :meth:`FanBeamGeometry.scaled`), lengths in mm."""

    name: str
    description: str
    manufacturer: str  # DICOM Manufacturer / ManufacturerModelName of the simulated series
    model: str
    convolution_kernel: str  # DICOM ConvolutionKernel (the kernel's name on this scanner)
    sid_mm: float = 541.0
    sdd_mm: float = 949.0
    n_det_512: int = 888
    n_views_512: int = 984
    ordinary: OrdinaryProtocol = field(default_factory=OrdinaryProtocol)
    # Detector pitch (mm) of the 512-px geometry when the scanner fixes it; None: the pitch
    # whose fan just covers the field of view. Scaled so the fan angle stays the same.
    det_pitch_mm_512: float | None = None
    # The scanner's non-ideal physics (artifactgsi/physics/acquisition.py, docs/simulator.md),
    # explicit per profile: None (or a 0 mm focal spot, 1 sub-ray) turns one effect off.
    bowtie: Bowtie | None = field(default_factory=Bowtie)
    scatter: ScatterModel | None = field(default_factory=ScatterModel)
    focal_spot_mm: float = 1.0  # focal-spot width across the fan
    detector_aperture_subsamples: int = 3  # sub-rays per channel (intensity-averaged)

    def physics(self) -> ScanPhysics:
        """The profile's bowtie, scatter and blur as one :class:`ScanPhysics`."""
        return ScanPhysics(bowtie=self.bowtie, scatter=self.scatter,
                           blur=Blur(self.focal_spot_mm, self.detector_aperture_subsamples))

    def geometry(self, image_size: int, fov_mm: float = 500.0) -> FanBeamGeometry:
        """The profile's fan-beam geometry for an ``image_size`` object grid."""
        g = FanBeamGeometry.scaled(image_size, fov_mm, sid_mm=self.sid_mm,
                                   sdd_mm=self.sdd_mm, n_det_512=self.n_det_512,
                                   n_views_512=self.n_views_512)
        if self.det_pitch_mm_512 is None:
            return g
        return g.with_(det_pitch_mm=self.det_pitch_mm_512 * self.n_det_512 / g.n_det)

    @property
    def scanner_label(self) -> str:
        """The manifest's ``scanner`` column."""
        return f"{self.manufacturer} {self.model}"

    def to_dict(self) -> dict:
        return asdict(self)


SCANNER_PROFILES: dict[str, ScannerProfile] = {p.name: p for p in (
    ScannerProfile(
        name="gsi-hd",
        description="the GSI scanner the dataset is acquired on (training domain): "
                    "541 / 949 mm, 888 channels, 984 views, 120 kVp, 3 mm Al + 0.1 mm Cu, "
                    "reference dose, Hann kernel",
        manufacturer="GE MEDICAL SYSTEMS", model="Discovery CT750 HD (ArtifactGSI-Sim)",
        convolution_kernel="STANDARD",
        bowtie=Bowtie(material="aluminium", centre_mm=2.5, max_mm=36.0,
                      cylinder_diameter_mm=320.0, compensation=0.5),
        scatter=ScatterModel(collimation_mm=40.0), focal_spot_mm=1.0,
        detector_aperture_subsamples=3),
    ScannerProfile(
        name="long-geometry",
        description="a longer-geometry scanner class: 595 / 1085.6 mm, 736 channels, "
                    "1152 views, 120 kVp with harder filtration (6 mm Al + 0.3 mm Cu), "
                    "70 % dose, sharper Shepp-Logan kernel",
        manufacturer="ArtifactGSI-Sim", model="Scanner B (long geometry)",
        convolution_kernel="SHARP",
        sid_mm=595.0, sdd_mm=1085.6, n_det_512=736, n_views_512=1152,
        ordinary=OrdinaryProtocol(kvp=120.0, photons_per_ray=1.4e5, filter="shepp-logan",
                                  filter_al_mm=6.0, filter_cu_mm=0.3),
        bowtie=Bowtie(material="aluminium", centre_mm=2.0, max_mm=30.0,
                      cylinder_diameter_mm=300.0, compensation=0.5),
        scatter=ScatterModel(collimation_mm=38.4), focal_spot_mm=1.2,
        detector_aperture_subsamples=3),
    ScannerProfile(
        name="low-dose-100kv",
        description="a wide-bore scanner class on a low-dose protocol: 570 / 1040 mm, "
                    "672 channels, 1200 views, 100 kVp with light filtration (2.5 mm Al), "
                    "40 % dose, Hamming kernel",
        manufacturer="ArtifactGSI-Sim", model="Scanner C (wide bore)",
        convolution_kernel="SOFT",
        sid_mm=570.0, sdd_mm=1040.0, n_det_512=672, n_views_512=1200,
        ordinary=OrdinaryProtocol(kvp=100.0, photons_per_ray=8.0e4, filter="hamming",
                                  filter_al_mm=2.5, filter_cu_mm=0.0),
        bowtie=Bowtie(material="aluminium", centre_mm=3.0, max_mm=40.0,
                      cylinder_diameter_mm=350.0, compensation=0.5),
        scatter=ScatterModel(collimation_mm=40.0), focal_spot_mm=0.9,
        detector_aperture_subsamples=3),
    ScannerProfile(
        name="aapm",
        description="the AAPM CT-MAR Grand Challenge's scanner (XCIST simulation): 550 / 950 "
                    "mm, 900 channels of 1 mm (fan over a 471 mm circle), 1000 views, "
                    "120 kVp; filtration, dose and kernel as the GSI scanner's (the challenge "
                    "does not publish them in these terms)",
        manufacturer="ArtifactGSI-Sim", model="AAPM CT-MAR geometry",
        convolution_kernel="STANDARD",
        sid_mm=550.0, sdd_mm=950.0, n_det_512=900, n_views_512=1000, det_pitch_mm_512=1.0,
        ordinary=OrdinaryProtocol(kvp=120.0),
        # XCIST's bowtie, kernel scatter and sub-sampling, as the GSI scanner's physics (the
        # challenge's settings are not published in these terms either).
        bowtie=Bowtie(material="aluminium", centre_mm=2.5, max_mm=36.0,
                      cylinder_diameter_mm=320.0, compensation=0.5),
        scatter=ScatterModel(collimation_mm=40.0), focal_spot_mm=1.0,
        detector_aperture_subsamples=3),
)}


def scanner_profile(name: str) -> ScannerProfile:
    """The profile called ``name``; ``ValueError`` listing the profiles otherwise."""
    try:
        profile = SCANNER_PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown scanner profile {name!r}; profiles: "
                         f"{', '.join(SCANNER_PROFILES)}") from None
    if profile.ordinary.filter not in FBP_FILTERS:  # a profile added by hand
        raise ValueError(f"scanner profile {name!r}: FBP kernel {profile.ordinary.filter!r} "
                         f"is not one of {', '.join(FBP_FILTERS)}")
    return profile
