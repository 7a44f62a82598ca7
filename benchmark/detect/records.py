"""What a detectability study is run with and produces: its settings, its error, and one
row's raw scores (:class:`DetectRow`), shared by :mod:`benchmark.detect.study` and
:mod:`benchmark.detect.statistics`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import MARBenchError


class DetectError(MARBenchError, ValueError):
    """A detectability study that cannot run as asked (names the setting or file)."""


@dataclass(frozen=True)
class DetectSettings:
    """Settings of the observer and the statistics (recorded with the results)."""

    channels: str = "lg"  # "lg" (Laguerre-Gauss) or "gabor"
    n_channels: int = 4  # Laguerre-Gauss channels (few: templates are trained on tens of ROIs)
    width_factor: float = 1.0  # channel width (LG "a") in lesion diameters
    ring_factor: float = 1.5  # ROI background: pixels beyond this many diameters
    folds: int = 2  # cross-validation folds over patients (2 = train on half, test on half)
    calibrate: bool = True  # put the ideal background on each row's HU scale
    bootstrap: int = 2000
    seed: int = 0
    min_lesions: int = 8  # a (type, band, implant) cell with fewer lesions is not scored
    halluc_threshold_hu: float | None = None  # None: the study's faintest |contrast|

    def validate(self) -> None:
        checks = [
            (self.channels in ("lg", "gabor"), f"channels must be 'lg' or 'gabor', got "
                                               f"{self.channels!r}"),
            (self.n_channels >= 1, f"n_channels must be >= 1, got {self.n_channels}"),
            (self.width_factor > 0, f"width_factor must be > 0, got {self.width_factor}"),
            (self.ring_factor > 0, f"ring_factor must be > 0, got {self.ring_factor}"),
            (self.folds >= 2, f"--folds must be >= 2, got {self.folds}"),
            (self.bootstrap >= 0, f"--bootstrap must be >= 0, got {self.bootstrap}"),
            (self.min_lesions >= 4, f"min_lesions must be >= 4, got {self.min_lesions}"),
            (self.halluc_threshold_hu is None or self.halluc_threshold_hu > 0,
             f"halluc_threshold_hu must be > 0, got {self.halluc_threshold_hu}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise DetectError(msg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Key = tuple[str, str, int]  # (patient_id, scan, slice index)


@dataclass
class DetectRow:
    """One row's raw scores: per lesion statistics and per patient map counts.

    Attributes:
        name: row name (a method, ``ideal``, ``gsi``, ``input``).
        t_present, t_absent: ``(N,)`` cross-validated CHO statistics per lesion.
        false_positive: ``(N,)`` 1 where the observer reports a lesion in the absent ROI at
            the ideal operating point, 0 where not, NaN where the group is not scored.
        map_counts: ``(P, n_bands, 2)`` flagged and total pixels of the hallucination map.
        info: what produced the row (method identity, options, timing).
    """

    name: str
    t_present: np.ndarray
    t_absent: np.ndarray
    false_positive: np.ndarray
    map_counts: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
