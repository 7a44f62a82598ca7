"""The metric registry: every metric the benchmark reports is declared here once.

A declaration says what the number means (unit, direction), what it is compared with
(``references``: ``"gsi"``, ``"ideal"``, ``"labels"``) and what computing it needs
(``needs``: e.g. ``"metal_mask"``, ``"lpips_weights"``, ``"labels"``, ``"segmenter"``). The
runner, the results file, ``marbench compare``, the ablation and the leaderboard read these
declarations; no other module keeps its own list of metrics. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GROUPS", "METRICS", "MetricSpec", "metrics_in_group", "register_metric"]

#: Metric groups, in the order tables show them.
GROUPS: tuple[str, ...] = ("image", "clinical", "segmentation")


@dataclass(frozen=True)
class MetricSpec:
    """One metric's declaration.

    Attributes:
        name: key in results files (``psnr``, ``ct_rmse_hu``, ``miou``).
        higher_is_better: direction of "better".
        unit: ``"dB"``, ``"HU"`` or ``""``.
        description: one sentence a reader of a results file needs.
        group: ``"image"``, ``"clinical"`` or ``"segmentation"``.
        references: what the scored image is compared with.
        needs: inputs beyond the two images (missing ones make the metric "missing" with a
            reason in results, never a made-up value).
        label: short column title for tables.
    """

    name: str
    higher_is_better: bool
    unit: str
    description: str
    group: str = "image"
    references: tuple[str, ...] = ("gsi", "ideal")
    needs: tuple[str, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"metric {self.name!r}: group {self.group!r} is not one of "
                             f"{GROUPS}")

    @property
    def title(self) -> str:
        return self.label or self.name


#: name -> declaration, in registration order (the order of tables and CSV columns).
METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to :data:`METRICS`; registering the same declaration twice is a no-op.

    Raises:
        ValueError: another declaration already uses ``spec.name``.
    """
    old = METRICS.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"metric {spec.name!r} is declared twice, differently: {old} and "
                         f"{spec}")
    METRICS[spec.name] = spec
    return spec


def metrics_in_group(group: str) -> dict[str, MetricSpec]:
    """The registered metrics of one group, by name."""
    return {k: s for k, s in METRICS.items() if s.group == group}


# -- the image and clinical metrics of the marbench-v1 protocol. Their maths lives in
#    benchmark.metrics.image and benchmark.metrics.clinical; declared here so that reading
#    the list needs no torch.
for _spec in (
    MetricSpec("psnr", True, "dB", "peak signal-to-noise ratio, data range 1 (HU clipped to "
               "[-1024, 3071] and scaled to [0, 1])", label="PSNR"),
    MetricSpec("ssim", True, "", "structural similarity, Gaussian 11x11 window, sigma 1.5, "
               "K1 0.01, K2 0.03, data range 1", label="SSIM"),
    MetricSpec("lpips", False, "", "LPIPS v0.1, AlexNet backbone, the slice replicated to 3 "
               "channels in [-1, 1]", needs=("lpips_weights",), label="LPIPS"),
    MetricSpec("ct_rmse_hu", False, "HU", "CT-number RMSE in the body outside the dilated "
               "metal (AAPM metric 1)", "clinical", needs=("metal_mask",), label="RMSE HU"),
    MetricSpec("ct_mae_hu", False, "HU", "CT-number mean absolute error, same region as "
               "ct_rmse_hu", "clinical", needs=("metal_mask",), label="MAE HU"),
    MetricSpec("noise_sd_hu", False, "HU", "standard deviation in a homogeneous soft-tissue "
               "disc far from metal and bone (AAPM metric 2)", "clinical",
               needs=("metal_mask", "pixel_spacing_mm"), label="noise SD HU"),
    MetricSpec("streak_amplitude_hu", False, "HU", "|mean of top 5 % - mean of bottom 5 %| of "
               "(image - reference) in an annulus around the metal (AAPM metric 4)",
               "clinical", needs=("metal_mask", "pixel_spacing_mm"), label="streak HU"),
    MetricSpec("masked_ssim", True, "", "SSIM (data range 5000 HU, metal set to 100 HU) "
               "averaged over the body outside the dilated metal (AAPM metric 5)", "clinical",
               needs=("metal_mask",), label="masked SSIM"),
    MetricSpec("bone_dice", True, "", "Dice of bone (150-2500 HU) in the body outside the "
               "dilated metal (AAPM metric 6)", "clinical", needs=("metal_mask",),
               label="bone Dice"),
    MetricSpec("bone_volume_change", False, "", "|bone area / reference bone area - 1|, same "
               "region as bone_dice", "clinical", needs=("metal_mask",), label="bone vol."),
    MetricSpec("metal_dice", True, "", "Dice of metal (> 2500 HU) inside the dilated metal "
               "(AAPM metric 7)", "clinical", needs=("metal_mask",), label="metal Dice"),
    MetricSpec("metal_volume_change", False, "", "|metal area / reference metal area - 1|, "
               "same region as metal_dice", "clinical", needs=("metal_mask",),
               label="metal vol."),
):
    register_metric(_spec)
