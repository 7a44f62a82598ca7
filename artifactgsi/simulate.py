"""ArtifactGSI-Sim: simulate paired ordinary / GSI CT series of procedural patients and write
them in the raw layout of a hospital export (see docs/dataset.md).

Per implant patient ``RAW/<id>/`` holds ``ordinary/*.dcm`` (120 kVp, water beam-hardening
corrected FBP), ``gsi/*.dcm`` (virtual monochromatic image of a rapid 80/140 kVp switching
scan), ``labels.nii.gz`` and ``ideal.nii.gz`` (noise- and artifact-free monochromatic image at
the GSI keV) and ``clean.nii.gz`` (the same anatomy without its implant, ordinary protocol),
all three on the GSI grid, and ``truth.json`` (the applied patient motion between the two
scans, the reconstruction grids and the true slice correspondence; never written into DICOM).
Clean patients have only ``ordinary/``. ``RAW/manifest.csv`` lists the patients.

The two series differ as on a real scanner: the patient moves slightly between the scans
(in-plane rotation and shift, and a shift along z), and each series is reconstructed on its
own field of view and centre.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .fileio import staged_dir
from .physics.acquisition import ScanPhysics
from .physics.geometry import FanBeamGeometry, ImageGrid
from .physics.scan import GSIProtocol, OrdinaryProtocol, Scanner, mu_water
from .scanners import DEFAULT_SCANNER, SCANNER_PROFILES, ScannerProfile, scanner_profile
from .schema import IMPLANT_TYPES, MANIFEST_COLUMNS

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


def _slice_positions(patient, cfg: SimConfig) -> np.ndarray:
    # The phantom's focus: femoral heads for hips, the screwed levels for spines, the plate
    # centre for fractures; where the artifacts are worst.
    zc = patient.focus_z_mm
    z = zc + (np.arange(cfg.slices) - (cfg.slices - 1) / 2) * cfg.thickness_mm
    zmin, zmax = patient.z_range_mm
    # Keep the scan inside the region's anatomy (shift, never squeeze).
    z += max(0.0, zmin - z[0]) - max(0.0, z[-1] - zmax)
    return np.round(z, 3)


def make_scanners(cfg: SimConfig) -> tuple[Scanner, Scanner]:
    """``(ordinary scanner, GSI scanner)``: one object when the ordinary series comes from the
    GSI scanner itself (the default profile)."""
    ord_physics, gsi_physics = cfg.physics()
    gsi = Scanner(FanBeamGeometry.scaled(cfg.size), OrdinaryProtocol(), cfg.gsi, cfg.device,
                  gsi_physics)
    profile = cfg.profile()
    geom = profile.geometry(cfg.size)
    if geom == gsi.geom and ord_physics == gsi_physics:
        gsi.ordinary_protocol = cfg.ordinary_protocol()
        return gsi, gsi
    return Scanner(geom, cfg.ordinary_protocol(), cfg.gsi, cfg.device, ord_physics), gsi


def simulate_patient(cfg: SimConfig, plan: PatientPlan,
                     scanners: tuple[Scanner, Scanner] | None = None,
                     progress: Callable[[int], None] | None = None) -> PatientResult:
    """Simulate one patient: ordinary (and, with an implant, GSI, clean, ideal and labels).

    ``scanners`` is ``(ordinary, GSI)`` as :func:`make_scanners` returns (built when not
    given; pass them to reuse the projectors over patients). The clean image (no implant)
    comes from the ordinary scanner, GSI and ideal from the GSI scanner.
    """
    from .phantoms import MATERIALS, Pose2D, make_patient

    ord_scanner, scanner = scanners or make_scanners(cfg)
    obj = scanner.geom.object_grid
    if ord_scanner.geom.object_grid != obj:
        raise ValueError("the ordinary and GSI scanners must share the object grid")
    patient = make_patient(plan.seed, plan.implant_type)
    has_gsi = plan.implant_type != "none" and cfg.split_hint != "generalization"
    t = cfg.thickness_mm
    z_gsi = _slice_positions(patient, cfg)
    z_ord_table = z_gsi + plan.z_shift_slices * t
    z_ord_anat = z_ord_table - plan.z_motion_mm
    n = cfg.size
    grid_g = ImageGrid((n, n), plan.gsi_fov_mm / n, plan.gsi_centre_mm)
    grid_o = ImageGrid((n, n), plan.ordinary_fov_mm / n, plan.ordinary_centre_mm)
    pose = Pose2D(**plan.pose)
    gen = torch.Generator(device=cfg.device).manual_seed(plan.seed)

    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ordinary", "gsi", "clean", "ideal",
                                                        "labels")}
    # Sinograms wait here until ``flush`` reconstructs several batches in one FBP per grid
    # (an FBP's cost is mostly per pixel and view, not per image; the results are the same
    # bits as one FBP per image). Noise is still drawn batch by batch in the fixed order.
    pending: dict[str, list[torch.Tensor]] = {k: [] for k in ("ordinary", "gsi", "use",
                                                             "ideal", "clean")}
    flush_slices = _fbp_slices(scanner.geom, cfg.batch)
    kev = cfg.gsi.kev
    ord_filter, gsi_filter = cfg.ordinary_protocol().filter, cfg.gsi.filter

    def flush() -> None:
        if not pending["ordinary"]:
            return
        p = {k: torch.cat(v) for k, v in pending.items() if v}
        for v in pending.values():
            v.clear()
        out["ordinary"].append(_hu(ord_scanner.projector.fbp(p["ordinary"], grid_o,
                                                             filter=ord_filter), mu_ord))
        if not has_gsi:
            return
        n = p["gsi"].shape[0]
        if ord_scanner is scanner and ord_filter == gsi_filter:
            mu = scanner.projector.fbp(torch.cat([p["gsi"], p["ideal"], p["clean"]]), grid_g,
                                       filter=gsi_filter)
            mu_g, mu_i, mu_c = mu[:n], mu[n:2 * n], mu[2 * n:]
        else:
            mu = scanner.projector.fbp(torch.cat([p["gsi"], p["ideal"]]), grid_g,
                                       filter=gsi_filter)
            mu_g, mu_i = mu[:n], mu[n:]
            mu_c = ord_scanner.projector.fbp(p["clean"], grid_g, filter=ord_filter)
        out["gsi"].append(scanner.vmi_reconstruct(p["gsi"], p["use"], grid_g, kev, fbp=mu_g)
                          [:, 0].cpu().numpy())
        out["ideal"].append(_hu(mu_i, mu_water(kev)))
        out["clean"].append(_hu(mu_c, mu_ord))

    mu_ord = 0.0
    ss = cfg.supersample
    for start in range(0, cfg.slices, cfg.batch):
        idx = range(start, min(cfg.slices, start + cfg.batch))
        fr = [patient.rasterize(float(z_ord_anat[i]), obj, pose=pose, supersample=ss)[0]
              for i in idx]
        if has_gsi:
            fr += [patient.rasterize(float(z_gsi[i]), obj, supersample=ss)[0] for i in idx]
            fr += [patient.rasterize(float(z_gsi[i]), obj, implant=False, supersample=ss)[0]
                   for i in idx]
        stack = torch.stack(fr)  # (k * b, M_all, N, N)
        used = [m for m in range(len(MATERIALS)) if stack[:, m].any()]
        mats = tuple(MATERIALS[m] for m in used)
        b = len(idx)
        if ord_scanner is scanner:  # one projection of the whole batch
            lines = scanner.project(stack[:, used])
            lo, lg, lc = lines[:b], lines[b:2 * b], lines[2 * b:]
        else:  # ordinary and clean on the profile's geometry, GSI on the GSI scanner's
            lines = ord_scanner.project(stack[:, used][[*range(b), *range(2 * b, len(fr))]])
            lo, lc = lines[:b], lines[b:]
            lg = scanner.project(stack[b:2 * b, used]) if has_gsi else None
        # Noise is drawn in a fixed order (ordinary, GSI, clean) from one generator.
        p_ord, mu_ord = ord_scanner.ordinary_sinogram(lo, mats, gen)
        pending["ordinary"].append(p_ord)
        if has_gsi:
            p_gsi, use = scanner.vmi_sinogram(scanner.gsi_measurement(lg, mats, gen), kev)
            pending["gsi"].append(p_gsi)
            pending["use"].append(use)
            pending["ideal"].append(scanner.monochromatic_sinogram(lg, mats, kev))
            pending["clean"].append(ord_scanner.ordinary_sinogram(lc, mats, gen)[0])
            out["labels"].append(np.stack([
                patient.rasterize(float(z_gsi[i]), grid_g, supersample=ss)[1].numpy()
                for i in idx]))
        if sum(len(t) for t in pending["ordinary"]) >= flush_slices:
            flush()
        if progress:
            progress(b)
    flush()

    def cat(k: str) -> np.ndarray | None:
        return np.concatenate(out[k]) if out[k] else None

    truth = {
        "ordinary_pose": plan.pose,
        "ordinary_pose_convention": "p_scanner = R(angle_deg) @ p_patient + (tx_mm, ty_mm); "
                                    "the GSI scan has the identity pose",
        "z_motion_mm": plan.z_motion_mm,
        "z_shift_slices": plan.z_shift_slices,
        "gsi_z_mm": z_gsi.tolist(),
        "ordinary_z_mm": z_ord_table.tolist(),
        "ordinary_anatomical_z_mm": z_ord_anat.tolist(),
        "gsi_slice_for_ordinary": [_nearest(z_gsi, z, t) for z in z_ord_anat] if has_gsi else [],
        "gsi_grid": _grid_json(grid_g),
        "ordinary_grid": _grid_json(grid_o),
        "scanner": cfg.scanner,
        "geometry": asdict(scanner.geom),
        "ordinary_geometry": asdict(ord_scanner.geom),
        "ordinary_protocol": asdict(cfg.ordinary_protocol()),
        "gsi_protocol": asdict(cfg.gsi),
        "gsi_metal_correction": asdict(cfg.gsi.metal_correction_setup()),
        **physics_record(cfg),
        "seed": plan.seed,
    }
    return PatientResult(
        plan=plan, body_region=patient.body_region, gsi_z_mm=z_gsi, ordinary_z_mm=z_ord_table,
        ordinary=cat("ordinary"), gsi=cat("gsi"), clean=cat("clean"), ideal=cat("ideal"),
        labels=cat("labels"), gsi_grid=grid_g, ordinary_grid=grid_o,
        description=patient.describe(), truth=truth,
    )


#: Bytes of sinograms reconstructed together per grid (the FBP's work buffers scale with it).
_FBP_BATCH_BYTES = 128 << 20


def _fbp_slices(geom: FanBeamGeometry, batch: int) -> int:
    """Slices whose sinograms are reconstructed together: as many whole batches as keep the
    three images per slice on the GSI grid within :data:`_FBP_BATCH_BYTES`."""
    per_slice = 3 * geom.n_views * geom.n_det * 4
    return batch * max(1, _FBP_BATCH_BYTES // (per_slice * batch))


def _hu(mu: torch.Tensor, mu_water: float) -> np.ndarray:
    """``(B, 1, H, W)`` attenuation (1/mm) -> ``(B, H, W)`` float32 HU."""
    return (1000.0 * (mu - mu_water) / mu_water)[:, 0].cpu().numpy()


def _nearest(z_ref: np.ndarray, z: float, t: float) -> int | None:
    i = int(np.argmin(np.abs(z_ref - z)))
    return i if abs(z_ref[i] - z) < 0.5 * t else None


def _grid_json(g: ImageGrid) -> dict:
    return {"shape": list(g.shape), "pixel_mm": g.pixel_mm, "centre_mm": list(g.centre_mm),
            "origin_mm": list(g.origin_mm())}


def to_hu_int16(img: np.ndarray) -> np.ndarray:
    """Round to int16 HU within the CT range [-1024, 31743] (12/15-bit stored values)."""
    return np.clip(np.rint(img), -1024, 31743).astype(np.int16)


def write_patient(res: PatientResult, cfg: SimConfig, raw: Path) -> Path:
    """Write one patient's folder atomically (a temporary folder renamed at the end)."""
    import SimpleITK as sitk

    from .dicom_write import SeriesMeta, write_ct_series

    plan = res.plan
    final = raw / plan.patient_id
    tmp = raw / f".tmp-{plan.patient_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with staged_dir(tmp, final):
        study_uid = _uid(cfg.seed, plan.index, "study")
        frame_uid = _uid(cfg.seed, plan.index, "frame")
        common = dict(plan.identity, study_uid=study_uid, frame_of_reference_uid=frame_uid,
                      slice_thickness_mm=cfg.thickness_mm, body_part=_body_part(res.body_region))
        profile, protocol = cfg.profile(), cfg.ordinary_protocol()
        write_ct_series(to_hu_int16(res.ordinary), res.ordinary_z_mm, res.ordinary_grid,
                        SeriesMeta(**common, manufacturer=profile.manufacturer,
                                   model=profile.model, series_number=2,
                                   series_description=f"Routine {protocol.kvp:g}kVp",
                                   kvp=protocol.kvp, kev=None,
                                   convolution_kernel=profile.convolution_kernel,
                                   series_uid=_uid(cfg.seed, plan.index, "ordinary")),
                        tmp / "ordinary")
        if res.gsi is not None:
            kev = cfg.gsi.kev
            write_ct_series(to_hu_int16(res.gsi), res.gsi_z_mm, res.gsi_grid,
                            SeriesMeta(**common, manufacturer=SCANNER_MANUFACTURER,
                                       model=SCANNER_MODEL, series_number=3,
                                       series_description=f"GSI MonoE {kev:g}keV",
                                       kvp=cfg.gsi.kvp_high, kev=kev,
                                       convolution_kernel="STANDARD",
                                       series_uid=_uid(cfg.seed, plan.index, "gsi")),
                            tmp / "gsi")
            for name, vol, dtype in (("labels", res.labels, np.uint8),
                                     ("ideal", res.ideal, None), ("clean", res.clean, None)):
                arr = vol.astype(dtype) if dtype else to_hu_int16(vol)
                img = sitk.GetImageFromArray(arr)  # (S, H, W) -> x = W, y = H, z = S
                x0, y0 = res.gsi_grid.origin_mm()
                img.SetOrigin((x0, y0, float(res.gsi_z_mm[0])))
                img.SetSpacing((res.gsi_grid.pixel_mm, res.gsi_grid.pixel_mm, cfg.thickness_mm))
                sitk.WriteImage(img, str(tmp / f"{name}.nii.gz"), useCompression=True)
        truth = dict(res.truth, patient_id=plan.patient_id, implant_type=plan.implant_type,
                     body_region=res.body_region, phantom=res.description,
                     config_fingerprint=config_fingerprint(cfg))
        (tmp / "truth.json").write_text(json.dumps(truth, indent=1))
    return final


#: Settings added after the first release, left out of the fingerprint at their default
#: values, so that folders simulated before they existed still resume.
_LATER_DEFAULTS = {"scanner": DEFAULT_SCANNER, "split_hint": "", "implant_mix": None}
_LATER_ORDINARY_DEFAULTS = {"filter_al_mm": 3.0, "filter_cu_mm": 0.1}


def config_fingerprint(cfg: SimConfig) -> str:
    """sha256 of the settings that shape a patient's data (not the patient count)."""
    d = asdict(cfg)
    d["ordinary"] = asdict(cfg.ordinary_protocol())
    for k in ("patients", "clean_patients", "device", "batch", "preset"):
        d.pop(k)
    for k, v in _LATER_DEFAULTS.items():
        if d[k] == v:
            d.pop(k)
    for k, v in _LATER_ORDINARY_DEFAULTS.items():
        if d["ordinary"][k] == v:
            d["ordinary"].pop(k)
    # The scanner physics enter as the settings they use, so that changing a profile's bowtie,
    # scatter or blur changes the fingerprint; without them the ideal scanner's is unchanged.
    d.pop("scanner_physics")
    d.update(physics_record(cfg))
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def physics_record(cfg: SimConfig) -> dict:
    """``{"scanner_physics": {"ordinary": ..., "gsi": ...}}`` (bowtie, scatter, blur of the two
    scanners), or ``{}`` for the ideal scanner."""
    ordinary, gsi = cfg.physics()
    if ordinary is None:
        return {}
    return {"scanner_physics": {"ordinary": ordinary.to_dict(), "gsi": gsi.to_dict()}}


def _uid(seed: int, index: int, what: str) -> str:
    """Deterministic DICOM UID of a simulated study / series / frame of reference."""
    from .dicom_write import uid_from

    return uid_from(f"artifactgsi-sim/{seed}/{index}/{what}")


def _body_part(region: str) -> str:
    return {"thoracic_spine": "TSPINE", "lumbar_spine": "LSPINE", "pelvis": "PELVIS",
            "hip": "HIP", "femur": "LEG", "knee": "KNEE"}.get(region, "")


#: File at the root of a simulated raw tree recording how it was made; the builder quotes it
#: in the dataset card.
SIMULATION_FILENAME = "simulation.json"


def simulation_record(cfg: SimConfig) -> dict:
    """The settings of a simulated raw tree (JSON-able; nothing identifying)."""
    return {
        "simulator": "ArtifactGSI-Sim",
        "config_fingerprint": config_fingerprint(cfg),
        "size_px": cfg.size, "slices": cfg.slices, "thickness_mm": cfg.thickness_mm,
        "scanner": cfg.scanner, "scanner_description": cfg.profile().description,
        "split_hint": cfg.split_hint,
        "preset": cfg.preset or None,
        "patients": cfg.patients, "clean_patients": cfg.clean_patients,
        "implant_mix": None if cfg.implant_mix is None else dict(zip(
            IMPLANT_CYCLE, cfg.implant_mix, strict=True)),
        "geometry": asdict(FanBeamGeometry.scaled(cfg.size)),
        "ordinary_geometry": asdict(cfg.profile().geometry(cfg.size)),
        "ordinary_protocol": asdict(cfg.ordinary_protocol()),
        "gsi_protocol": asdict(cfg.gsi),
        "gsi_metal_correction": asdict(cfg.gsi.metal_correction_setup()),
        **physics_record(cfg),
    }


def _write_simulation_record(raw: Path, cfg: SimConfig) -> None:
    from .fileio import write_text_atomic

    write_text_atomic(raw / SIMULATION_FILENAME,
                      json.dumps(simulation_record(cfg), indent=1, sort_keys=True) + "\n")


def _write_manifest(raw: Path, rows: list[dict]) -> None:
    tmp = raw / f".manifest.csv.tmp{os.getpid()}"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for r in sorted(rows, key=lambda r: r["patient_id"]):
            w.writerow(r)
    os.replace(tmp, raw / "manifest.csv")


def _manifest_row(cfg: SimConfig, plan: PatientPlan, body_region: str) -> dict:
    implant = plan.implant_type != "none"
    return {"patient_id": plan.patient_id, "implant_type": plan.implant_type,
            "body_region": body_region, "scanner": cfg.profile().scanner_label,
            "has_labels": int(implant and cfg.split_hint != "generalization"),
            "split_hint": cfg.split_hint if implant else "clean"}


def _run_one(args: tuple[SimConfig, PatientPlan, str]) -> dict:
    cfg, plan, raw = args
    torch.set_num_threads(1)  # one thread per worker process: no oversubscription
    res = simulate_patient(cfg, plan)
    write_patient(res, cfg, Path(raw))
    return _manifest_row(cfg, plan, res.body_region)


def simulate_dataset(cfg: SimConfig, raw: Path, workers: int = 1, resume: bool = True,
                     console=None, scheduler: str | None = None) -> dict:
    """Simulate the whole dataset into ``raw``; returns timing statistics.

    One task per patient (:func:`artifactgsi.workers.run_tasks`): in this process, on a
    local Dask cluster of ``workers`` processes, or on the Dask cluster at ``scheduler``
    (whose workers must see ``raw`` at the same path). Every patient depends only on the
    seed and its index and is written atomically, so any number of workers, in any order,
    writes the same bytes. Patients whose folder already exists with its ``truth.json`` are
    kept (``resume``): an interrupted run continues where it stopped and gives the same
    result.
    """
    from .workers import check_workers

    cfg.validate()
    check_workers(workers, scheduler)
    raw = Path(raw)
    # Folders this call creates are removed again if it fails before writing anything in them.
    created = [d for d in (raw, *raw.parents) if not d.exists()]
    try:
        raw.mkdir(parents=True, exist_ok=True)
        probe = raw / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        _remove_empty(created)
        raise ValueError(f"output folder {raw} is not writable: {e.strerror or e}") from None
    try:
        return _simulate_into(cfg, raw, workers, resume, console, scheduler)
    except BaseException:
        # Half-written patients of this run (also of worker processes ended by SIGTERM).
        _remove_partial(raw)
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders of ``folders`` (deepest first) that are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:  # not empty, or already gone: keep what is there
            break


def _remove_partial(raw: Path) -> None:
    """Delete temporary patient folders of interrupted or killed tasks (never complete)."""
    for stale in raw.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _simulate_into(cfg: SimConfig, raw: Path, workers: int, resume: bool, console,
                   scheduler: str | None = None) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .workers import run_tasks

    _remove_partial(raw)
    plans = plan_patients(cfg)
    rows, todo = [], []
    fingerprint = config_fingerprint(cfg)
    for p in plans:
        truth = raw / p.patient_id / "truth.json"
        if resume and truth.exists():
            t = json.loads(truth.read_text())
            if t.get("config_fingerprint") != fingerprint:
                raise ValueError(f"{truth}: this patient was simulated with other settings; "
                                 f"simulate into a new folder (or delete {raw})")
            rows.append(_manifest_row(cfg, p, t["body_region"]))
        else:
            todo.append(p)
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]simulate"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total} patients"), TimeRemainingColumn(), console=console,
                  transient=False) as prog:
        task = prog.add_task("patients", total=len(plans), completed=len(rows))
        prev = torch.get_num_threads()
        try:
            rows += run_tasks(_run_one, [(cfg, p, str(raw)) for p in todo],
                              [p.patient_id for p in todo], workers=workers,
                              scheduler=scheduler, on_done=lambda i, r: prog.advance(task))
        finally:
            torch.set_num_threads(prev)  # the serial path runs _run_one here
    # A worker killed mid-task leaves its temporary folder; its task was run again.
    _remove_partial(raw)
    _write_manifest(raw, rows)
    _write_simulation_record(raw, cfg)
    dt = time.perf_counter() - t0
    n_slices = sum(cfg.slices for _ in todo)
    return {"patients": len(plans), "simulated": len(todo), "seconds": dt,
            "slices_per_s": n_slices / dt if dt > 0 and todo else math.nan}
