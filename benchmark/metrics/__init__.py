"""Scoring under the benchmark's protocols.

Every metric is declared once in :mod:`.registry` with its computation; pure functions live in
:mod:`.image` (PSNR, SSIM, LPIPS) and :mod:`.clinical` (AAPM-style metrics); :class:`Scorer`
is the thin accumulator a runner feeds batch by batch, one scorer per reference (GSI, and ideal
where it exists)::

    scorer = Scorer()                       # LPIPS loaded if its real weights are present
    scorer.update(pred_hu, gsi_hu, metal_mask=mask, pixel_spacing_mm=spacing, slice_ids=ids)
    scorer.summary()["psnr"].mean, scorer.missing   # {"lpips": "reason"} if it could not run

The package imports lazily: ``benchmark.metrics.registry`` (the declarations) needs no torch,
so the results schema and the leaderboard can read it.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule that defines it (imported on first use).
_EXPORTS: dict[str, str] = {
    "CLINICAL_METRICS": "clinical", "clinical_metrics": "clinical",
    "IMAGE_METRICS": "image", "LPIPSMetric": "image", "LPIPSUnavailable": "image",
    "image_metrics": "image",
    "fetch_lpips_weights": "lpips_weights", "find_lpips_weights": "lpips_weights",
    "MARBENCH_V1": "protocol", "Protocol": "protocol", "Summary": "protocol",
    "hu_to_unit": "protocol", "resample_hu": "protocol", "resample_mask": "protocol",
    "summarize": "protocol",
    "METRICS": "registry", "MetricSpec": "registry", "register_metric": "registry",
    "Scorer": "scorer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'benchmark.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
