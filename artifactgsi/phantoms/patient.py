"""Seeded procedural patients: a body, a scanned region and an optional implant."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..physics.geometry import ImageGrid
from .anatomy import build_anatomy
from .frame import BodyFrame, draw_frame
from .implants import BODY_REGIONS, IMPLANT_REGIONS, IMPLANT_TYPES, ImplantPlan, build_implant
from .raster import Pose2D, Structure, rasterize
from .tissues import METAL_TISSUE


def region_z_range(frame: BodyFrame, region: str) -> tuple[float, float]:
    """z extent (mm) of a body region's anatomy in ``frame``."""
    s = frame.scale
    v = frame.vertebra
    ranges = {
        "thoracic_spine": (v("T12").z_lo - 5 * s, v("T4").z_hi),
        "lumbar_spine": (frame.s1_z - 5 * s, v("L1").z_hi + 8 * s),
        "pelvis": (-60 * s, frame.crest_z + 5 * s),
        "hip": (-95 * s, 45 * s),
        "femur": (-360 * s, -80 * s),
        "knee": (frame.knee_z - 65 * s, frame.knee_z + 55 * s),
    }
    lo, hi = ranges[region]
    return float(lo), float(hi)


def _metal_z_extent(structs: list[Structure]) -> tuple[float, float]:
    """z extent (mm) of the metal structures (exact per solid, see ``Shape.z_extent``)."""
    ext = [st.shape.z_extent() for st in structs if st.tissue in METAL_TISSUE.values()]
    if not ext:
        raise ValueError("implant has no metal part")
    return float(min(e[0] for e in ext)), float(max(e[1] for e in ext))


class Patient:
    """One procedural patient: anatomy, body region and optional implant.

    Attributes:
        seed: the seed everything was drawn from.
        implant_type: one of :data:`IMPLANT_TYPES`.
        body_region: one of :data:`BODY_REGIONS`.
        implant_materials: metals of the implant (``()`` without implant).
        z_range_mm: z extent (mm) of the region's anatomy and the implant: a scan placed inside
            it sees the region.
        implant_z_range_mm: z extent of the metal (exact to 0.01 mm), ``None`` without implant.
        focus_z_mm: level of clinical interest (femoral heads, instrumented levels, plate
            centre; the region centre without implant): where a short scan should be centred.
    """

    def __init__(self, seed: int, implant_type: str, body_region: str, frame: BodyFrame,
                 anatomy: list[Structure], implant: ImplantPlan | None):
        self.seed = seed
        self.implant_type = implant_type
        self.body_region = body_region
        self.frame = frame
        self.anatomy = anatomy
        self.implant = implant
        self.implant_materials: tuple[str, ...] = implant.materials if implant else ()
        lo, hi = region_z_range(frame, body_region)
        if implant is not None:
            self.implant_z_range_mm: tuple[float, float] | None = _metal_z_extent(
                implant.structures)
            ilo, ihi = self.implant_z_range_mm
            lo, hi = min(lo, ilo - 5.0), max(hi, ihi + 5.0)
            self.focus_z_mm = float(implant.focus_z_mm)
        else:
            self.implant_z_range_mm = None
            self.focus_z_mm = 0.5 * (lo + hi)
        self.z_range_mm: tuple[float, float] = (float(lo), float(hi))

    def structures(self, implant: bool = True) -> list[Structure]:
        """Painted structures in order (anatomy, then the implant when ``implant``)."""
        if implant and self.implant is not None:
            return self.anatomy + self.implant.structures
        return self.anatomy

    def rasterize(self, z_mm: float, grid: ImageGrid, *, pose: Pose2D = Pose2D(),
                  implant: bool = True, supersample: int = 3
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Material fractions and labels of the axial slice at ``z_mm``.

        Args:
            z_mm: slice position in patient coordinates (mm, +z towards the head).
            grid: scanner-frame image grid (mm).
            pose: in-plane patient pose, ``p_scanner = R p_patient + t``.
            implant: ``False`` gives the same anatomy with the implant removed and the bone or
                tissue it displaced filled back in (the "clean" image).
            supersample: sub-samples per pixel side (anti-aliasing).

        Returns:
            fractions ``(len(MATERIALS), H, W)`` float32 volume fractions in ``[0, 1]`` with
            ``sum <= 1`` per pixel (air fills the rest) and labels ``(H, W)`` uint8
            (:data:`LABEL_CLASSES`, majority over the sub-samples).
        """
        return rasterize(self.structures(implant), float(z_mm), grid, pose, supersample)

    @cached_property
    def _dimensions(self) -> dict:
        f = self.frame
        z = self.focus_z_mm
        a_m, b_ant, b_post = f.muscle_at(z)
        trunk = f.trunk
        fat = [float(np.interp(z, trunk[:, 0], trunk[:, j])) for j in (4, 5, 6)]
        return {
            "scale": round(f.scale, 4), "fat_factor": round(f.fat, 3),
            "visceral_fat_factor": round(f.visceral, 3),
            "trunk_width_mm_at_focus": round(2 * (a_m + fat[0] + 2.0), 1),
            "trunk_depth_mm_at_focus": round(b_ant + b_post + fat[1] + fat[2] + 4.0, 1),
            "femoral_head_diameter_mm": {("left" if k == 1 else "right"): round(2 * v.head_r, 1)
                                         for k, v in f.femurs.items()},
            "neck_shaft_angle_deg": {("left" if k == 1 else "right"):
                                     round(v.neck_shaft_deg, 1) for k, v in f.femurs.items()},
            "knees_in_plane": ["left" if k == 1 else "right" for k in f.knee_sides],
        }

    def describe(self) -> dict:
        """JSON-able summary: region, implant, metals, sides, z ranges and dimensions."""
        imp = self.implant
        return {
            "generator": "artifactgsi.phantoms",
            "seed": int(self.seed),
            "body_region": self.body_region,
            "implant_type": self.implant_type,
            "implant_materials": list(self.implant_materials),
            "implant_sides": list(imp.sides) if imp else [],
            "implant": imp.info if imp else {},
            "z_range_mm": [round(v, 2) for v in self.z_range_mm],
            "implant_z_range_mm": ([round(v, 2) for v in self.implant_z_range_mm]
                                   if self.implant_z_range_mm else None),
            "focus_z_mm": round(self.focus_z_mm, 2),
            "dimensions": self._dimensions,
        }

    def __repr__(self) -> str:
        return (f"Patient(seed={self.seed}, implant_type={self.implant_type!r}, "
                f"body_region={self.body_region!r}, materials={self.implant_materials})")


def make_patient(seed: int, implant_type: str = "none", body_region: str | None = None
                 ) -> Patient:
    """Build patient ``seed`` with an implant of ``implant_type`` in ``body_region``.

    ``body_region=None`` draws a region compatible with the implant type (hip_prosthesis: hip,
    pelvis; fracture_fixation: femur, knee, pelvis; spinal_fixation: thoracic_spine,
    lumbar_spine; none: any). Deterministic: the same arguments give the same patient.
    """
    if implant_type not in IMPLANT_TYPES:
        raise ValueError(f"make_patient: unknown implant_type {implant_type!r}; expected one of "
                         f"{IMPLANT_TYPES}")
    allowed = IMPLANT_REGIONS[implant_type]
    rng = np.random.default_rng([int(seed), 11])
    if body_region is None:
        body_region = str(allowed[int(rng.integers(len(allowed)))])
    elif body_region not in BODY_REGIONS:
        raise ValueError(f"make_patient: unknown body_region {body_region!r}; expected one of "
                         f"{BODY_REGIONS}")
    elif body_region not in allowed:
        raise ValueError(f"make_patient: implant_type {implant_type!r} is not placed in "
                         f"body_region {body_region!r}; allowed regions: {allowed}")
    knees = "both"
    if body_region == "knee":
        knees = str(rng.choice(["both", "left", "right"], p=[0.5, 0.25, 0.25]))
    frame = draw_frame(int(seed), knees)
    anatomy = build_anatomy(frame)
    implant = build_implant(frame, implant_type, body_region,
                            np.random.default_rng([int(seed), 301]))
    return Patient(int(seed), implant_type, body_region, frame, anatomy, implant)
