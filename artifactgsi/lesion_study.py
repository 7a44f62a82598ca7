"""Paired lesion scans for task-based evaluation: the same patient and slices scanned with and
without small lesions, with independent noise.

:func:`make_lesion_study` simulates implant patients of ArtifactGSI-Sim (the same seeded
patients, implants, GSI grids and physics as ``artifactgsi simulate``), plants lesions
(:mod:`artifactgsi.phantoms.lesions`) at known distances from the metal, and scans every
patient twice: once as it is (``absent``) and once with its lesions (``present``). Each scan
gets the ordinary 120 kVp image, the GSI virtual monochromatic image and the noise-free ideal
image through :class:`artifactgsi.physics.scan.Scanner`, with its own noise draw.

Unlike ``artifactgsi simulate``, both series are reconstructed on the GSI grid with no
patient motion between them: the study needs the same pixel in every image, which is what a
perfectly registered dataset row holds.

Folder layout (written under a temporary name, renamed into place when complete)::

    STUDY/
      study.json          settings, patients, every lesion (the truth), counts, file sha256
      README.md           the study's card: how it was made, lesion types, counts
      scans/<id>.npz      per patient: ordinary / gsi / ideal (2, S, H, W) int16 HU with
                          axis 0 = (absent, present); metal_mask (2, S, H, W) uint8 (paper
                          Eq. 8 on each ordinary image); labels (S, H, W) uint8; z_mm (S,)

:class:`LesionStudy` reads it back (checking format and file hashes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactGSIError
from .fileio import replace_dir, sha256_file, write_text_atomic
from .phantoms.lesions import (
    DEFAULT_BANDS_MM,
    DEFAULT_LESION_TYPES,
    HOST_MATERIALS,
    Lesion,
    LesionType,
    band_label,
    check_bands,
)
from .physics.scan import GSIProtocol

#: Format tag of ``study.json``.
STUDY_FORMAT = "artifactgsi-lesion-study/1"
#: Scan order along axis 0 of the image arrays.
SCANS: tuple[str, str] = ("absent", "present")


class LesionStudyError(ArtifactGSIError, ValueError):
    """A lesion study folder that cannot be read (names the file and the problem)."""


@dataclass(frozen=True)
class LesionStudyConfig:
    """Settings of one lesion study. Sizes in pixels, lengths in mm.

    The evaluated slices (where lesion centres lie) are every ``spacing``-th slice starting
    at ``margin``, so each has ``margin`` neighbouring slices on both sides for volumetric
    methods and lesions on different evaluated slices are ``spacing * thickness_mm`` apart.
    """

    patients: int = 24  # implant patients (the implant types cycle as in the simulator)
    slices: int = 13  # slices per scan
    size: int = 128
    # 1: other patients than the demo dataset's (the standard preset's seed 2025; the earlier
    # small set's 0), on which the shipped weights were trained.
    seed: int = 1
    thickness_mm: float = 2.5
    margin: int = 2  # neighbour slices kept on each side of an evaluated slice
    spacing: int = 4  # evaluated slices are this many slices apart
    lesion_types: tuple[LesionType, ...] = DEFAULT_LESION_TYPES
    bands_mm: tuple[tuple[float, float], ...] = DEFAULT_BANDS_MM
    roi_mm: float = 40.0  # square kept free of other lesions around each lesion
    per_slice: int = 1  # lesions per (evaluated slice, band, type) at most
    supersample: int = 3
    batch: int = 4  # slices simulated together
    device: str = "cpu"
    gsi: GSIProtocol = field(default_factory=GSIProtocol)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad setting."""
        checks = [
            (self.patients >= 1, f"--patients must be >= 1, got {self.patients}"),
            (self.size >= 32, f"--size must be >= 32 pixels, got {self.size}"),
            (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
            (self.spacing >= 1, f"spacing must be >= 1, got {self.spacing}"),
            (self.slices >= 2 * self.margin + 1,
             f"--slices must be >= 2 * margin + 1 = {2 * self.margin + 1}, got {self.slices}"),
            (self.thickness_mm > 0, f"slice thickness must be > 0 mm, got {self.thickness_mm}"),
            (self.roi_mm > 0, f"roi_mm must be > 0, got {self.roi_mm}"),
            (self.per_slice >= 1, f"per_slice must be >= 1, got {self.per_slice}"),
            (len(self.lesion_types) >= 1, "no lesion types given"),
            (len({t.name for t in self.lesion_types}) == len(self.lesion_types),
             "lesion type names must be unique"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        check_bands(self.bands_mm)
        from .simulate import check_device

        check_device(self.device)

    def centre_slices(self) -> list[int]:
        """Indices of the evaluated slices."""
        return list(range(self.margin, self.slices - self.margin, self.spacing))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lesion_types"] = [asdict(t) for t in self.lesion_types]
        d["bands_mm"] = [list(b) for b in self.bands_mm]
        d.pop("device")
        d.pop("batch")
        return d


def _sim_config(cfg: LesionStudyConfig):
    from .simulate import SimConfig

    return SimConfig(patients=cfg.patients, slices=cfg.slices, size=cfg.size, seed=cfg.seed,
                     clean_patients=0, thickness_mm=cfg.thickness_mm, device=cfg.device,
                     supersample=cfg.supersample, batch=cfg.batch, gsi=cfg.gsi)


@dataclass
class LesionPatient:
    """One simulated patient of a study: images ``(2, S, H, W)`` float32 HU (axis 0:
    :data:`SCANS`), labels ``(S, H, W)``, slice positions and its lesions."""

    patient_id: str
    implant_type: str
    body_region: str
    seed: int
    pixel_mm: float
    grid: dict[str, Any]
    z_mm: np.ndarray
    ordinary: np.ndarray
    gsi: np.ndarray
    ideal: np.ndarray
    labels: np.ndarray
    lesions: list[Lesion]


def simulate_lesion_patient(cfg: LesionStudyConfig, plan, scanner=None) -> LesionPatient:
    """Plant lesions in one patient of the simulator's plan and scan it without and with them.

    ``plan`` is a :class:`artifactgsi.simulate.PatientPlan` (its seed, implant and GSI grid);
    ``scanner`` the GSI scanner of :func:`artifactgsi.simulate.make_scanners` (built when not
    given). Noise is drawn in a fixed order from one generator seeded by the patient, the
    absent scan's rays first, so the two scans have independent noise.
    """
    import torch

    from .phantoms import MATERIALS, make_patient
    from .phantoms.lesions import SliceContext, apply_lesions, place_lesions
    from .physics.geometry import ImageGrid
    from .simulate import _grid_json, _slice_positions, make_scanners

    sim = _sim_config(cfg)
    if scanner is None:
        ordinary_scanner, scanner = make_scanners(sim)
        if ordinary_scanner is not scanner:  # the default profile: one scanner
            raise ValueError("a lesion study uses the GSI scanner for both series")
    patient = make_patient(plan.seed, plan.implant_type)
    z = _slice_positions(patient, sim)
    n = cfg.size
    grid = ImageGrid((n, n), plan.gsi_fov_mm / n, plan.gsi_centre_mm)
    ss = cfg.supersample
    hosts = sorted({t.host_material for t in cfg.lesion_types})
    contexts, labels = [], []
    for i, zi in enumerate(z):
        frac, lab = patient.rasterize(float(zi), grid, supersample=ss)
        lab_np = lab.numpy()
        contexts.append(SliceContext(
            index=i, z_mm=float(zi),
            host_fraction={m: frac[MATERIALS.index(m)].numpy() for m in hosts},
            metal=lab_np == 1))
        labels.append(lab_np)
    rng = np.random.default_rng([cfg.seed, plan.index, 4242])
    lesions = place_lesions(contexts, cfg.centre_slices(), grid, cfg.lesion_types,
                            cfg.bands_mm, rng, kev=cfg.gsi.kev, roi_mm=cfg.roi_mm,
                            per_slice=cfg.per_slice, id_prefix=f"{plan.patient_id}-L")

    obj = scanner.geom.object_grid
    gen = torch.Generator(device=cfg.device).manual_seed(plan.seed)
    out: dict[str, list[np.ndarray]] = {"ordinary": [], "gsi": [], "ideal": []}
    for start in range(0, cfg.slices, cfg.batch):
        idx = list(range(start, min(cfg.slices, start + cfg.batch)))
        absent = [patient.rasterize(float(z[i]), obj, supersample=ss)[0] for i in idx]
        present = [apply_lesions(f, lesions, float(z[i]), obj, supersample=ss)
                   for f, i in zip(absent, idx, strict=True)]
        stack = torch.stack(absent + present)  # (2b, M, N, N)
        used = [m for m in range(len(MATERIALS)) if stack[:, m].any()]
        mats = tuple(MATERIALS[m] for m in used)
        lines = scanner.project(stack[:, used])
        b = len(idx)
        for key, img in (("ordinary", scanner.ordinary(lines, mats, grid, gen)),
                         ("gsi", scanner.gsi(lines, mats, grid, gen)),
                         ("ideal", scanner.monochromatic(lines, mats, grid))):
            arr = img[:, 0].cpu().numpy()
            out[key].append(np.stack([arr[:b], arr[b:]]))  # (2, b, H, W)

    def cat(k: str) -> np.ndarray:
        return np.concatenate(out[k], axis=1).astype(np.float32)

    return LesionPatient(
        patient_id=plan.patient_id, implant_type=plan.implant_type,
        body_region=patient.body_region, seed=plan.seed, pixel_mm=float(grid.pixel_mm),
        grid=_grid_json(grid), z_mm=np.asarray(z, np.float64), ordinary=cat("ordinary"),
        gsi=cat("gsi"), ideal=cat("ideal"), labels=np.stack(labels).astype(np.uint8),
        lesions=lesions)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def write_patient_scans(p: LesionPatient, folder: Path) -> Path:
    """``folder/<patient>.npz`` with int16 HU images and uint8 masks (see module docstring)."""
    from .schema import metal_mask
    from .simulate import to_hu_int16

    ordinary = to_hu_int16(p.ordinary)
    path = Path(folder) / f"{p.patient_id}.npz"
    _save_npz(path, {
        "ordinary": ordinary, "gsi": to_hu_int16(p.gsi), "ideal": to_hu_int16(p.ideal),
        "metal_mask": metal_mask(ordinary.astype(np.float32)).astype(np.uint8),
        "labels": p.labels, "z_mm": p.z_mm})
    return path


def lesion_counts(lesions: Sequence[Lesion], types: Sequence[LesionType],
                  bands: Sequence[tuple[float, float]]) -> dict[str, dict[str, int]]:
    """``{type: {band: n}}`` (every type and band listed, zeros included)."""
    out = {t.name: {band_label(b): 0 for b in bands} for t in types}
    for les in lesions:
        out[les.type][les.band] += 1
    return out


def make_lesion_study(cfg: LesionStudyConfig, out: Path,
                      progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Simulate the study into ``out`` (replaced atomically when complete); returns
    ``study.json``'s content."""
    from .simulate import make_scanners, plan_patients, simulation_record

    cfg.validate()
    sim = _sim_config(cfg)
    _, scanner = make_scanners(sim)

    def patients() -> Iterator[LesionPatient]:
        for plan in plan_patients(sim):
            yield simulate_lesion_patient(cfg, plan, scanner)

    return write_lesion_study(cfg, patients(), out, progress=progress,
                              simulator=simulation_record(sim))


def write_lesion_study(cfg: LesionStudyConfig, patients: Iterable[LesionPatient], out: Path,
                       progress: Callable[[int], None] | None = None,
                       simulator: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write patients (simulated, or made otherwise, e.g. by tests) as a lesion study folder:
    under a temporary name, renamed to ``out`` when complete. Returns ``study.json``'s
    content."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "scans").mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        records, all_lesions = [], []
        for p in patients:
            path = write_patient_scans(p, tmp / "scans")
            records.append({
                "patient_id": p.patient_id, "implant_type": p.implant_type,
                "body_region": p.body_region, "seed": p.seed, "pixel_mm": p.pixel_mm,
                "grid": p.grid, "z_mm": [round(float(v), 4) for v in p.z_mm],
                "file": f"scans/{path.name}", "sha256": sha256_file(path),
                "lesions": [les.to_dict() for les in p.lesions]})
            all_lesions += p.lesions
            if progress:
                progress(1)
        counts = lesion_counts(all_lesions, cfg.lesion_types, cfg.bands_mm)
        record = {
            "format": STUDY_FORMAT,
            "created_by": _version(),
            "config": cfg.to_dict(),
            "config_fingerprint": hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True)
                                                 .encode()).hexdigest()[:16],
            "scans": list(SCANS),
            "centre_slices": cfg.centre_slices(),
            "bands": [band_label(b) for b in cfg.bands_mm],
            "lesion_types": [asdict(t) | {"host_material": HOST_MATERIALS[t.tissue]}
                             for t in cfg.lesion_types],
            "counts": counts,
            "n_lesions": len(all_lesions),
            "simulator": simulator,
            "seconds": round(time.perf_counter() - t0, 1),
            "patients": records,
        }
        write_text_atomic(tmp / "study.json", json.dumps(record, indent=1) + "\n")
        write_text_atomic(tmp / "README.md", render_study_card(record))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _version() -> str:
    import importlib.metadata

    try:
        return "artifactgsi " + importlib.metadata.version("artifactgsi")
    except importlib.metadata.PackageNotFoundError:
        return "artifactgsi (not installed)"


def render_study_card(record: dict[str, Any]) -> str:
    """The study's README.md: what it is, how it was made, the lesion types and counts."""
    cfg = record["config"]
    bands = record["bands"]
    lines = [
        "# ArtifactGSI lesion study",
        "",
        "Paired simulated scans for task-based evaluation of metal artifact reduction: every "
        "patient is scanned twice, without (`absent`) and with (`present`) small lesions, with "
        "independent noise. Each scan has the ordinary 120 kVp image, the GSI virtual "
        f"monochromatic image at {cfg['gsi']['kev']:g} keV and the noise-free ideal image, all on "
        "the GSI grid (no motion between the series). Made with "
        + ("ArtifactGSI-Sim " if record.get("simulator") else "")
        + f"(`{record['created_by']}`).",
        "",
        f"- {len(record['patients'])} implant patients, {cfg['slices']} slices of "
        f"{cfg['thickness_mm']:g} mm, {cfg['size']} x {cfg['size']} px, seed {cfg['seed']}",
        f"- lesion centres on slices {record['centre_slices']} (each with {cfg['margin']} "
        "neighbouring slices on both sides)",
        f"- no other lesion within a {cfg['roi_mm']:g} mm square around each lesion",
        f"- {record['n_lesions']} lesions; distance to the metal = lesion centre to the nearest "
        "metal pixel centre on its slice",
        "",
        "## Lesion types",
        "",
        "Contrast is the HU difference to the host at the ideal image's keV (a density change "
        "of the host tissue inside a sphere).",
        "",
        "| type | tissue | host material | diameter (mm) | contrast (HU) | "
        + " | ".join(bands) + " |",
        "|---|---|---|---|---|" + "---|" * len(bands),
    ]
    for t in record["lesion_types"]:
        c = record["counts"][t["name"]]
        lines.append(f"| {t['name']} | {t['tissue']} | {t['host_material']} | "
                     f"{t['diameter_mm']:g} | {t['contrast_hu']:+g} | "
                     + " | ".join(str(c[b]) for b in bands) + " |")
    lines += [
        "",
        "## Files",
        "",
        "- `study.json`: settings, every patient (implant, region, grid, slice positions, file "
        "sha256) and every lesion (id, type, centre mm, radius mm, contrast HU, slice, pixel, "
        "distance to the metal mm, band)",
        "- `scans/<patient>.npz`: `ordinary`, `gsi`, `ideal` (2, S, H, W) int16 HU, axis 0 = "
        "(absent, present); `metal_mask` (2, S, H, W) uint8 (ordinary > 2500 HU); `labels` "
        "(S, H, W) uint8; `z_mm` (S,)",
        "",
        "Read it with `artifactgsi.lesion_study.LesionStudy(path)`; score methods on it with "
        "`marbench detect run` (docs/detect.md).",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class StudyPatient:
    """One patient's entry of ``study.json``."""

    patient_id: str
    implant_type: str
    body_region: str
    pixel_mm: float
    z_mm: tuple[float, ...]
    file: str
    sha256: str
    lesions: tuple[Lesion, ...]


@dataclass(frozen=True)
class PatientScans:
    """A patient's arrays: ``images[image][scan]`` ``(S, H, W)`` float32 HU with image in
    ``ordinary`` / ``gsi`` / ``ideal`` and scan in :data:`SCANS`; ``metal_mask[scan]``
    ``(S, H, W)`` bool; ``labels`` ``(S, H, W)`` uint8."""

    patient: StudyPatient
    images: dict[str, dict[str, np.ndarray]]
    metal_mask: dict[str, np.ndarray]
    labels: np.ndarray


class LesionStudy:
    """A lesion study folder, read back (see the module docstring for the layout).

    Raises:
        LesionStudyError: the folder, ``study.json`` or a scan file is missing, of another
            format, or (with ``verify``) a scan file's sha256 differs from the record.
    """

    def __init__(self, path: Path | str, verify: bool = True) -> None:
        self.path = Path(path)
        meta = self.path / "study.json"
        if not meta.is_file():
            raise LesionStudyError(f"{self.path}: no study.json; make a lesion study with "
                                   "`marbench detect make --out DIR`")
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LesionStudyError(f"{meta}: not valid JSON ({e})") from None
        if not isinstance(record, dict) or record.get("format") != STUDY_FORMAT:
            found = record.get("format") if isinstance(record, dict) else type(record).__name__
            raise LesionStudyError(f"{meta}: format is {found!r}, expected {STUDY_FORMAT!r}")
        self.record = record
        self.sha256 = sha256_file(meta)
        try:
            cfg = record["config"]
            self.lesion_types = tuple(LesionType(**t) for t in cfg["lesion_types"])
            self.bands_mm = tuple((float(a), float(b)) for a, b in cfg["bands_mm"])
            self.bands = tuple(band_label(b) for b in self.bands_mm)
            self.roi_mm = float(cfg["roi_mm"])
            self.kev = float(cfg["gsi"]["kev"])
            self.patients = tuple(StudyPatient(
                patient_id=p["patient_id"], implant_type=p["implant_type"],
                body_region=p["body_region"], pixel_mm=float(p["pixel_mm"]),
                z_mm=tuple(float(z) for z in p["z_mm"]), file=p["file"], sha256=p["sha256"],
                lesions=tuple(Lesion.from_dict(d) for d in p["lesions"]))
                for p in record["patients"])
        except (KeyError, TypeError, ValueError) as e:
            raise LesionStudyError(f"{meta}: not a complete lesion study record ({e!r})") \
                from None
        for p in self.patients:
            f = self.path / p.file
            if not f.is_file():
                raise LesionStudyError(f"{f}: missing (listed for patient {p.patient_id} in "
                                       f"{meta})")
            if verify and sha256_file(f) != p.sha256:
                raise LesionStudyError(f"{f}: sha256 differs from the one in {meta}; the file "
                                       "was changed or damaged, make the study again")

    @property
    def lesions(self) -> list[Lesion]:
        return [les for p in self.patients for les in p.lesions]

    def __len__(self) -> int:
        return len(self.patients)

    def load(self, patient: StudyPatient) -> PatientScans:
        """The arrays of one patient (float32 HU, bool masks)."""
        f = self.path / patient.file
        try:
            with np.load(f) as z:
                arr = {k: z[k] for k in ("ordinary", "gsi", "ideal", "metal_mask", "labels")}
        except (OSError, KeyError, ValueError) as e:
            raise LesionStudyError(f"{f}: cannot read the scans ({e})") from None
        s = len(patient.z_mm)
        for k in ("ordinary", "gsi", "ideal", "metal_mask"):
            if arr[k].ndim != 4 or arr[k].shape[:2] != (2, s):
                raise LesionStudyError(f"{f}: {k} has shape {arr[k].shape}, expected "
                                       f"(2, {s}, H, W)")
        images = {k: {scan: arr[k][i].astype(np.float32) for i, scan in enumerate(SCANS)}
                  for k in ("ordinary", "gsi", "ideal")}
        mask = {scan: arr["metal_mask"][i] != 0 for i, scan in enumerate(SCANS)}
        return PatientScans(patient, images, mask, arr["labels"])

    def __iter__(self) -> Iterator[PatientScans]:
        for p in self.patients:
            yield self.load(p)
