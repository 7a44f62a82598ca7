"""Scanner geometry and image grids.

Coordinates follow DICOM patient coordinates (LPS) in the axial plane, in mm:
``x`` grows to the patient's left (image columns, left to right on screen) and ``y`` grows
posterior (image rows, top to bottom). The scanner isocentre is ``(0, 0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class ImageGrid:
    """A square-pixel 2D grid placed in scanner coordinates.

    Attributes:
        shape: ``(H, W)`` pixels (rows along ``y``, columns along ``x``).
        pixel_mm: pixel side length in mm.
        centre_mm: ``(x, y)`` of the grid centre in mm (isocentre is ``(0, 0)``).
    """

    shape: tuple[int, int]
    pixel_mm: float
    centre_mm: tuple[float, float] = (0.0, 0.0)

    @property
    def fov_mm(self) -> float:
        """Side length covered by the columns, in mm."""
        return self.shape[1] * self.pixel_mm

    def x_mm(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Column centres, shape ``(W,)``, in mm (float64)."""
        w = self.shape[1]
        i = torch.arange(w, dtype=torch.float64, device=device)
        return self.centre_mm[0] + (i - (w - 1) / 2) * self.pixel_mm

    def y_mm(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Row centres, shape ``(H,)``, in mm (float64)."""
        h = self.shape[0]
        i = torch.arange(h, dtype=torch.float64, device=device)
        return self.centre_mm[1] + (i - (h - 1) / 2) * self.pixel_mm

    def origin_mm(self) -> tuple[float, float]:
        """``(x, y)`` of the centre of pixel ``(0, 0)``: DICOM ImagePositionPatient in-plane."""
        h, w = self.shape
        return (
            self.centre_mm[0] - (w - 1) / 2 * self.pixel_mm,
            self.centre_mm[1] - (h - 1) / 2 * self.pixel_mm,
        )


@dataclass(frozen=True)
class FanBeamGeometry:
    """2D fan-beam geometry with a flat, centred, equally spaced detector.

    Defaults are close to a GE Discovery CT750HD-class scanner (SID 541 mm, SDD 949 mm,
    888 channels, 984 views over 360 degrees); a flat detector is used (the scanner's is
    curved) so that the geometry matches astra-toolbox's ``fanflat`` for independent checks.

    Attributes:
        sid_mm: source to isocentre distance.
        sdd_mm: source to detector distance.
        n_det: detector channels.
        det_pitch_mm: channel pitch at the detector.
        n_views: projection angles, equally spaced over 360 degrees starting at 0.
        image_size: side of the square object grid, in pixels (centred on the isocentre).
        fov_mm: side of the object grid in mm (scan field of view).
    """

    sid_mm: float = 541.0
    sdd_mm: float = 949.0
    n_det: int = 888
    det_pitch_mm: float = 1.1352
    n_views: int = 984
    image_size: int = 512
    fov_mm: float = 500.0

    @classmethod
    def clinical(cls, image_size: int = 512, fov_mm: float = 500.0) -> FanBeamGeometry:
        """The full clinical-class geometry with an object grid of ``image_size`` pixels."""
        return cls(image_size=image_size, fov_mm=fov_mm,
                   det_pitch_mm=cls.pitch_covering(fov_mm, 888, 541.0, 949.0))

    @classmethod
    def scaled(cls, image_size: int, fov_mm: float = 500.0, *, sid_mm: float = 541.0,
               sdd_mm: float = 949.0, n_det_512: int = 888, n_views_512: int = 984
               ) -> FanBeamGeometry:
        """A scanner's clinical geometry (by default the GSI scanner's: ``n_det_512`` channels
        and ``n_views_512`` views for a 512-pixel image) with channels and views scaled by
        ``image_size / 512``.

        Views are kept a multiple of 4 (the projector uses the 90-degree symmetry) and the
        channel count even, so sampling density per pixel matches the 512-pixel scanner.
        """
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        s = image_size / 512
        n_det = max(16, 2 * round(n_det_512 * s / 2))
        n_views = max(16, 4 * round(n_views_512 * s / 4))
        return cls(
            sid_mm=sid_mm,
            sdd_mm=sdd_mm,
            n_det=n_det,
            n_views=n_views,
            image_size=image_size,
            fov_mm=fov_mm,
            det_pitch_mm=cls.pitch_covering(fov_mm, n_det, sid_mm, sdd_mm),
        )

    @staticmethod
    def pitch_covering(fov_mm: float, n_det: int, sid_mm: float, sdd_mm: float) -> float:
        """Detector pitch (mm) whose fan just covers the FOV circle (diameter = fov_mm), +2 %.

        As on a scanner, only the circle inscribed in the object grid is fully sampled;
        phantoms stay inside it.
        """
        r = fov_mm / 2
        half_angle = math.asin(min(r / sid_mm, 0.99))
        return 1.02 * 2 * sdd_mm * math.tan(half_angle) / n_det

    def with_(self, **changes) -> FanBeamGeometry:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def object_grid(self) -> ImageGrid:
        """The grid the projector integrates over (square, centred on the isocentre)."""
        return ImageGrid((self.image_size, self.image_size), self.fov_mm / self.image_size)

    @property
    def magnification(self) -> float:
        return self.sdd_mm / self.sid_mm

    def view_angles(self) -> torch.Tensor:
        """Source angles in radians, shape ``(n_views,)`` (float64)."""
        return torch.arange(self.n_views, dtype=torch.float64) * (2 * math.pi / self.n_views)

    def det_u_mm(self) -> torch.Tensor:
        """Channel centres along the detector in mm (at the detector), shape ``(n_det,)``."""
        i = torch.arange(self.n_det, dtype=torch.float64)
        return (i - (self.n_det - 1) / 2) * self.det_pitch_mm
