"""Small low-contrast lesions planted in a phantom at known distances from its metal.

A lesion is a sphere of its host tissue at a changed density: soft-tissue lesions are hypo-
or hyperdense spots in muscle and organs, bone lesions are lytic (less dense) or sclerotic
(denser) spots in trabecular bone. Its contrast is given in HU at the monochromatic energy of
the ideal image (the GSI keV): inside the sphere the host material's volume fraction is scaled
by ``1 + density_scale`` with

    density_scale = contrast_hu * mu_water(keV) / (1000 * mu_host(keV)),

so a pixel fully inside a lesion differs from its surroundings by exactly ``contrast_hu`` in
the noise-free monochromatic image before the scanner's resolution blurs it. In the ordinary
(120 kVp) and GSI images the same density change gives the contrast the physics gives (for
bone it is larger at lower energies).

Placement (:func:`place_lesions`) works on the axial slices of one scan on the image grid
the lesions are measured on (the GSI grid): a lesion's centre lies on a slice, its disc lies
in host tissue (every pixel it covers at least 90 % host), it touches no metal on any slice
it crosses, and no other lesion enters the square region of interest (``roi_mm``) around it
on its slice.
Its distance to the metal is measured on the slice's metal label: the distance from the
lesion centre to the centre of the nearest metal pixel, in mm. Distances are grouped in
bands (default 0-15, 15-30, 30-60 mm).

Coordinates are patient coordinates in mm (``x`` left, ``y`` posterior, ``z`` superior), as in
:mod:`artifactgsi.phantoms`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..physics.geometry import ImageGrid
from .raster import Pose2D, Structure, rasterize
from .shapes import Sphere
from .tissues import MATERIALS, Tissue

__all__ = [
    "DEFAULT_BANDS_MM",
    "DEFAULT_LESION_TYPES",
    "HOST_MATERIALS",
    "Lesion",
    "LesionType",
    "SliceContext",
    "apply_lesions",
    "band_label",
    "density_scale",
    "lesion_coverage",
    "metal_distance_mm",
    "parse_lesion_type",
    "place_lesions",
]

#: Host material of each lesion tissue (tables of :mod:`artifactgsi.physics.materials`).
HOST_MATERIALS: dict[str, str] = {"soft": "soft_tissue", "bone": "trabecular_bone"}
# The painted tissue whose material fraction is the lesion's coverage (any pure tissue works:
# only the coverage of the sphere is read from the rasterised fractions).
_COVERAGE_TISSUE = Tissue.SOFT
_COVERAGE_MATERIAL = MATERIALS.index("soft_tissue")


@dataclass(frozen=True)
class LesionType:
    """One kind of lesion of a study.

    Attributes:
        name: short key (``soft_hypo``, ``lytic``); tables and results use it.
        tissue: ``"soft"`` (in soft tissue) or ``"bone"`` (in trabecular bone).
        diameter_mm: sphere diameter in mm.
        contrast_hu: HU difference to the host at the ideal image's keV (negative: hypodense /
            lytic, positive: hyperdense / sclerotic).
    """

    name: str
    tissue: str
    diameter_mm: float
    contrast_hu: float

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"lesion type name {self.name!r}: use letters, digits, '_' or '-'")
        if self.tissue not in HOST_MATERIALS:
            raise ValueError(f"lesion type {self.name!r}: tissue {self.tissue!r} is not one of "
                             f"{', '.join(HOST_MATERIALS)}")
        if not (self.diameter_mm > 0 and math.isfinite(self.diameter_mm)):
            raise ValueError(f"lesion type {self.name!r}: diameter must be > 0 mm, got "
                             f"{self.diameter_mm}")
        if not (self.contrast_hu != 0 and math.isfinite(self.contrast_hu)):
            raise ValueError(f"lesion type {self.name!r}: contrast must be a non-zero number of "
                             f"HU, got {self.contrast_hu}")

    @property
    def radius_mm(self) -> float:
        return 0.5 * self.diameter_mm

    @property
    def host_material(self) -> str:
        return HOST_MATERIALS[self.tissue]


#: The default lesions. Sizes are for images of about 1-3.5 mm pixels: a 10 mm lesion spans
#: about 3 pixels at 128 px over a 450 mm field of view, 12 at 512 px. Soft-tissue contrasts
#: of +-30 HU are those of hypo- or hyperdense metastases and abscesses on non-enhanced CT;
#: +-100 HU in trabecular bone (about +200 HU at 100 keV) is a moderate lytic or sclerotic
#: focus.
DEFAULT_LESION_TYPES: tuple[LesionType, ...] = (
    LesionType("soft_hypo", "soft", 10.0, -30.0),
    LesionType("soft_hyper", "soft", 10.0, 30.0),
    LesionType("lytic", "bone", 10.0, -100.0),
    LesionType("sclerotic", "bone", 10.0, 100.0),
)

#: Bands of distance from the metal (lesion centre to the nearest metal pixel), mm, [lo, hi).
DEFAULT_BANDS_MM: tuple[tuple[float, float], ...] = ((0.0, 15.0), (15.0, 30.0), (30.0, 60.0))


def parse_lesion_type(text: str) -> LesionType:
    """``NAME:TISSUE:DIAMETER_MM:CONTRAST_HU`` (e.g. ``small_hypo:soft:6:-30``) -> type."""
    parts = text.split(":")
    if len(parts) != 4:
        raise ValueError(f"lesion type {text!r}: expected NAME:TISSUE:DIAMETER_MM:CONTRAST_HU, "
                         "e.g. soft_hypo:soft:10:-20")
    name, tissue, d, c = parts
    try:
        return LesionType(name, tissue, float(d), float(c))
    except ValueError as e:
        if "could not convert" in str(e):
            raise ValueError(f"lesion type {text!r}: diameter and contrast must be numbers") \
                from None
        raise


def band_label(band: tuple[float, float]) -> str:
    """``(0, 15)`` -> ``"0-15mm"``."""
    lo, hi = band
    return f"{lo:g}-{hi:g}mm"


def check_bands(bands: Sequence[tuple[float, float]]) -> None:
    """Raise ``ValueError`` unless the bands are increasing, non-overlapping ``[lo, hi)``."""
    if not bands:
        raise ValueError("no distance bands given")
    prev = -math.inf
    for lo, hi in bands:
        if not (0 <= lo < hi and math.isfinite(hi)):
            raise ValueError(f"distance band {lo}-{hi} mm: need 0 <= lo < hi")
        if lo < prev:
            raise ValueError(f"distance bands overlap or are not in increasing order: "
                             f"{list(bands)}")
        prev = hi


def density_scale(contrast_hu: float, host_material: str, kev: float) -> float:
    """Relative density change of the host that gives ``contrast_hu`` at ``kev``."""
    from ..physics.materials import mu_matrix

    mu = mu_matrix((host_material, "water"), np.array([float(kev)]))[:, 0]
    return float(contrast_hu) * float(mu[1]) / (1000.0 * float(mu[0]))


@dataclass(frozen=True)
class Lesion:
    """One planted lesion (JSON-able through :meth:`to_dict`).

    Attributes:
        lesion_id: unique within a study (``<patient>-L<nn>``).
        type: the :class:`LesionType` name; tissue, host_material: where it sits.
        centre_mm: ``(x, y, z)`` patient mm; z is its slice's position.
        radius_mm, contrast_hu: size and nominal contrast at the ideal image's keV.
        density_scale: the relative density change applied to the host material.
        slice_index: the slice its centre lies on (0-based, ascending z).
        row, col: the pixel of the centre on that slice's image grid.
        distance_mm: centre to the nearest metal pixel centre on that slice (mm).
        band: the distance band's label (``"0-15mm"``).
    """

    lesion_id: str
    type: str
    tissue: str
    host_material: str
    centre_mm: tuple[float, float, float]
    radius_mm: float
    contrast_hu: float
    density_scale: float
    slice_index: int
    row: int
    col: int
    distance_mm: float
    band: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["centre_mm"] = [round(float(v), 4) for v in self.centre_mm]
        d["distance_mm"] = round(float(self.distance_mm), 4)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Lesion:
        d = dict(d)
        d["centre_mm"] = tuple(float(v) for v in d["centre_mm"])
        return cls(**d)

    def structure(self) -> Structure:
        return Structure(Sphere(self.centre_mm, self.radius_mm), _COVERAGE_TISSUE,
                         name=self.lesion_id)

    def cut_radius_mm(self, z_mm: float) -> float:
        """Radius of the lesion's disc on the axial plane ``z_mm`` (0 where it is absent)."""
        dz = float(z_mm) - self.centre_mm[2]
        return math.sqrt(self.radius_mm ** 2 - dz * dz) if abs(dz) < self.radius_mm else 0.0


def lesion_coverage(lesion: Lesion, z_mm: float, grid: ImageGrid, pose: Pose2D = Pose2D(),
                    supersample: int = 3) -> torch.Tensor | None:
    """Anti-aliased area fraction ``(H, W)`` in [0, 1] of the lesion's disc at ``z_mm`` on
    ``grid`` (the phantom's own rasteriser), or ``None`` where the lesion is absent."""
    if lesion.cut_radius_mm(z_mm) <= 0:
        return None
    frac, _ = rasterize([lesion.structure()], float(z_mm), grid, pose, supersample)
    return frac[_COVERAGE_MATERIAL]


def apply_lesions(fractions: torch.Tensor, lesions: Sequence[Lesion], z_mm: float,
                  grid: ImageGrid, pose: Pose2D = Pose2D(), supersample: int = 3
                  ) -> torch.Tensor:
    """Material fractions ``(len(MATERIALS), H, W)`` of a slice with ``lesions`` planted.

    Inside a lesion the host material's fraction is scaled by ``1 + density_scale`` (weighted
    by the lesion's coverage of the pixel): a density change of the host that is there. The
    input is not modified.
    """
    out = fractions.clone()
    for les in lesions:
        cov = lesion_coverage(les, z_mm, grid, pose, supersample)
        if cov is None:
            continue
        m = MATERIALS.index(les.host_material)
        out[m] = out[m] * (1.0 + les.density_scale * cov.to(out.dtype))
    return out


def metal_distance_mm(metal: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Distance (mm) from every pixel centre to the nearest metal pixel centre, ``(H, W)``;
    ``inf`` everywhere when the slice has no metal."""
    from scipy import ndimage

    metal = np.asarray(metal, bool)
    if not metal.any():
        return np.full(metal.shape, np.inf)
    return ndimage.distance_transform_edt(~metal) * float(pixel_mm)


@dataclass
class SliceContext:
    """What placement needs of one slice of the scan, on the measurement grid.

    Attributes:
        index: slice index; z_mm: its position.
        host_fraction: ``{material: (H, W) volume fraction}`` for the host materials.
        metal: ``(H, W)`` bool metal label.
    """

    index: int
    z_mm: float
    host_fraction: dict[str, np.ndarray]
    metal: np.ndarray


def _pure_centres(fraction: np.ndarray, radius_px: float, purity: float = 0.9) -> np.ndarray:
    """Pixels whose disc of ``radius_px`` holds only pixels (by their centres) that are at
    least ``purity`` host."""
    from scipy import ndimage

    r = int(math.ceil(radius_px))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    foot = dy * dy + dx * dx <= radius_px * radius_px + 1e-9
    pure = fraction >= purity
    return ndimage.binary_erosion(pure, structure=foot, border_value=0)


def place_lesions(slices: Sequence[SliceContext], centre_slices: Sequence[int],
                  grid: ImageGrid, types: Sequence[LesionType],
                  bands: Sequence[tuple[float, float]], rng: np.random.Generator, *,
                  kev: float, roi_mm: float, per_slice: int = 1, id_prefix: str = "L"
                  ) -> list[Lesion]:
    """Draw lesion positions for one scan.

    For each slice of ``centre_slices`` (indices into ``slices``), each band and each type (bone
    types first, then a random order), up to ``per_slice`` lesions are placed at random among
    the valid centres:

    - every pixel whose centre lies in the lesion's disc is at least 90 % host (volume
      fraction);
    - the centre's distance to the metal (:func:`metal_distance_mm`) is in the band, and on
      every slice the sphere crosses, its disc stays one pixel clear of the metal;
    - lesions do not overlap, and no lesion's disc enters another's region of interest (a
      square of side ``roi_mm`` centred on it, on its slice).

    Slices without metal get no lesion (no distance is defined). Returns the lesions in the
    order drawn, ids ``<id_prefix><nn>``.
    """
    pix = grid.pixel_mm
    xs, ys = grid.x_mm().numpy(), grid.y_mm().numpy()
    by_index = {s.index: s for s in slices}
    dist = {s.index: metal_distance_mm(s.metal, pix) for s in slices}
    placed: list[Lesion] = []
    half_diag = roi_mm / 2 * math.sqrt(2.0)
    scales = {t.name: density_scale(t.contrast_hu, t.host_material, kev) for t in types}
    pure_cache: dict[tuple[int, str, float], np.ndarray] = {}

    def clear_of_metal(t: LesionType, z: float, row: int, col: int) -> bool:
        for s in slices:
            dz = s.z_mm - z
            if abs(dz) >= t.radius_mm:
                continue
            cut = math.sqrt(t.radius_mm ** 2 - dz * dz)
            if dist[s.index][row, col] < cut + pix:
                return False
        return True

    def clear_of_others(t: LesionType, c: tuple[float, float, float]) -> bool:
        for o in placed:
            d3 = math.dist(c, o.centre_mm)
            if d3 < t.radius_mm + o.radius_mm + pix:
                return False
            dxy = math.dist(c[:2], o.centre_mm[:2])
            cut_o = o.cut_radius_mm(c[2])  # the other lesion on this lesion's slice
            if cut_o > 0 and dxy < half_diag + cut_o + pix:
                return False
            cut_c = t.radius_mm if abs(c[2] - o.centre_mm[2]) < t.radius_mm else 0.0
            if cut_c > 0:
                cut_c = math.sqrt(t.radius_mm ** 2 - (c[2] - o.centre_mm[2]) ** 2)
                if dxy < half_diag + cut_c + pix:
                    return False
        return True

    n = 0
    for si in centre_slices:
        s = by_index[si]
        d = dist[si]
        if not np.isfinite(d).any():
            continue
        for lo, hi in bands:
            in_band = (d >= lo) & (d < hi)
            # Bone first: trabecular bone is scarce, soft tissue is not.
            order = sorted(rng.permutation(len(types)), key=lambda i: types[i].tissue != "bone")
            for ti in order:
                t = types[int(ti)]
                key = (si, t.host_material, t.radius_mm)
                if key not in pure_cache:
                    pure_cache[key] = _pure_centres(s.host_fraction[t.host_material],
                                                    t.radius_mm / pix)
                cand = np.argwhere(pure_cache[key] & in_band)
                if len(cand) == 0:
                    continue
                got = 0
                for k in rng.permutation(len(cand)):
                    row, col = (int(v) for v in cand[k])
                    c = (float(xs[col]), float(ys[row]), float(s.z_mm))
                    if not clear_of_metal(t, s.z_mm, row, col) or not clear_of_others(t, c):
                        continue
                    placed.append(Lesion(
                        lesion_id=f"{id_prefix}{n:02d}", type=t.name, tissue=t.tissue,
                        host_material=t.host_material, centre_mm=c, radius_mm=t.radius_mm,
                        contrast_hu=t.contrast_hu, density_scale=scales[t.name],
                        slice_index=int(si), row=row, col=col, distance_mm=float(d[row, col]),
                        band=band_label((lo, hi))))
                    n += 1
                    got += 1
                    if got >= per_slice:
                        break
    return placed
