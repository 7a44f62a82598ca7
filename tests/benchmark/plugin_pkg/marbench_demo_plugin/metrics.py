"""A third-party metric, declared through the package's ``marbench.metrics`` entry point."""

from __future__ import annotations

import numpy as np

from benchmark.metrics.registry import MetricSpec


def gradient_rmse(view) -> dict[str, np.ndarray]:  # noqa: ANN001 (a ScoreView)
    """RMSE between the Sobel gradient magnitudes of the scored image and the reference, on
    the protocol's grid in [0, 1] units (how well edges are kept)."""
    from scipy import ndimage

    pred = view.pred_unit[:, 0].double().cpu().numpy()
    ref = view.reference_unit[:, 0].double().cpu().numpy()
    out = []
    for p, r in zip(pred, ref, strict=True):
        gp = np.hypot(ndimage.sobel(p, 0), ndimage.sobel(p, 1))
        gr = np.hypot(ndimage.sobel(r, 0), ndimage.sobel(r, 1))
        out.append(float(np.sqrt(np.mean((gp - gr) ** 2))))
    return {"gradient_rmse": np.asarray(out)}


GRADIENT_RMSE = MetricSpec(
    "gradient_rmse", False, "", "RMSE of the Sobel gradient magnitude against the reference "
    "(images on the protocol's grid in [0, 1])", label="grad RMSE",
    compute="marbench_demo_plugin.metrics:gradient_rmse")
