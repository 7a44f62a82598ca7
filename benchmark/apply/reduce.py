"""A MAR method run over a whole CT volume, as ``marbench apply`` and the reference-free
report need it: prepared once, called in batches (with neighbour slices, edges repeated, when
the method asks for them), at the pixel size it was trained at (the images resampled there
and back), with the metal mask from the protocol threshold."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import MARBenchError
from .errors import ApplyError

#: Methods known to need the implant type (besides any with ``needs_implant_type = True``).
IMPLANT_TYPE_METHODS = frozenset({"lga"})


def method_needs_implant_type(method: Any) -> bool:
    """Whether a method needs the implant type (``needs_implant_type = True`` or LGA)."""
    return bool(getattr(method, "needs_implant_type", False)) or \
        str(getattr(method, "name", "")).lower() in IMPLANT_TYPE_METHODS


def _trained_spacing(method: Any) -> float | None:
    value = getattr(method, "pixel_spacing_mm", None)
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ApplyError(f"method {method.name!r}: pixel_spacing_mm {value} is not a positive "
                         "size in mm")
    return value


def _resample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, h, w), bilinear with antialiasing (area-like when shrinking)."""
    if tuple(img.shape[-2:]) == size:
        return img
    return torch.nn.functional.interpolate(img, size=size, mode="bilinear",
                                           align_corners=False, antialias=True)


def iter_reduced(method: Any, volume_hu: np.ndarray, pixel_spacing_mm: float, *,
                 implant_type: str = "none", patient_id: str = "input",
                 batch_size: int = 4, device: str | torch.device = "cpu",
                 threshold_hu: float | None = None
                 ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
    """Run a prepared method over a volume, one batch at a time.

    Only the batch (and its neighbour slices) is converted to float32 and handed to the
    method, so the memory this adds to the volume is bounded by the slices in flight
    (``batch_size`` plus neighbours), not by the length of the series.

    Args:
        method: a prepared :class:`benchmark.method.MARMethod`.
        volume_hu: (S, H, W) HU (any numeric dtype; int16 from the reader).
        pixel_spacing_mm: in-plane pixel size of ``volume_hu``.
        implant_type: given to the method for every slice.
        batch_size: slices per ``reduce`` call.
        device: where the method runs.
        threshold_hu: metal threshold (default: the protocol's).

    Yields:
        (slice indices, (B, H, W) float32 corrected HU, (B, H, W) bool metal mask of the
        input), in slice order.
    """
    from artifactgsi.schema import METAL_THRESHOLD_HU, metal_mask

    from ..method import MARInput, validate_output

    if batch_size < 1:
        raise ApplyError(f"batch_size must be >= 1, got {batch_size}")
    thr = METAL_THRESHOLD_HU if threshold_hu is None else float(threshold_hu)
    dev = torch.device(device)
    s, h, w = volume_hu.shape
    target, size = _work_size(method, pixel_spacing_mm, h, w)
    spacing = pixel_spacing_mm if target is None else target
    k = int(getattr(method, "neighbour_slices", 0) or 0)
    name = str(getattr(method, "name", "") or type(method).__name__)

    def slices(rows: Sequence[int]) -> torch.Tensor:
        """(n, h', w') float32 slices at the method's working size."""
        img = torch.from_numpy(np.asarray(volume_hu[list(rows)], dtype=np.float32))
        return img if target is None else _resample(img[:, None], size)[:, 0]

    for start in range(0, s, batch_size):
        idx = list(range(start, min(start + batch_size, s)))
        source = np.asarray(volume_hu[idx], dtype=np.float32)
        ordinary = slices(idx)[:, None].contiguous()
        neighbours = None
        if k > 0:
            rows = sorted({min(max(i + d, 0), s - 1) for i in idx for d in range(-k, k + 1)})
            at = {r: j for j, r in enumerate(rows)}
            stack = slices(rows)
            neighbours = stack[torch.tensor([[at[min(max(i + d, 0), s - 1)]
                                              for d in range(-k, k + 1)] for i in idx])]
        inp = MARInput(ordinary=ordinary, metal_mask=metal_mask(ordinary, thr),
                       pixel_spacing_mm=torch.full((len(idx),), float(spacing)),
                       implant_type=[implant_type] * len(idx),
                       patient_id=[patient_id] * len(idx), slice_index=idx,
                       neighbours=None if neighbours is None else neighbours.contiguous())
        batch = inp.to(dev)
        try:
            with torch.no_grad():
                res = method.reduce(batch)
        except Exception as e:
            raise ApplyError(f"method {name!r}: reduce() raised {type(e).__name__} on slices "
                             f"{idx[0]}..{idx[-1]}: {e}") from e
        img = validate_output(name, batch, res).detach().float().cpu()
        if target is not None:
            img = _resample(img, (h, w))
        yield idx, img[:, 0].numpy(), metal_mask(source, thr)


def _work_size(method: Any, pixel_spacing_mm: float, h: int, w: int
               ) -> tuple[float | None, tuple[int, int]]:
    """(the method's pixel size if the slices must be resampled to it, else ``None``; the
    (h, w) the method works at)."""
    target = _trained_spacing(method)
    if target is None or math.isclose(target, pixel_spacing_mm, rel_tol=1e-3):
        return None, (h, w)
    return target, (max(1, round(h * pixel_spacing_mm / target)),
                    max(1, round(w * pixel_spacing_mm / target)))


def reduce_volume(method: Any, volume_hu: np.ndarray, pixel_spacing_mm: float, *,
                  implant_type: str = "none", patient_id: str = "input",
                  batch_size: int = 4, device: str | torch.device = "cpu",
                  threshold_hu: float | None = None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Run a prepared method over a whole volume (:func:`iter_reduced`, gathered).

    Returns:
        ((S, H, W) float32 corrected HU, (S, H, W) bool metal mask of the input, the pixel
        size the method ran at if the slices were resampled, else ``None``).
    """
    s, h, w = volume_hu.shape
    out = np.empty((s, h, w), np.float32)
    mask = np.empty((s, h, w), bool)
    for idx, img, m in iter_reduced(method, volume_hu, pixel_spacing_mm,
                                    implant_type=implant_type, patient_id=patient_id,
                                    batch_size=batch_size, device=device,
                                    threshold_hu=threshold_hu):
        out[idx], mask[idx] = img, m
    return out, mask, _work_size(method, pixel_spacing_mm, h, w)[0]


def _prepare(mar: Any, name: str, dev: torch.device) -> None:
    """``mar.prepare`` with no training data; a failure (e.g. no weights) names the method."""
    from ..method import PrepareContext
    from ..run.calls import method_cache_dir as _method_cache_dir

    try:
        mar.prepare(PrepareContext(device=dev, cache_dir=_method_cache_dir(name)))
    except MARBenchError:
        raise
    except Exception as e:
        raise ApplyError(f"method {name!r}: prepare() failed ({type(e).__name__}: {e})") from e
