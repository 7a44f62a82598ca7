"""The downstream segmenter: a segmentation-models-pytorch U-Net that labels metal implant,
left / right pelvis and left / right femur on one CT slice.

Trained on the ``pairs`` train split's GSI images (or, for the information-sufficiency check,
its ordinary images) against the ``labels`` column (:mod:`benchmark.segmentation.training`), then
frozen and applied to a method's output
(:class:`benchmark.metrics.segmentation.SegmentationScorer`)::

    marbench train segmenter --config seg-cpu --data data/built --out runs/seg-gsi
    marbench train segmenter --config seg-cpu --data data/built --out runs/seg-ord \
        --input ordinary

or from Python: ``train("seg-cpu", "data/built", Path("runs/seg-gsi"))``.

This module holds what scoring needs: the config (:class:`SegConfig`, every setting of the
recipe; shipped YAML files in ``benchmark/segmentation/configs/``), the model
(:class:`Segmenter`: ``smp.Unet(encoder_name, encoder_weights=None, in_channels=1,
classes=6)``, no download; input HU clipped to the fixed window :data:`HU_WINDOW` and scaled
to [0, 1], resampled to ``image_size``), loading a frozen segmenter for scoring
(:func:`load_segmenter`, which refuses one trained for other classes or another window) and
the labelled rows of a split (:func:`open_labelled`).

Weights: the training kit's weights folder (:mod:`benchmark.learn.weights`, family
``segmenter``), whose ``model`` record also names the classes and the input image; folders of
the earlier ``marbench-segmenter/1`` format still load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from artifactgsi.schema import HU_MAX, HU_MIN

from ..errors import MARBenchError
from ..learn.config import ConfigBase
from ..learn.errors import ConfigError, IncompatibleWeightsError, TrainError, WeightsError
from ..learn.weights import PretrainedModel, hu_window
from ..metrics.segmentation import CLASS_NAMES, NUM_CLASSES, seg_summary

#: Folder of the shipped YAML configs.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Shipped config names (``train.configs``).
CONFIGS = ("seg-tiny", "seg-cpu", "seg-paper")
#: The fixed HU window of the segmenter's input: clipped to it and scaled to [0, 1]. The
#: 12-bit CT range of the scoring protocol, so metal (> 2500 HU) and bone stay apart.
HU_WINDOW: tuple[float, float] = (HU_MIN, HU_MAX)
#: Images a segmenter can be trained on (dataset columns).
INPUTS = ("gsi", "ordinary")

#: The format of segmenter folders written before the training kit (still read).
LEGACY_FORMAT = "marbench-segmenter/1"


class SegConfigError(ConfigError):
    """A config file or value is invalid (the message names the file and the key)."""


class SegmentationDataError(MARBenchError, ValueError):
    """The dataset cannot train or score a segmenter (e.g. it has no ``labels``)."""


class SegmenterNotFoundError(WeightsError):
    """No segmenter where one was looked for (the message says where and how to make one)."""


class SegmenterMismatchError(MARBenchError, ValueError):
    """A segmenter was trained for other classes or another HU window than the benchmark's."""


class PredictionsNotFoundError(MARBenchError, FileNotFoundError):
    """A run folder has no predictions file to score (the message says how to make one)."""


# ----------------------------------------------------------------------------- config


@dataclass
class SegConfig(ConfigBase):
    """Every setting of the segmenter. Defaults = ``seg-paper`` (512 px, GPU)."""

    config_dir: ClassVar[Path] = CONFIG_DIR
    config_what: ClassVar[str] = "segmenter config"
    error: ClassVar[type[ConfigError]] = SegConfigError
    default_name: ClassVar[str] = "seg-paper"

    # ---- input and model
    input: str = "gsi"                 # dataset column trained on: "gsi" or "ordinary"
    image_size: int = 512              # px; slices are resampled to this square size
    hu_window: tuple[float, float] = HU_WINDOW   # HU clipped to this and scaled to [0, 1]
    classes: tuple[str, ...] = CLASS_NAMES       # label value i = classes[i]
    encoder: str = "resnet34"          # smp encoder name (random init: encoder_weights=None)
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    # Momentum of every BatchNorm's running statistics (None: the encoder's own). smp's
    # efficientnet encoders use 0.01; after a few hundred CPU steps their running statistics
    # are still far off and the network predicts only background in eval mode.
    bn_momentum: float | None = 0.1

    # ---- loss: ce_weight * cross-entropy + dice_weight * soft Dice (multiclass)
    ce_weight: float = 1.0
    dice_weight: float = 1.0

    # ---- augmentation (no flips: they swap left and right classes)
    augment: bool = True
    rotate_deg: float = 10.0           # uniform in [-rotate_deg, rotate_deg]
    scale_range: tuple[float, float] = (0.9, 1.1)
    shift_fraction: float = 0.05       # of the image side, each axis

    # ---- training
    lr: float = 1e-3                   # AdamW, cosine decay to lr_final_ratio * lr
    lr_final_ratio: float = 0.02
    weight_decay: float = 1e-4
    batch_size: int = 8
    epochs: int = 60
    max_steps: int | None = None       # cap on optimiser steps (None = epochs decide)
    val_fraction: float = 0.2          # held-out share of the training patients
    val_every: int = 1                 # epochs between validations (and the last always)
    checkpoint_every: int = 500        # steps between "last" checkpoints
    num_workers: int = 4
    mixed_precision: str = "bf16"      # on CUDA; CPU always runs fp32
    seed: int = 0

    def validate(self, where: str = "config") -> SegConfig:
        """Check values; raise :class:`SegConfigError` naming ``where`` and the key."""

        def bad(key: str, why: str) -> ConfigError:
            return self.bad(where, key, why)

        if self.input not in INPUTS:
            raise bad("input", f"must be one of {', '.join(INPUTS)} (the image the segmenter "
                      f"is trained on), got {self.input!r}")
        mult = 2 ** self.encoder_depth
        if self.image_size < mult or self.image_size % mult:
            raise bad("image_size", f"{self.image_size} px must be a multiple of "
                      f"2**encoder_depth = {mult}")
        if len(self.decoder_channels) != self.encoder_depth:
            raise bad("decoder_channels", f"needs one width per encoder level "
                      f"({self.encoder_depth}), got {list(self.decoder_channels)}")
        if len(self.hu_window) != 2 or not self.hu_window[1] > self.hu_window[0]:
            raise bad("hu_window", f"must be [low, high] HU with high > low, got "
                      f"{list(self.hu_window)}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise bad("classes", f"needs >= 2 distinct names, got {list(self.classes)}")
        if self.ce_weight < 0 or self.dice_weight < 0 or self.ce_weight + self.dice_weight <= 0:
            raise bad("ce_weight", "ce_weight and dice_weight must be >= 0, not both 0")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise bad("scale_range", f"must be [low, high] with 0 < low <= high, got "
                      f"{list(self.scale_range)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "must be in [0, 1)")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        if self.val_every < 1 or self.checkpoint_every < 1:
            raise bad("val_every", "val_every and checkpoint_every must be >= 1")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise bad("mixed_precision", "must be 'no', 'bf16' or 'fp16'")
        if self.bn_momentum is not None and not 0.0 < self.bn_momentum <= 1.0:
            raise bad("bn_momentum", "must be in (0, 1] or null")
        if not 0.0 <= self.lr_final_ratio <= 1.0:
            raise bad("lr_final_ratio", "must be in [0, 1]")
        return self



def load_config(config: str | Path | dict[str, Any] | SegConfig | None = None,
                overrides: dict[str, Any] | None = None) -> tuple[SegConfig, str]:
    """(config, its name) from a shipped name (``"seg-cpu"``), a YAML path, a dict, a
    :class:`SegConfig` or ``None`` (the defaults), with ``overrides`` applied last."""
    return SegConfig.load_named(config, overrides)


# ----------------------------------------------------------------------------- the model


def hu_to_input(images_hu: torch.Tensor, window: Sequence[float]) -> torch.Tensor:
    """HU -> network input: clip to ``window`` = (low, high) HU and scale to [0, 1]."""
    lo, hi = float(window[0]), float(window[1])
    return (images_hu.float().clamp(lo, hi) - lo) / (hi - lo)


def resize_image(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): area when shrinking (no aliasing), else bilinear."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if x.shape[-1] >= size and x.shape[-2] >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resize_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, size, size) by nearest neighbour."""
    if tuple(labels.shape[-2:]) == (size, size):
        return labels
    return F.interpolate(labels[:, None].float(), size=(size, size),
                         mode="nearest-exact")[:, 0].to(labels.dtype)


class Segmenter(PretrainedModel):
    """The U-Net plus everything needed to apply it to HU images and to identify it.

    Attributes:
        config: the :class:`SegConfig` it was built with.
        meta: provenance written to ``config.json`` under ``training`` (config name, dataset
            manifest sha256, validation scores, trained steps); the same dict as
            ``training_info``.
        weights_sha256: sha256 of the ``model.safetensors`` it was loaded from (else ``None``).
    """

    family = "segmenter"
    config_class = SegConfig
    legacy_formats = (LEGACY_FORMAT,)

    def __init__(self, config: SegConfig, meta: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        import segmentation_models_pytorch as smp

        self.training_info = dict(meta or {})
        self.net = smp.Unet(encoder_name=config.encoder, encoder_depth=config.encoder_depth,
                            encoder_weights=None, decoder_channels=list(config.decoder_channels),
                            in_channels=1, classes=len(config.classes))
        if config.bn_momentum is not None:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = config.bn_momentum

    @property
    def meta(self) -> dict[str, Any]:
        return self.training_info

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config.classes)

    @property
    def hu_window(self) -> tuple[float, float]:
        return (float(self.config.hu_window[0]), float(self.config.hu_window[1]))

    @property
    def input(self) -> str:
        """The image it was trained on (``"gsi"`` or ``"ordinary"``)."""
        return self.config.input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) network input in [0, 1] -> (B, C, S, S) logits."""
        return self.net(x)

    def logits(self, images_hu: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) HU -> (B, C, H, W) logits on the input grid (resampled to
        ``image_size`` for the network, bilinearly back)."""
        if images_hu.ndim != 4 or images_hu.shape[1] != 1:
            raise SegmentationDataError(f"Segmenter: images must be (B, 1, H, W) HU, got "
                             f"{tuple(images_hu.shape)}")
        h, w = images_hu.shape[-2:]
        x = resize_image(hu_to_input(images_hu, self.config.hu_window), self.config.image_size)
        out = self.net(x)
        if tuple(out.shape[-2:]) != (h, w):
            out = F.interpolate(out.float(), size=(h, w), mode="bilinear", align_corners=False)
        return out

    @torch.no_grad()
    def predict(self, images_hu: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """(B, 1, H, W) float HU -> (B, H, W) uint8 label maps on the input grid (eval mode,
        in chunks of ``batch_size``)."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        try:
            # argmax over classes on a channels-last copy: the same labels (first maximum on
            # ties, as argmax(1)), about 5x faster on CPU than a reduction across strided
            # channel planes, which was a fifth of scoring's cost at 512 px
            outs = [self.logits(images_hu[i:i + batch_size].to(dev)).permute(0, 2, 3, 1)
                    .contiguous().argmax(-1).to(torch.uint8)
                    for i in range(0, images_hu.shape[0], batch_size)]
        finally:
            self.train(was)
        if not outs:
            return torch.zeros((0, *images_hu.shape[-2:]), dtype=torch.uint8, device=dev)
        return torch.cat(outs)

    # ------------------------------------------------------------------------------ weights
    def normalisation(self) -> dict[str, Any]:
        return hu_window(*self.hu_window, 0.0, 1.0)

    @property
    def target(self) -> str:
        return "labels"

    def model_record(self) -> dict[str, Any]:
        return {**super().model_record(), "classes": list(self.classes), "input": self.input}

    def check_record(self, record: dict[str, Any] | None, where: str) -> None:
        """A record whose classes, input or HU window differ from the config's means the
        file was edited: :class:`SegmenterMismatchError`."""
        mine = self.model_record()
        for key, have in (("classes", mine["classes"]), ("input", mine["input"]),
                          ("normalisation", mine["normalisation"])):
            if record and key in record and record[key] != have:
                raise SegmenterMismatchError(f"{where}: {key} {record[key]!r} differs from "
                                             f"its config's {have!r}; the file was edited")

    @classmethod
    def upgrade_legacy(cls, meta: dict[str, Any], where: str) -> dict[str, Any]:
        """``marbench-segmenter/1``: classes, HU window and input at the top level beside
        the provenance and the config."""
        record: dict[str, Any] = {k: meta[k] for k in ("classes", "input") if k in meta}
        if "hu_window" in meta:
            record["normalisation"] = hu_window(*meta["hu_window"], 0.0, 1.0)
        training = {k: v for k, v in meta.items()
                    if k not in ("format", "config", "classes", "hu_window", "input")}
        return {"family": cls.family, "config": meta.get("config", {}), "training": training,
                "model": record}


def load_segmenter(path: str | Path, expected_classes: Sequence[str] = CLASS_NAMES,
                   expected_window: Sequence[float] = HU_WINDOW, *,
                   revision: str | None = None,
                   map_location: str | torch.device = "cpu") -> Segmenter:
    """Load a frozen segmenter for scoring, refusing one that measures something else.

    Args:
        path: a model folder (``RUN/model``) or a Hub model repo id.
        expected_classes: the label names the scored dataset uses (value i = name i).
        expected_window: the HU window the benchmark's segmentation scores are defined with.

    Raises:
        SegmenterNotFoundError: no segmenter there.
        SegmenterMismatchError: trained on another class list or HU window (names both).
    """
    try:
        seg = Segmenter.from_pretrained(path, revision=revision, map_location=map_location)
    except IncompatibleWeightsError:
        raise
    except WeightsError as e:
        raise SegmenterNotFoundError(f"{e}; train a segmenter with `marbench train segmenter "
                                     "--config seg-cpu --data DATA --out RUN` and pass "
                                     "RUN/model") from e
    where = Path(str(path)) / "config.json"
    if tuple(seg.classes) != tuple(expected_classes):
        raise SegmenterMismatchError(
            f"{where}: the segmenter was trained on classes {list(seg.classes)}, but the "
            f"benchmark scores {list(expected_classes)}; retrain it on this dataset's labels")
    if tuple(float(v) for v in expected_window) != seg.hu_window:
        raise SegmenterMismatchError(
            f"{where}: the segmenter's input HU window is {list(seg.hu_window)}, but the "
            f"benchmark's segmentation scores use {[float(v) for v in expected_window]}; "
            "retrain it with the default hu_window")
    seg.requires_grad_(False)
    return seg


def segmenter_identity(seg: Segmenter) -> dict[str, Any]:
    """What results files record about the segmenter that scored them."""
    val = seg.meta.get("validation") or {}
    return {"format": seg.format, "weights_sha256": seg.weights_sha256, "input": seg.input,
            "config_name": seg.meta.get("config_name"), "encoder": seg.config.encoder,
            "image_size": seg.config.image_size, "classes": list(seg.classes),
            "hu_window": list(seg.hu_window),
            "dataset_manifest_sha256": seg.meta.get("dataset_manifest_sha256"),
            "train_content_sha256": seg.meta.get("train_content_sha256"),
            "validation_miou": val.get("miou"), "source": seg.source}


# ----------------------------------------------------------------------------- data


@dataclass
class LabelledSplit:
    """Labelled rows of one ``pairs`` split, in benchmark order (patient, slice index).

    Attributes:
        rows: dataset row numbers that have labels; ``patient_ids``, ``slice_index``,
            ``implant_types``: per row of ``rows``; ``manifest_sha256``: of the dataset.
    """

    dataset: Any
    rows: list[int]
    patient_ids: list[str]
    slice_index: list[int]
    implant_types: list[str]
    manifest_sha256: str | None
    where: str
    columns: tuple[str, ...]
    content_sha256: str | None = None  # the split's content fingerprint (manifest.json)

    def arrays(self, positions: Sequence[int], columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Columns of the rows at ``positions`` (indices into ``rows``) as numpy arrays."""
        d = self.dataset[[self.rows[i] for i in positions]]
        return {c: np.asarray(d[c]) for c in columns}


def open_labelled(data: str | Path, split: str = "train", *, config: str = "pairs",
                  revision: str | None = None) -> LabelledSplit:
    """The labelled rows of ``data`` / ``config`` / ``split`` (files checked against the
    manifest). :class:`SegmentationDataError` when the split has no ``labels`` at all."""
    import datasets

    from ..data import resolve_source, split_content_sha256

    source, files = resolve_source(data, config, split, revision)
    ds = datasets.load_dataset("parquet", split=split,
                               data_files={split: [str(source.folder / f.path) for f in files]})
    where = f"{source.source} (config {config!r}, split {split!r})"
    if "labels" not in ds.column_names:
        raise SegmentationDataError(f"{where} has no 'labels' column: segmentation needs "
                                    "the label maps (simulated data, or a build with "
                                    "labels.nii.gz per patient)")
    table = ds.data
    null = np.asarray(table.column("labels").is_null().to_pylist(), bool)
    pids = [str(p) for p in table.column("patient_id").to_pylist()]
    sidx = [int(s) for s in table.column("slice_index").to_pylist()]
    implant = table.column("implant_type").to_pylist()
    names = getattr(ds.features.get("implant_type"), "int2str", None)
    implant = [names(int(v)) if names is not None and v is not None else str(v)
               for v in implant]
    order = sorted((k for k in range(len(pids)) if not null[k]),
                   key=lambda k: (pids[k], sidx[k]))
    if not order:
        raise SegmentationDataError(f"{where}: no row has labels")
    cols = tuple(c for c in ("gsi", "ordinary", "ideal", "labels", "metal_mask")
                 if c in ds.column_names)
    return LabelledSplit(dataset=ds.with_format("numpy", columns=list(cols), dtype=None),
                         rows=order, patient_ids=[pids[k] for k in order],
                         slice_index=[sidx[k] for k in order],
                         implant_types=[implant[k] for k in order],
                         manifest_sha256=source.manifest_sha256, where=where, columns=cols,
                         content_sha256=split_content_sha256(source.folder, config, split))


def train(config: str | Path | dict[str, Any] | SegConfig, data: str | Path, out: str | Path,
          *, resume: bool = False, overrides: dict[str, Any] | None = None) -> Path:
    """``marbench train segmenter``: :func:`benchmark.segmentation.training.train` (see there)."""
    from .training import train as train_segmenter

    return train_segmenter(config, data, out, resume=resume, overrides=overrides)


train.configs = list(CONFIGS)  # type: ignore[attr-defined]


__all__ = ["CONFIGS", "HU_WINDOW", "INPUTS", "NUM_CLASSES", "LabelledSplit",
           "PredictionsNotFoundError", "SegConfig", "SegConfigError", "Segmenter",
           "SegmentationDataError", "SegmenterMismatchError", "SegmenterNotFoundError",
           "TrainError", "load_config", "load_segmenter", "open_labelled", "seg_summary",
           "segmenter_identity", "train"]
