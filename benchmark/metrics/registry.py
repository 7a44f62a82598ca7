"""The metric registry: every metric the benchmark reports is declared here once, with its
computation.

A declaration (:class:`MetricSpec`) says what the number means (unit, direction), what it is
compared with (``references``), what computing it needs (``needs``), how its per-slice values
aggregate (``per_slice``), which protocols it belongs to, and where its computation lives
(``compute``: a ``"module:attribute"`` string, imported only when a run scores). The runner
computes every per-slice metric the registry holds for the run's protocol; the results file
records each declaration, and ``marbench compare``, ``rescore``, the ablation and the
leaderboard read those records. No other module keeps its own list of metrics.

Other packages add metrics through the ``marbench.metrics`` entry-point group; the entry
point names a :class:`MetricSpec`, or a sequence of them::

    [project.entry-points."marbench.metrics"]
    edge_error = "my_pkg.metrics:EDGE_ERROR"

This module imports no torch (the leaderboard and the results schema read it).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import MARBenchError
from ..targets import import_target

__all__ = ["GROUPS", "METRICS", "NEEDS", "SEG_CLASSES", "SEG_CLASS_TITLES",
           "METRIC_ENTRY_POINTS", "MetricComputationError", "MetricSpec", "UnknownMetricError",
           "get_metric", "load_metric_plugins",
           "metrics_for_protocol", "metrics_in_group", "register_metric", "resolve_compute"]

#: Metric groups, in the order tables show them; a plug-in may name another group, shown
#: after these.
GROUPS: tuple[str, ...] = ("image", "clinical", "segmentation")

#: What a metric may need beyond the two images; the runner knows which are available and
#: records a metric whose need is unmet as missing, with the reason.
NEEDS: dict[str, str] = {
    "metal_mask": "the ordinary image's metal mask",
    "pixel_spacing_mm": "the pixel size in mm",
    "lpips_weights": "the real ImageNet AlexNet backbone of LPIPS (`marbench weights lpips`)",
    "labels": "the dataset's `labels` column",
    "segmenter": "a frozen segmenter (--segmenter)",
    "anchor_method": "the protocol's anchor method (NMAR), created by name through the method "
                     "registry, and the uncorrected image",
    "lesion_study": "a lesion study (--lesions DIR; made by `marbench detect make`)",
}

#: Entry-point group through which other packages declare metrics.
METRIC_ENTRY_POINTS = "marbench.metrics"


class MetricComputationError(MARBenchError, RuntimeError):
    """A declared metric cannot be computed: its computation does not import, raises, or does
    not return the values it declares (the message names the metric and the computation)."""


class UnknownMetricError(MARBenchError, LookupError):
    """No metric of that name is registered (the message suggests close names)."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric's declaration.

    Attributes:
        name: key in results files (``psnr``, ``ct_rmse_hu``, ``miou``).
        higher_is_better: direction of "better".
        unit: ``"dB"``, ``"HU"`` or ``""``.
        description: one sentence a reader of a results file needs.
        group: ``"image"``, ``"clinical"``, ``"segmentation"`` or a plug-in's own group.
        references: what the scored image is compared with.
        needs: inputs beyond the two images (keys of :data:`NEEDS`); an unmet need makes the
            metric "missing" with the reason in results, never a made-up value.
        label: short column title for tables.
        compute: ``"module:attribute"`` of the computation: a callable
            ``f(view: benchmark.metrics.compute.ScoreView) -> {name: (B,) values}``. Several
            declarations may share one computation (it is called once per batch and returns
            all of them). ``None`` only for ``per_slice=False`` metrics, which their own scorer
            fills (segmentation IoU is reduced from per-slice counts at dataset level).
        per_slice: the runner computes a value per slice and summarises them (mean, median,
            ...); ``False``: reduced over the whole split by the metric's own scorer.
        table: shown in ``marbench compare``'s table and offered as a board column by default.
        protocols: the protocol versions that score this metric.
    """

    name: str
    higher_is_better: bool
    unit: str
    description: str
    group: str = "image"
    references: tuple[str, ...] = ("gsi", "ideal")
    needs: tuple[str, ...] = ()
    label: str = ""
    compute: str | None = None
    per_slice: bool = True
    table: bool = True
    protocols: tuple[str, ...] = ("marbench-v1",)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace(".", "_").replace("-", "_").isidentifier():
            raise ValueError(f"metric name {self.name!r}: use letters, digits, '_', '.' or '-'")
        unknown = [n for n in self.needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"metric {self.name!r}: needs {unknown} are not known; choose "
                             f"from {sorted(NEEDS)}")
        if self.per_slice and not self.compute:
            raise ValueError(f"metric {self.name!r}: a per-slice metric must name its "
                             "computation (compute='module:function')")
        if self.compute is not None and ":" not in self.compute:
            raise ValueError(f"metric {self.name!r}: compute={self.compute!r} must be "
                             "'module:attribute'")

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


def get_metric(name: str) -> MetricSpec:
    """The declaration of ``name``; an unknown name is an error with close suggestions."""
    load_metric_plugins()
    try:
        return METRICS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(METRICS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownMetricError(f"no metric {name!r} is registered{hint}") from None


def metrics_in_group(group: str) -> dict[str, MetricSpec]:
    """The registered metrics of one group, by name."""
    return {k: s for k, s in METRICS.items() if s.group == group}


def metrics_for_protocol(version: str, *, per_slice: bool | None = None
                         ) -> dict[str, MetricSpec]:
    """The metrics (plug-ins included) that protocol ``version`` scores, in table order:
    the known groups first, then plug-in groups, each in registration order."""
    load_metric_plugins()
    chosen = [s for s in METRICS.values() if version in s.protocols
              and (per_slice is None or s.per_slice == per_slice)]
    order = {g: i for i, g in enumerate(GROUPS)}
    chosen.sort(key=lambda s: order.get(s.group, len(GROUPS)))  # stable: keeps registration
    return {s.name: s for s in chosen}


_plugins_loaded = False


def load_metric_plugins(*, reload: bool = False) -> list[str]:
    """Register the declarations of the ``marbench.metrics`` entry points (once per process).

    Returns the names registered by this call.

    Raises:
        MetricComputationError: an entry point does not import or does not hold
            :class:`MetricSpec` declarations (named, with the distribution it comes from).
    """
    global _plugins_loaded
    if _plugins_loaded and not reload:
        return []
    _plugins_loaded = True
    added: list[str] = []
    for ep in importlib.metadata.entry_points(group=METRIC_ENTRY_POINTS):
        where = f"entry point {ep.name!r} = {ep.value!r} of {METRIC_ENTRY_POINTS}"
        dist = getattr(ep, "dist", None)
        if dist is not None:
            where += f" (distribution {dist.name})"
        try:
            obj = ep.load()
        except Exception as e:  # a broken plug-in is named, never half-registered
            raise MetricComputationError(f"{where}: does not import: "
                                         f"{type(e).__name__}: {e}") from e
        specs: Iterable[Any] = obj if isinstance(obj, list | tuple) else [obj]
        for spec in specs:
            if not isinstance(spec, MetricSpec):
                raise MetricComputationError(f"{where}: holds {type(spec).__name__}, not a "
                                             "benchmark.metrics.registry.MetricSpec")
            try:
                register_metric(spec)
            except ValueError as e:
                raise MetricComputationError(f"{where}: {e}") from None
            added.append(spec.name)
    return added


def resolve_compute(spec: MetricSpec) -> Any:
    """Import and return the computation ``spec.compute`` names.

    Raises:
        MetricComputationError: it does not import, or is not callable.
    """
    if spec.compute is None:
        raise MetricComputationError(f"metric {spec.name!r} declares no computation")
    try:
        obj = import_target(spec.compute, f"metric {spec.name!r}")
    except (ImportError, ValueError) as e:
        raise MetricComputationError(f"metric {spec.name!r}: its computation {spec.compute!r} "
                                     f"does not import ({type(e).__name__}: {e})") from e
    if not callable(obj):
        raise MetricComputationError(f"metric {spec.name!r}: {spec.compute!r} is not callable")
    return obj


# -- the image and clinical metrics of the marbench-v1 protocol. Their maths lives in
#    benchmark.metrics.image and benchmark.metrics.clinical; declared here so that reading
#    the list needs no torch.
_IMAGE = "benchmark.metrics.image:score_image"
_CLINICAL = "benchmark.metrics.clinical:score_clinical"
_CLIN = {"group": "clinical", "compute": _CLINICAL}
for _spec in (
    MetricSpec("psnr", True, "dB", "peak signal-to-noise ratio, data range 1 (HU clipped to "
               "[-1024, 3071] and scaled to [0, 1])", label="PSNR", compute=_IMAGE),
    MetricSpec("ssim", True, "", "structural similarity, Gaussian 11x11 window, sigma 1.5, "
               "K1 0.01, K2 0.03, data range 1", label="SSIM", compute=_IMAGE),
    MetricSpec("lpips", False, "", "LPIPS v0.1, AlexNet backbone, the slice replicated to 3 "
               "channels in [-1, 1]", needs=("lpips_weights",), label="LPIPS", compute=_IMAGE),
    MetricSpec("ct_rmse_hu", False, "HU", "CT-number RMSE in the body outside the dilated "
               "metal (AAPM metric 1)", needs=("metal_mask",), label="RMSE HU", **_CLIN),
    MetricSpec("ct_mae_hu", False, "HU", "CT-number mean absolute error, same region as "
               "ct_rmse_hu", needs=("metal_mask",), label="MAE HU", table=False, **_CLIN),
    MetricSpec("noise_sd_hu", False, "HU", "standard deviation in a homogeneous soft-tissue "
               "disc far from metal and bone (AAPM metric 2)",
               needs=("metal_mask", "pixel_spacing_mm"), label="noise SD HU", **_CLIN),
    MetricSpec("streak_amplitude_hu", False, "HU", "|mean of top 5 % - mean of bottom 5 %| of "
               "(image - reference) in an annulus around the metal (AAPM metric 4)",
               needs=("metal_mask", "pixel_spacing_mm"), label="streak HU", **_CLIN),
    MetricSpec("masked_ssim", True, "", "SSIM (data range 5000 HU, metal set to 100 HU) "
               "averaged over the body outside the dilated metal (AAPM metric 5)",
               needs=("metal_mask",), label="masked SSIM", table=False, **_CLIN),
    MetricSpec("bone_dice", True, "", "Dice of bone (150-2500 HU) in the body outside the "
               "dilated metal (AAPM metric 6)", needs=("metal_mask",), label="bone Dice",
               **_CLIN),
    MetricSpec("bone_volume_change", False, "", "|bone area / reference bone area - 1|, same "
               "region as bone_dice", needs=("metal_mask",), label="bone vol.", table=False,
               **_CLIN),
    MetricSpec("metal_dice", True, "", "Dice of metal (> 2500 HU) inside the dilated metal "
               "(AAPM metric 7)", needs=("metal_mask",), label="metal Dice", **_CLIN),
    MetricSpec("metal_volume_change", False, "", "|metal area / reference metal area - 1|, "
               "same region as metal_dice", needs=("metal_mask",), label="metal vol.",
               table=False, **_CLIN),
):
    register_metric(_spec)

# -- downstream segmentation (paper Table 2): a frozen segmenter's IoU against the labels,
#    reduced over the whole split from per-slice counts (benchmark.metrics.segmentation).
#: The five foreground classes of the ``labels`` column (value 1..5), paper Table 2 order.
SEG_CLASSES: tuple[str, ...] = ("metal", "l_pelvis", "r_pelvis", "l_femur", "r_femur")
#: Their column titles.
SEG_CLASS_TITLES: tuple[str, ...] = ("metal", "L pelvis", "R pelvis", "L femur", "R femur")
_SEG = {"group": "segmentation", "references": ("labels",), "needs": ("labels", "segmenter"),
        "per_slice": False}
for _spec in (
    MetricSpec("miou", True, "", "mean IoU over metal implant, left / right pelvis and left / "
               "right femur of a frozen GSI-trained segmenter applied to the image, against the "
               "dataset's labels; each class's IoU is the sum of intersections over the sum of "
               "unions across the split", label="mIoU", **_SEG),
    *(MetricSpec(f"iou.{k}", True, "", f"IoU of the {t} class (sum of intersections over sum "
                 "of unions across the split) of a frozen GSI-trained segmenter applied to "
                 "the image, against the dataset's labels", label=f"IoU {t}", **_SEG)
      for k, t in zip(SEG_CLASSES, SEG_CLASS_TITLES, strict=True)),
):
    register_metric(_spec)

# -- protocol aapm-ctmar-2024 (the AAPM CT-MAR Grand Challenge's scores): ten raw values, the
#    eight 0-4 sub-scores and the final score, all from one computation per batch
#    (benchmark.protocol.aapm_run:score_view; the maths in benchmark.protocol.aapm).
_AAPM = {"group": "aapm", "references": ("reference", "ideal", "gsi"),
         "needs": ("metal_mask", "pixel_spacing_mm", "anchor_method"),
         "compute": "benchmark.protocol.aapm_run:score_view", "protocols": ("aapm-ctmar-2024",)}
for _spec in (
    MetricSpec("aapm_ct_rmse_hu", False, "HU", "AAPM 1: CT-number RMSE in the body outside the "
               "metal dilated twice", label="RMSE HU", table=False, **_AAPM),
    MetricSpec("aapm_noise_sd_hu", False, "HU", "AAPM 2: SD in the homogeneous soft-tissue disc "
               "least affected by the metal", label="noise HU", table=False, **_AAPM),
    MetricSpec("aapm_sharpness", True, "", "AAPM 3: 90th percentile of the Sobel magnitude in the "
               "bone and fat edge ROIs, relative to the reference", label="sharpness ratio",
               table=False, **_AAPM),
    MetricSpec("aapm_streak_hu", False, "HU", "AAPM 4: mean of the top 5 % minus mean of the "
               "bottom 5 % of (image - reference) in the streak ROI", label="streak HU",
               table=False, **_AAPM),
    MetricSpec("aapm_ssim", True, "", "AAPM 5: SSIM (sigma 1.5, data range 5000 HU, dilated metal "
               "set to 100 HU) over the body outside the dilated metal", label="masked SSIM",
               table=False, **_AAPM),
    MetricSpec("aapm_metal_volume_change", False, "", "AAPM 7a: |1 - metal area / true metal "
               "area|, metal = HU above the case's threshold in the metal region",
               label="metal vol.", table=False, **_AAPM),
    MetricSpec("aapm_metal_dice", True, "", "AAPM 7b: Dice of the metal against the true metal",
               label="metal Dice", table=False, **_AAPM),
    MetricSpec("aapm_bone_volume_change", False, "", "AAPM 6a: |1 - bone area / reference bone "
               "area|, bone = 150..2500 HU outside the dilated metal", label="bone vol.",
               table=False, **_AAPM),
    MetricSpec("aapm_bone_dice", True, "", "AAPM 6b: Dice of bone against the reference's",
               label="bone Dice", table=False, **_AAPM),
    MetricSpec("aapm_range_shift_pct", False, "%", "AAPM 8: largest proton range (water-"
               "equivalent thickness) change along the beam paths, relative to the longest path",
               label="range shift %", table=False, **_AAPM),
    MetricSpec("aapm_score_ct", False, "", "AAPM score 1, CT-number accuracy (0 = reference, "
               "2 = NMAR, 4 = uncorrected)", label="CT#", **_AAPM),
    MetricSpec("aapm_score_noise", False, "", "AAPM score 2, noise (0 = the reference's noise, "
               "4 = twice it)", label="noise", **_AAPM),
    MetricSpec("aapm_score_sharpness", False, "", "AAPM score 3, sharpness (1-4 = the reference "
               "blurred by 0.4 / 0.5 / 0.75 / 1.0 px)", label="sharpness", **_AAPM),
    MetricSpec("aapm_score_streak", False, "", "AAPM score 4, streak amplitude", label="streak",
               **_AAPM),
    MetricSpec("aapm_score_ssim", False, "", "AAPM score 5, SSIM", label="SSIM", **_AAPM),
    MetricSpec("aapm_score_metal", False, "", "AAPM score 7, metal integrity (mean of the volume "
               "and Dice scores)", label="metal", **_AAPM),
    MetricSpec("aapm_score_bone", False, "", "AAPM score 6, bone integrity (mean of the volume "
               "and Dice scores)", label="bone", **_AAPM),
    MetricSpec("aapm_score_proton", False, "", "AAPM score 8, proton range (a 0-2 % shift -> 0-4)",
               label="proton", **_AAPM),
    MetricSpec("aapm_score", False, "", "AAPM final score: the mean of the eight sub-scores "
               "(0 = as the reference, about 2 = NMAR, 4 = uncorrected)", label="final",
               **_AAPM),
):
    register_metric(_spec)

# -- task-based evaluation (docs/detect.md): a channelized Hotelling observer on the paired
#    scans of a lesion study, reduced over the whole study by benchmark.detect.study (the
#    values live in results.json's ``detect`` block, with intervals and per-lesion values).
_DETECT = {"group": "detect", "references": ("ideal",), "needs": ("lesion_study",),
           "per_slice": False}
for _spec in (
    MetricSpec("detect_auc", True, "", "lesion detectability: AUC of a channelized Hotelling "
               "observer (Laguerre-Gauss channels, background known, cross-validated by "
               "patient), lesion-present vs lesion-absent, mean over lesion types and distance "
               "bands from the metal", label="AUC", **_DETECT),
    MetricSpec("detect_auc_near", True, "", "the same AUC in the distance band nearest the "
               "metal (0-15 mm by default), mean over lesion types", label="AUC near",
               **_DETECT),
    MetricSpec("halluc_fpf_near", False, "", "hallucination: fraction of lesion-absent ROIs in "
               "the nearest band in which the observer reports a lesion at the operating point "
               "set on the ideal images (0 for the ideal image)", label="FPF near", **_DETECT),
    MetricSpec("halluc_area_near", False, "", "hallucination: fraction of the body within the "
               "nearest band where the lesion-scale band-pass of (image - ideal) reaches the "
               "faintest lesion contrast but that of the uncorrected input does not",
               label="halluc. area near", **_DETECT),
):
    register_metric(_spec)
