"""Data without a reference (the generalization config, one's own scans): the method's
output against its input only, with reference-free measures (``marbench generalization``)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifactgsi.fileio import staged_dir

from .errors import ApplyError, MissingImplantTypeError
from .reduce import _prepare, method_needs_implant_type, reduce_volume
from .series import _dicom_files, _prepare_out, check_separate

__all__ = ["reference_free_measures", "run_reference_free"]

#: Reference-free measures: the streak band is the metal trace's neighbourhood from
#: ``STREAK_BAND_MM[0]`` to ``STREAK_BAND_MM[1]`` mm around the metal; soft tissue "far from
#: metal" is at least ``FAR_FROM_METAL_MM`` away, within ``SOFT_TISSUE_HU``.
STREAK_BAND_MM = (2.0, 40.0)
FAR_FROM_METAL_MM = 60.0
SOFT_TISSUE_HU = (-100.0, 150.0)
#: Side of the windows in which the soft-tissue noise SD is measured (pixels).
NOISE_WINDOW_PX = 5

# ----------------------------------------------------------------------------- no reference
def reference_free_measures(ordinary_hu: np.ndarray, method_hu: np.ndarray,
                            pixel_spacing_mm: float,
                            threshold_hu: float | None = None) -> dict[str, float]:
    """Measures of one slice that need no reference image.

    Args:
        ordinary_hu, method_hu: (H, W) HU, the input and the corrected slice.
        pixel_spacing_mm: pixel size in mm.

    Returns:
        ``streak_band_energy_hu2``: mean of (method - ordinary)^2 over the streak band, the
        pixels between :data:`STREAK_BAND_MM` mm from the metal (how much the method changed
        where streaks are; NaN without metal); ``far_soft_tissue_sd_hu`` and
        ``far_soft_tissue_sd_ordinary_hu``: noise SD of the corrected / ordinary image in
        soft tissue (ordinary HU in :data:`SOFT_TISSUE_HU`) at least
        :data:`FAR_FROM_METAL_MM` mm from any metal, the median of the SD in
        :data:`NOISE_WINDOW_PX`-pixel square windows wholly inside that region (NaN when
        fewer than 10 windows fit);
        ``metal_pixels``, ``band_pixels``, ``far_pixels``: the region sizes.
    """
    from scipy.ndimage import distance_transform_edt

    from artifactgsi.schema import METAL_THRESHOLD_HU, metal_mask

    thr = METAL_THRESHOLD_HU if threshold_hu is None else threshold_hu
    o = np.asarray(ordinary_hu, np.float64)
    m = np.asarray(method_hu, np.float64)
    metal = metal_mask(o, thr)
    if metal.any():
        dist = distance_transform_edt(~metal) * pixel_spacing_mm
    else:
        dist = np.full(o.shape, np.inf)
    band = (dist > STREAK_BAND_MM[0]) & (dist <= STREAK_BAND_MM[1])
    soft = (o >= SOFT_TISSUE_HU[0]) & (o <= SOFT_TISSUE_HU[1])
    far = soft & (dist >= FAR_FROM_METAL_MM)
    nan = float("nan")
    return {
        "streak_band_energy_hu2": float(((m - o)[band] ** 2).mean()) if band.any() else nan,
        "far_soft_tissue_sd_hu": _local_noise(m, far),
        "far_soft_tissue_sd_ordinary_hu": _local_noise(o, far),
        "metal_pixels": float(metal.sum()), "band_pixels": float(band.sum()),
        "far_pixels": float(far.sum()),
    }


def _local_noise(img: np.ndarray, region: np.ndarray, size: int = NOISE_WINDOW_PX) -> float:
    """Median over ``size`` x ``size`` windows lying wholly inside ``region`` of the pixel
    standard deviation (ddof 1) in the window: noise with little of the anatomy's contrast
    (fat next to muscle) in it. NaN when fewer than 10 such windows."""
    from scipy.ndimage import uniform_filter

    n = size * size
    inside = uniform_filter(region.astype(np.float64), size, mode="constant") > 1 - 0.5 / n
    if int(inside.sum()) < 10:
        return float("nan")
    mean = uniform_filter(img, size, mode="constant")
    mean_sq = uniform_filter(img * img, size, mode="constant")
    var = np.maximum(mean_sq - mean * mean, 0.0) * n / (n - 1)
    return float(np.median(np.sqrt(var[inside])))


@dataclass
class _Volume:
    patient_id: str
    volume_hu: np.ndarray  # (S, H, W)
    pixel_spacing_mm: float
    implant_type: str


def _generalization_volumes(data: Path, split: str) -> list[_Volume]:
    """Patients of a built dataset's ``generalization`` config (ordinary slices without GSI:
    the benchmark's pairs reader does not apply), files verified against the manifest."""
    import pyarrow.parquet as pq

    from artifactgsi.schema import IMPLANT_TYPES

    from ..data import resolve_source

    source, files = resolve_source(data, "generalization", split)
    cols = ["patient_id", "slice_index", "ordinary", "pixel_spacing_mm", "implant_type"]
    rows: dict[str, list[tuple[int, np.ndarray]]] = {}
    meta: dict[str, tuple[float, str]] = {}
    for f in files:
        path = source.folder / f.path
        table = pq.read_table(path)
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise ApplyError(f"{path}: config 'generalization' lacks column(s) "
                             f"{', '.join(missing)}")
        d = table.select(cols).to_pydict()
        for pid, idx, img, px, itype in zip(*(d[c] for c in cols), strict=True):
            rows.setdefault(pid, []).append((int(idx), np.asarray(img, np.int16)))
            # implant_type is a ClassLabel: stored as its index in IMPLANT_TYPES.
            meta[pid] = (float(px), IMPLANT_TYPES[itype] if isinstance(itype, int)
                         else str(itype))
    return [_Volume(p, np.stack([a for _, a in sorted(v, key=lambda t: t[0])]), *meta[p])
            for p, v in sorted(rows.items())]


def _volumes(data: Path, split: str) -> list[_Volume]:
    """Patients of a series folder, a folder of series folders, or a built dataset (only its
    ordinary images are used)."""
    from artifactgsi.dicom import read_series

    data = Path(data)
    if (data / "pairs").is_dir() or (data / "manifest.json").is_file() \
            or (data / "generalization").is_dir():
        if (data / "generalization").is_dir():
            return _generalization_volumes(data, split)
        from ..data import open_split

        pairs = open_split(data, split, config="pairs")
        vols: dict[str, list[np.ndarray]] = {}
        meta: dict[str, tuple[float, str]] = {}
        for b in pairs.iter_batches(16):
            inp = b.input
            for i, pid in enumerate(inp.patient_id):
                vols.setdefault(pid, []).append(inp.ordinary[i, 0].numpy())
                meta[pid] = (float(inp.pixel_spacing_mm[i]), inp.implant_type[i])
        return [_Volume(p, np.stack(v), *meta[p]) for p, v in vols.items()]
    if _dicom_files(data, False):
        s = read_series(data)
        return [_Volume(data.name, s.volume_hu, s.pixel_spacing_mm, "none")]
    out = []
    for sub in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        s = read_series(sub)
        out.append(_Volume(sub.name, s.volume_hu, s.pixel_spacing_mm, "none"))
    if not out:
        raise ApplyError(f"{data}: neither a built dataset, a DICOM series nor a folder of "
                         "series folders")
    return out


def run_reference_free(method: str, data_or_series: Path | str, out: Path | str, *,
                       options: dict[str, Any] | None = None, split: str = "test",
                       implant_type: str | None = None, device: str = "cpu",
                       batch_size: int = 4, overwrite: bool = False) -> dict[str, Any]:
    """Run ``method`` on data without reference images; write panels and measures.

    ``data_or_series`` is a DICOM series folder, a folder of series folders (one per
    patient) or a built dataset (its ordinary images only; GSI and ideal are not used). Writes
    ``out/reference_free.json`` (states that no reference exists; per patient and per slice
    measures of :func:`reference_free_measures`, and their means) and
    ``out/panels/<patient>.png`` (ordinary | method, the slice with most metal and its
    neighbours, paper window L 500 / W 2000 HU). Returns the JSON document.
    """
    from ..figures import PanelImage, PanelRow, save_panel
    from ..registry import create_method
    from ..run.calls import safe_name as _safe_name

    out = Path(out)
    check_separate(Path(data_or_series), out, input_name="DATA", out_name="OUT")
    _prepare_out(out, overwrite)
    mar = create_method(method, **(options or {}))
    name = str(mar.name or method)
    needs = method_needs_implant_type(mar)
    vols = _volumes(Path(data_or_series), split)
    if needs and implant_type is None and any(v.implant_type == "none" for v in vols):
        raise MissingImplantTypeError(f"method {name!r} needs the implant type: pass "
                                      "--implant-type")
    dev = torch.device(device)
    _prepare(mar, name, dev)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}"
    (tmp / "panels").mkdir(parents=True)
    patients = []
    with staged_dir(tmp, out):
        for v in vols:
            itype = implant_type or v.implant_type
            pred, mask, _ = reduce_volume(mar, v.volume_hu, v.pixel_spacing_mm,
                                          implant_type=itype, patient_id=v.patient_id,
                                          batch_size=batch_size, device=dev)
            pred = np.clip(np.rint(pred), -32768, 32767)
            per_slice = []
            for i in range(v.volume_hu.shape[0]):
                r = reference_free_measures(v.volume_hu[i], pred[i], v.pixel_spacing_mm)
                per_slice.append({"slice_index": i, **r})
            metal_per_slice = mask.reshape(mask.shape[0], -1).sum(1)
            centre = int(np.argmax(metal_per_slice))
            shown = sorted({max(centre - 1, 0), centre, min(centre + 1, len(pred) - 1)})
            rows = [PanelRow(f"{v.patient_id} slice {i}",
                             [PanelImage("ordinary", v.volume_hu[i]),
                              PanelImage(name, pred[i])]) for i in shown]
            panel = Path("panels") / f"{_safe_name(v.patient_id)}.png"
            save_panel(rows, tmp / panel, title=f"{name}: no reference image")
            means = {k: _nanmean([s[k] for s in per_slice])
                     for k in ("streak_band_energy_hu2", "far_soft_tissue_sd_hu",
                               "far_soft_tissue_sd_ordinary_hu")}
            patients.append({"patient_id": v.patient_id, "implant_type": itype,
                             "pixel_spacing_mm": v.pixel_spacing_mm,
                             "n_slices": int(v.volume_hu.shape[0]), "panel": str(panel),
                             "mean": means, "per_slice": per_slice})
        doc = {
            "reference": None,
            "reference_note": ("No reference image exists for these data (no GSI, no ideal "
                               "image): nothing here is an accuracy score. The measures only "
                               "describe what the method changed near metal and how noisy "
                               "soft tissue far from metal is; judge the panels by eye."),
            "method": {"name": name, "version": str(getattr(mar, "version", "0")),
                       "options": mar.effective_options(),
                       "weights_sha256": getattr(mar, "weights_sha256", None)},
            "data": str(data_or_series),
            "definitions": {
                "streak_band_energy_hu2": f"mean (method - ordinary)^2 in HU^2 over pixels "
                f"{STREAK_BAND_MM[0]:g}-{STREAK_BAND_MM[1]:g} mm from metal (ordinary HU > "
                "metal threshold)",
                "far_soft_tissue_sd_hu": f"median SD (HU) of the method's image in "
                f"{NOISE_WINDOW_PX}x{NOISE_WINDOW_PX}-pixel windows wholly inside soft tissue "
                f"(ordinary {SOFT_TISSUE_HU[0]:g}..{SOFT_TISSUE_HU[1]:g} HU) >= "
                f"{FAR_FROM_METAL_MM:g} mm from metal",
            },
            "window": {"level_hu": 500.0, "width_hu": 2000.0},
            "mean": {k: _nanmean([p["mean"][k] for p in patients])
                     for k in ("streak_band_energy_hu2", "far_soft_tissue_sd_hu",
                               "far_soft_tissue_sd_ordinary_hu")},
            "patients": patients,
        }
        (tmp / "reference_free.json").write_text(json.dumps(_finite(doc), indent=2))
    return doc


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _finite(obj: Any) -> Any:
    """NaN -> None, for strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


