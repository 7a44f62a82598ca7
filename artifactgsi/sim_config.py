"""What a simulation is asked to do (:class:`SimConfig`: size, slices, scanner, protocols,
seed) and every patient's random plan (:func:`plan_patients`: implant, pose, fields of view,
synthetic identity), drawn from the seed alone; :class:`PatientResult` is what simulating a
plan gives (:mod:`artifactgsi.sim_patient`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .physics.acquisition import ScanPhysics
from .physics.geometry import ImageGrid
from .physics.scan import GSIProtocol, OrdinaryProtocol
from .scanners import DEFAULT_SCANNER, SCANNER_PROFILES, ScannerProfile, scanner_profile
from .schema import IMPLANT_TYPES

#: Implant types of simulated patients, in turn (every type but "none").
IMPLANT_CYCLE = tuple(t for t in IMPLANT_TYPES if t != "none")
#: The GSI scanner's DICOM identity (every GSI series, and the default ordinary series).
SCANNER_MANUFACTURER = SCANNER_PROFILES[DEFAULT_SCANNER].manufacturer
SCANNER_MODEL = SCANNER_PROFILES[DEFAULT_SCANNER].model
#: ``split_hint`` values a simulation may give its implant patients (see docs/simulator.md).
SIM_SPLIT_HINTS = ("", "train", "test", "generalization")
#: Limits beyond which a simulation cannot work on any machine this runs on: the projector's
#: cached system matrix grows with size^3 (about 0.75 GB at 512 px, 6 GB at 1024 px, 48 GB at
#: 2048 px), every patient takes seconds to minutes, and a series holds at most this many
#: slices.
MAX_SIZE_PX = 1024
MAX_PATIENTS = 100_000
MAX_SLICES = 2_000
MAX_THICKNESS_MM = 50.0


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulated dataset. Sizes in pixels, lengths in mm."""

    patients: int = 6  # patients with implants (implant types cycle through the paper's three)
    slices: int = 16  # slices per series
    size: int = 128  # image matrix of both series (and the projector's object grid)
    seed: int = 0
    clean_patients: int = 2  # patients without implant: ordinary series only
    thickness_mm: float = 2.5  # slice spacing = thickness
    device: str = "cpu"
    supersample: int = 3  # anti-aliasing sub-samples per pixel side
    batch: int = 4  # slices simulated together (projector columns)
    # The scanner of the ordinary series (artifactgsi.scanners): geometry, protocol, kernel.
    scanner: str = DEFAULT_SCANNER
    # None: the scanner profile's routine protocol; set to override it.
    ordinary: OrdinaryProtocol | None = None
    gsi: GSIProtocol = field(default_factory=GSIProtocol)
    # The implant patients' manifest split_hint: "" (the builder splits 80/20), "train",
    # "test" (a held-out set, e.g. from another scanner), or "generalization" (ordinary
    # series only, no GSI or ground truth: the paper's generalization set).
    split_hint: str = ""
    # Implant patients per family (hip_prosthesis, fracture_fixation, spinal_fixation),
    # interleaved in proportion (artifactgsi.presets); None: the three families in turn.
    implant_mix: tuple[int, int, int] | None = None
    # The preset that set the counts (recorded in simulation.json and the card).
    preset: str = ""
    # The scanner profiles' bowtie, scatter and focal-spot / detector blur (False: the ideal
    # scanner of earlier releases, whose data and fingerprints it reproduces exactly).
    scanner_physics: bool = True

    def profile(self) -> ScannerProfile:
        """The scanner profile of the ordinary series."""
        return scanner_profile(self.scanner)

    def ordinary_protocol(self) -> OrdinaryProtocol:
        """The ordinary series' protocol: ``ordinary`` if set, else the profile's."""
        return self.ordinary if self.ordinary is not None else self.profile().ordinary

    def physics(self) -> tuple[ScanPhysics | None, ScanPhysics | None]:
        """``(ordinary, GSI)`` scanners' physics: the profile's and the GSI scanner's."""
        if not self.scanner_physics:
            return None, None
        return self.profile().physics(), SCANNER_PROFILES[DEFAULT_SCANNER].physics()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad setting."""
        checks = [
            (self.patients >= 0, f"--patients must be >= 0, got {self.patients}"),
            (self.clean_patients >= 0, f"--clean-patients must be >= 0, got {self.clean_patients}"),
            (self.patients + self.clean_patients > 0, "nothing to simulate: 0 patients"),
            (self.patients + self.clean_patients <= MAX_PATIENTS,
             f"--patients + --clean-patients is {self.patients + self.clean_patients}; at "
             f"most {MAX_PATIENTS} can be simulated (each patient takes seconds to minutes)"),
            (1 <= self.slices <= MAX_SLICES,
             f"--slices must be within 1..{MAX_SLICES}, got {self.slices}"),
            (32 <= self.size <= MAX_SIZE_PX,
             f"--size must be within 32..{MAX_SIZE_PX} pixels, got {self.size} (the "
             "projector's memory grows with the cube of the size: 6 GB at 1024 px)"),
            (0 < self.thickness_mm <= MAX_THICKNESS_MM,
             f"slice thickness must be within 0..{MAX_THICKNESS_MM:g} mm, got "
             f"{self.thickness_mm}"),
            (self.supersample >= 1, f"supersample must be >= 1, got {self.supersample}"),
            (self.batch >= 1, f"batch must be >= 1, got {self.batch}"),
            (self.split_hint in SIM_SPLIT_HINTS, f"--split-hint must be one of "
             f"{', '.join(repr(h) for h in SIM_SPLIT_HINTS)}, got {self.split_hint!r}"),
        ]
        if self.implant_mix is not None:
            checks.append((len(self.implant_mix) == 3 and all(
                isinstance(m, int) and m >= 0 for m in self.implant_mix)
                and sum(self.implant_mix) == self.patients,
                f"implant_mix {self.implant_mix} must be 3 counts >= 0 summing to --patients "
                f"{self.patients}"))
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.profile()  # an unknown scanner is a ValueError naming the profiles
        check_device(self.device)


def check_device(device: str) -> None:
    """Accept ``cpu`` or ``cuda[:N]`` when CUDA is usable; otherwise a clear ``ValueError``."""
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        return
    raise ValueError(f"--device must be 'cpu' or 'cuda[:N]', got {device!r}")


@dataclass(frozen=True)
class PatientPlan:
    """Everything random about one patient, drawn from the dataset seed and its index."""

    index: int
    patient_id: str
    implant_type: str
    seed: int
    pose: dict  # ordinary-scan patient pose: angle_deg, tx_mm, ty_mm
    z_shift_slices: int  # ordinary table range starts this many slices later than GSI's
    z_motion_mm: float  # patient moved this far along +z between the scans
    gsi_fov_mm: float
    gsi_centre_mm: tuple[float, float]
    ordinary_fov_mm: float
    ordinary_centre_mm: tuple[float, float]
    identity: dict  # synthetic patient-like header values (to be removed by de-identification)


_GIVEN = ("JANE", "JOHN", "MARIA", "WEI", "AMIRA", "LUCAS", "NOOR", "IVAN", "SOFIA", "KENJI")
_FAMILY = ("DOE", "SMITH", "GARCIA", "CHEN", "HASSAN", "MULLER", "KOWALSKI", "TANAKA", "SILVA")


def plan_patients(cfg: SimConfig) -> list[PatientPlan]:
    """Draw every patient's plan; depends only on ``cfg.seed`` and the counts."""
    plans = []
    total = cfg.patients + cfg.clean_patients
    if cfg.implant_mix is not None:
        from .presets import implant_sequence

        sequence = implant_sequence(cfg.implant_mix)
    for i in range(total):
        rng = np.random.default_rng([cfg.seed, i, 7919])
        if i >= cfg.patients:
            implant = "none"
        elif cfg.implant_mix is not None:
            implant = sequence[i]
        else:
            implant = IMPLANT_CYCLE[i % 3]
        pid = f"SIM{cfg.seed:03d}{i:04d}"
        identity = {
            "patient_name": f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}",
            "patient_id": f"MRN{rng.integers(10**7, 10**8)}",
            "birth_date": f"{rng.integers(1935, 2000)}{rng.integers(1, 13):02d}"
                          f"{rng.integers(1, 29):02d}",
            "sex": str(rng.choice(["F", "M"])),
            "study_date": f"2024{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
            "study_time": f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}00",
            "institution": "St Example General Hospital",
            "referring_physician": f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}^^DR",
            "accession_number": f"ACC{rng.integers(10**6, 10**7)}",
        }
        plans.append(PatientPlan(
            index=i, patient_id=pid, implant_type=implant,
            seed=int(rng.integers(0, 2**31 - 1)),
            pose={"angle_deg": float(rng.uniform(-2, 2)), "tx_mm": float(rng.uniform(-5, 5)),
                  "ty_mm": float(rng.uniform(-5, 5))},
            z_shift_slices=int(rng.integers(-1, 2)),
            z_motion_mm=float(rng.uniform(-0.3, 0.3) * cfg.thickness_mm),
            gsi_fov_mm=float(rng.uniform(430, 460)),
            gsi_centre_mm=(float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8))),
            ordinary_fov_mm=float(rng.uniform(470, 490)),
            ordinary_centre_mm=(float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3))),
            identity=identity,
        ))
    return plans


@dataclass
class PatientResult:
    """In-memory result of one simulated patient (HU as float32, (S, H, W))."""

    plan: PatientPlan
    body_region: str
    gsi_z_mm: np.ndarray
    ordinary_z_mm: np.ndarray
    ordinary: np.ndarray
    gsi: np.ndarray | None
    clean: np.ndarray | None
    ideal: np.ndarray | None
    labels: np.ndarray | None
    gsi_grid: ImageGrid
    ordinary_grid: ImageGrid
    description: dict
    truth: dict


def physics_record(cfg: SimConfig) -> dict:
    """``{"scanner_physics": {"ordinary": ..., "gsi": ...}}`` (bowtie, scatter, blur of the two
    scanners), or ``{}`` for the ideal scanner."""
    ordinary, gsi = cfg.physics()
    if ordinary is None:
        return {}
    return {"scanner_physics": {"ordinary": ordinary.to_dict(), "gsi": gsi.to_dict()}}
