"""The dataset contract of ArtifactGSI, defined once.

A leaf module: it imports nothing of this project and no torch, so every part of the project
(the builder, the card, the phantoms, the benchmark, the methods, the tests) can import it.

* Vocabularies: :data:`IMPLANT_TYPES`, :data:`BODY_REGIONS`, :data:`LABEL_NAMES`,
  :data:`SPLIT_HINTS`, the raw manifest's :data:`MANIFEST_COLUMNS`, the configs and their
  splits (:data:`CONFIG_SPLITS`).
* Hounsfield units: the benchmark window :data:`HU_MIN`..:data:`HU_MAX` (-1024..3071 HU) and
  its scaling to [0, 1] (:func:`hu_to_unit01`, :func:`unit01_to_hu`); the metal threshold
  :data:`METAL_THRESHOLD_HU` (paper Eq. 8) and :func:`metal_mask`.
* Columns: :func:`columns_for` and :func:`features_for` per config (``datasets.Features``),
  :data:`COLUMN_DOCS` and :data:`CONFIG_DESCRIPTIONS` (the dataset card's text).
* :class:`PatientRecord`: what the builder knows about one patient, typed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# --------------------------------------------------------------------------- vocabularies
#: Implant types, in ``ClassLabel`` order (index 0 = no implant).
IMPLANT_TYPES: tuple[str, ...] = ("none", "hip_prosthesis", "fracture_fixation",
                                  "spinal_fixation")
#: Body regions, in ``ClassLabel`` order.
BODY_REGIONS: tuple[str, ...] = ("thoracic_spine", "lumbar_spine", "pelvis", "hip", "femur",
                                 "knee")
#: Segmentation classes of the ``labels`` column, by value (the paper's Table 2 classes).
LABEL_NAMES: tuple[str, ...] = ("background", "metal", "left_pelvis", "right_pelvis",
                                "left_femur", "right_femur")
#: Values of ``split_hint`` in the raw ``manifest.csv`` ("" = let the builder split).
SPLIT_HINTS: tuple[str, ...] = ("", "train", "test", "generalization", "clean")
#: Columns of the raw ``manifest.csv``.
MANIFEST_COLUMNS: tuple[str, ...] = ("patient_id", "implant_type", "body_region", "scanner",
                                     "has_labels", "split_hint")
#: Configs of a built dataset and the splits each has.
CONFIG_SPLITS: dict[str, tuple[str, ...]] = {"pairs": ("train", "test"), "clean": ("train",),
                                             "generalization": ("test",),
                                             "aapm": ("train", "test")}


def implant_index(name: str) -> int:
    """Index of an implant type in :data:`IMPLANT_TYPES`; an unknown name is an error (it is
    never silently taken for "none")."""
    try:
        return IMPLANT_TYPES.index(name)
    except ValueError:
        raise ValueError(f"unknown implant type {name!r}; expected one of "
                         f"{', '.join(IMPLANT_TYPES)}") from None


# --------------------------------------------------------------------------- Hounsfield units
#: The benchmark's HU window: images are clipped to it before scaling (12-bit CT range).
HU_MIN = -1024.0
HU_MAX = 3071.0
#: Paper Eq. 8: ``metal_mask`` is ordinary HU > this. Cortical bone stays below ~2000 HU at
#: 120 kVp; titanium (the least dense implant metal) reaches ~3000 HU in ordinary CT even with
#: partial volume at 3.5 mm pixels (ArtifactGSI-Sim, 128 px: 2500 HU gives the best Dice
#: against the true metal label for Ti pedicle screws, 0.80).
METAL_THRESHOLD_HU = 2500.0


def hu_to_unit01(hu: Any, hu_min: float = HU_MIN, hu_max: float = HU_MAX) -> Any:
    """HU -> [0, 1]: clip to ``[hu_min, hu_max]`` then scale linearly (``hu_min`` -> 0).

    Works on numpy arrays and torch tensors alike (returns the same kind); use a float input.
    """
    if not hu_max > hu_min:
        raise ValueError(f"hu_max ({hu_max}) must be above hu_min ({hu_min})")
    return (hu.clip(hu_min, hu_max) - hu_min) / (hu_max - hu_min)


def unit01_to_hu(unit: Any, hu_min: float = HU_MIN, hu_max: float = HU_MAX) -> Any:
    """[0, 1] -> HU, the inverse of :func:`hu_to_unit01` (values outside [0, 1] are clipped)."""
    return unit.clip(0.0, 1.0) * (hu_max - hu_min) + hu_min


def metal_mask(hu: Any, threshold_hu: float = METAL_THRESHOLD_HU) -> Any:
    """Paper Eq. 8: bool mask of pixels above ``threshold_hu`` (numpy or torch input)."""
    return hu > threshold_hu


# --------------------------------------------------------------------------- columns
#: Image columns (2D, int16 HU) and mask columns (2D, uint8).
HU_IMAGE_COLUMNS: tuple[str, ...] = ("ordinary", "gsi", "ideal", "reference")
MASK_COLUMNS: tuple[str, ...] = ("metal_mask", "labels")
#: Columns that may be null (no ideal image for real data, no labels where not annotated).
NULLABLE_COLUMNS: tuple[str, ...] = ("ideal", "labels")

_COMMON = ("patient_id", "slice_index", "z_mm", "ordinary")
_META = ("implant_type", "body_region", "pixel_spacing_mm", "slice_thickness_mm", "kvp",
         "manufacturer", "model")
_PAIRS_ONLY = ("gsi_kev", "ordinary_slice_index", "match_score", "affine", "registration_ncc")
_COLUMNS: dict[str, tuple[str, ...]] = {
    "pairs": (*_COMMON, "gsi", "metal_mask", "ideal", "labels", *_META, *_PAIRS_ONLY),
    "generalization": (*_COMMON, "metal_mask", *_META),
    "clean": (*_COMMON, *_META),
    # The AAPM CT-MAR Grand Challenge's cases (artifactgsi import-aapm): no GSI.
    "aapm": (*_COMMON, "reference", "metal_mask", "implant_type", "anatomy",
             "pixel_spacing_mm", "kvp", "manufacturer", "model"),
}


def _check_config(config: str) -> None:
    if config not in CONFIG_SPLITS:
        raise ValueError(f"unknown config {config!r}; expected one of "
                         f"{', '.join(CONFIG_SPLITS)}")


def columns_for(config: str) -> tuple[str, ...]:
    """Column names of a config, in the order they are stored."""
    _check_config(config)
    return _COLUMNS[config]


def features_for(config: str, shape: tuple[int, int]):
    """The ``datasets.Features`` of a config for images of ``shape`` ``(H, W)`` pixels."""
    from datasets import Array2D, ClassLabel, Features, List, Value

    _check_config(config)
    types = {
        "patient_id": Value("string"),
        "slice_index": Value("int32"),
        "z_mm": Value("float64"),
        "ordinary": Array2D(shape, "int16"),
        "gsi": Array2D(shape, "int16"),
        "metal_mask": Array2D(shape, "uint8"),
        "ideal": Array2D(shape, "int16"),
        "reference": Array2D(shape, "int16"),
        "anatomy": Value("string"),
        "labels": Array2D(shape, "uint8"),
        "implant_type": ClassLabel(names=list(IMPLANT_TYPES)),
        "body_region": ClassLabel(names=list(BODY_REGIONS)),
        "pixel_spacing_mm": Value("float64"),
        "slice_thickness_mm": Value("float64"),
        "kvp": Value("float32"),
        "manufacturer": Value("string"),
        "model": Value("string"),
        "gsi_kev": Value("float32"),
        "ordinary_slice_index": Value("int32"),
        "match_score": Value("float32"),
        "affine": List(Value("float64"), length=6),
        "registration_ncc": Value("float32"),
    }
    return Features({name: types[name] for name in columns_for(config)})


#: What each config holds (dataset card).
CONFIG_DESCRIPTIONS: dict[str, str] = {
    "pairs": "an ordinary (single-energy) slice registered onto the GSI grid and its GSI "
             "virtual monochromatic slice, the metal mask, and where available the ideal "
             "image and segmentation labels",
    "clean": "ordinary slices of patients without implant (decoder training)",
    "generalization": "ordinary slices of implant patients without GSI (other scanners); "
                      "no reference image",
    "aapm": "cases of the AAPM CT-MAR Grand Challenge's format: the image with metal "
            "(`ordinary`), the same scan without metal (`reference`) and the true metal mask; "
            "no GSI",
}

#: Column documentation (dataset card and docs/dataset.md): ``(columns, meaning)``.
COLUMN_DOCS: tuple[tuple[str, str], ...] = (
    ("patient_id", "pseudonym `P` + 16 hex digits (HMAC-SHA256 of the hospital id with a "
                   "secret key that is not published)"),
    ("slice_index", "slice number in the patient's GSI series (pairs) or ordinary series, "
                    "ascending in z; neighbours of a slice share `patient_id`"),
    ("z_mm", "slice position along the patient axis (mm, DICOM patient coordinates)"),
    ("ordinary", "int16 HU, exactly as stored by the scanner (pairs: registered onto the GSI "
                 "grid, linear interpolation)"),
    ("gsi", "int16 HU of the GSI virtual monochromatic image (pairs)"),
    ("metal_mask", "uint8, 1 where `ordinary` > the metal threshold (paper Eq. 8); aapm "
                   "config: the challenge's true metal mask"),
    ("ideal", "int16 HU, simulated data only: noise- and artifact-free monochromatic image "
              "(null for real data)"),
    ("reference", "int16 HU, aapm config: the same scan simulated without the metal (the "
                  "challenge's ground truth)"),
    ("anatomy", "aapm config: `body` (400 mm field of view) or `head` (220.16 mm)"),
    ("labels", "uint8 segmentation on the GSI grid: 0 background, 1 metal implant, 2 left "
               "pelvis, 3 right pelvis, 4 left femur, 5 right femur (null where not annotated)"),
    ("implant_type", ", ".join(IMPLANT_TYPES)),
    ("body_region", ", ".join(BODY_REGIONS)),
    ("pixel_spacing_mm, slice_thickness_mm", "geometry of the stored grid"),
    ("kvp, gsi_kev", "tube voltage of the ordinary scan; monochromatic energy of the GSI image"),
    ("manufacturer, model", "scanner"),
    ("ordinary_slice_index", "the ordinary slice that was matched (pairs)"),
    ("match_score", "paper Eq. 1: NCC of the ordinary and GSI slices that were matched"),
    ("affine", "paper Eq. 2: `[a11, a12, b1, a21, a22, b2]`; a GSI point p (mm) is at "
               "`A p + b` in the ordinary series"),
    ("registration_ncc", "NCC after registration (body, metal excluded, HU clipped to "
                         "[-1000, 1500])"),
)


def _documented() -> set[str]:
    return {c.strip() for names, _ in COLUMN_DOCS for c in names.split(",")}


# --------------------------------------------------------------------------- patient record
ROLES: tuple[str, ...] = tuple(CONFIG_SPLITS)


@dataclass
class PatientRecord:
    """What the builder knows about one patient after reading, matching and registering it.

    Written as JSON beside the patient's arrays (the build cache) and read back on resume;
    nothing in it identifies the patient (the raw id is only in the builder's console).

    Attributes:
        pseudonym: keyed pseudonym (``patient_id`` of the rows).
        role: the config the patient goes to (``pairs``, ``clean``, ``generalization``).
        implant_type, body_region: from the raw manifest (:data:`IMPLANT_TYPES`,
            :data:`BODY_REGIONS`).
        inputs: fingerprint of the input files (cache validity).
        warnings: messages for the operator.
        skipped: why the patient gave no row (``None`` if used).
        pixel_spacing_mm, slice_thickness_mm: of the stored grid (GSI for pairs), mm.
        kvp: ordinary tube voltage (kV); manufacturer, model: scanner.
        n_ordinary: slices of the ordinary series; rows: rows written; shape: ``[H, W]``.
        gsi_kev: energy of the GSI image (keV), ``None`` without GSI.
        n_gsi, unmatched_ordinary, z_offset_mm, flagged, match_score, ncc_before,
            registration_ncc: slice matching and registration (pairs only).
        has_ideal, has_labels: whether the ``ideal`` / ``labels`` columns are filled.
    """

    pseudonym: str
    role: str
    implant_type: str
    body_region: str
    inputs: str = ""
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None
    pixel_spacing_mm: float | None = None
    slice_thickness_mm: float | None = None
    kvp: float | None = None
    manufacturer: str = ""
    model: str = ""
    n_ordinary: int = 0
    rows: int = 0
    shape: list[int] = field(default_factory=list)
    gsi_kev: float | None = None
    n_gsi: int = 0
    unmatched_ordinary: int = 0
    z_offset_mm: float = 0.0
    flagged: list[dict[str, Any]] = field(default_factory=list)
    match_score: list[float] = field(default_factory=list)
    ncc_before: list[float] = field(default_factory=list)
    registration_ncc: list[float] = field(default_factory=list)
    has_ideal: bool = False
    has_labels: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"PatientRecord: role {self.role!r} is not one of "
                             f"{', '.join(ROLES)}")
        if self.implant_type not in IMPLANT_TYPES:
            raise ValueError(f"PatientRecord: implant_type {self.implant_type!r} is not one of "
                             f"{', '.join(IMPLANT_TYPES)}")
        if self.body_region not in BODY_REGIONS:
            raise ValueError(f"PatientRecord: body_region {self.body_region!r} is not one of "
                             f"{', '.join(BODY_REGIONS)}")

    @property
    def used(self) -> bool:
        """The patient gave rows (not skipped)."""
        return self.skipped is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``skipped`` left out when ``None``)."""
        d = asdict(self)
        if d["skipped"] is None:
            del d["skipped"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatientRecord:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a cache of another format)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PatientRecord: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


__all__ = [
    "BODY_REGIONS", "COLUMN_DOCS", "CONFIG_DESCRIPTIONS", "CONFIG_SPLITS", "HU_IMAGE_COLUMNS",
    "HU_MAX", "HU_MIN", "IMPLANT_TYPES", "LABEL_NAMES", "MANIFEST_COLUMNS", "MASK_COLUMNS",
    "METAL_THRESHOLD_HU", "NULLABLE_COLUMNS", "PatientRecord", "ROLES", "SPLIT_HINTS",
    "columns_for", "features_for", "hu_to_unit01", "implant_index", "metal_mask",
    "unit01_to_hu",
]
