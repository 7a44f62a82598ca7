"""Seeded procedural 3D patients for ArtifactGSI-Sim.

``make_patient(seed, implant_type, body_region)`` builds a body (outline with skin, fat and
muscle; organs, bowel gas, vessels; spine, ribs, pelvis, femora, knee) and an optional metal
implant placed on its skeleton. ``Patient.rasterize(z_mm, grid, pose=..., implant=...)`` returns
anti-aliased material volume fractions and segmentation labels of one axial slice.

Coordinates are DICOM patient coordinates (LPS) in mm: ``x`` patient left, ``y`` posterior,
``z`` superior; ``z = 0`` is the level of the hip-joint centres.
"""

from .implants import BODY_REGIONS, IMPLANT_REGIONS, IMPLANT_TYPES
from .patient import Patient, make_patient
from .preview import preview_png
from .raster import Pose2D, Structure, rasterize
from .tissues import LABEL_CLASSES, MATERIALS, METAL_MATERIALS

__all__ = [
    "BODY_REGIONS",
    "IMPLANT_REGIONS",
    "IMPLANT_TYPES",
    "LABEL_CLASSES",
    "MATERIALS",
    "METAL_MATERIALS",
    "Patient",
    "Pose2D",
    "Structure",
    "make_patient",
    "preview_png",
    "rasterize",
]
