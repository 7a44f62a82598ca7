"""X-ray tube spectra from spekpy, binned on the simulator's energy grid and cached on disk.

Tube model: tungsten anode, 12 degree anode angle, inherent + added filtration of 3 mm Al and
0.1 mm Cu (a typical CT beam filtration without the bowtie; the bowtie is not modelled).
Spectra are photon fluence per bin, normalised to sum to 1.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# 2 keV bins from 10 to 150 keV: photons below 10 keV never reach the detector through a
# patient, and 2 keV bins change line integrals by < 0.1 % against 1 keV bins while halving cost.
ENERGY_BIN_KEV = 2.0
ENERGY_MIN_KEV = 10.0
ENERGY_MAX_KEV = 150.0


def energy_grid_kev() -> np.ndarray:
    """Bin centres of the simulator's energy grid in keV, shape ``(E,)``."""
    edges = np.arange(ENERGY_MIN_KEV, ENERGY_MAX_KEV + 1e-9, ENERGY_BIN_KEV)
    return (edges[:-1] + edges[1:]) / 2


@dataclass(frozen=True)
class TubeSpec:
    """Tube settings for one spectrum."""

    kvp: float
    anode_angle_deg: float = 12.0
    filter_al_mm: float = 3.0
    filter_cu_mm: float = 0.1


def cache_dir() -> Path:
    """Where derived physics tables are cached (:func:`artifactgsi.settings.cache_root`:
    ``$ARTIFACTGSI_CACHE`` or ~/.cache/artifactgsi)."""
    from ..settings import cache_root

    return cache_root()


@lru_cache(maxsize=16)
def spectrum(spec: TubeSpec) -> np.ndarray:
    """Normalised photon spectrum on :func:`energy_grid_kev`, shape ``(E,)``.

    Computed with spekpy once and cached as ``.npy`` (spekpy takes ~0.5 s per spectrum).
    """
    key = hashlib.sha256(json.dumps([asdict(spec), ENERGY_BIN_KEV, ENERGY_MIN_KEV,
                                     ENERGY_MAX_KEV], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "spectra" / f"{spec.kvp:g}kvp-{key}.npy"
    if path.exists():
        return np.load(path)
    import spekpy  # imported here: slow to import and only needed to fill the cache

    s = spekpy.Spek(kvp=spec.kvp, th=spec.anode_angle_deg, dk=0.5)
    s.filter("Al", spec.filter_al_mm)
    s.filter("Cu", spec.filter_cu_mm)
    k, phi = s.get_spectrum(edges=False, flu=True, diff=False)  # photons per 0.5 keV bin
    edges = np.arange(ENERGY_MIN_KEV, ENERGY_MAX_KEV + 1e-9, ENERGY_BIN_KEV)
    binned, _ = np.histogram(k, bins=edges, weights=phi)
    binned = binned / binned.sum()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, binned)
    os.replace(tmp, path)  # atomic: parallel workers never read half a file
    return binned


def mean_energy_kev(spec: TubeSpec) -> float:
    """Fluence-weighted mean photon energy of the spectrum in keV."""
    return float((spectrum(spec) * energy_grid_kev()).sum())
