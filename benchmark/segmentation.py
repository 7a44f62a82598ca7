"""The downstream segmenter: a segmentation-models-pytorch U-Net that labels metal implant,
left / right pelvis and left / right femur on one CT slice.

Trained on the ``pairs`` train split's GSI images (or, for the information-sufficiency check,
its ordinary images) against the ``labels`` column, then frozen and applied to a method's
output (:class:`benchmark.metrics.segmentation.SegmentationScorer`)::

    marbench train segmenter --config seg-cpu --data data/built --out runs/seg-gsi
    marbench train segmenter --config seg-cpu --data data/built --out runs/seg-ord \
        --input ordinary

or from Python: ``train("seg-cpu", "data/built", Path("runs/seg-gsi"))``.

The recipe (every setting is a field of :class:`SegConfig`; shipped YAML files in
``benchmark/configs/seg-*.yaml``):

- ``smp.Unet(encoder_name, encoder_weights=None, in_channels=1, classes=6)``: no download;
- input: HU clipped to the fixed window :data:`HU_WINDOW` and scaled to [0, 1], resampled to
  ``image_size`` (area when shrinking); the window is recorded with the weights and a
  segmenter with another window is refused by :func:`load_segmenter`;
- loss: cross-entropy + multiclass soft Dice (``smp.losses.DiceLoss``);
- augmentation: small random rotations, scalings and shifts, never left / right flips (they
  would swap the paired pelvis / femur classes);
- validation on whole held-out training patients (chosen by the sha256 of their ids); the best
  validation mIoU's weights are kept.

Run folder ``OUT``::

    OUT/config.json                  the resolved config of the run
    OUT/checkpoints/last.pt          weights, optimiser, step, best score (for --resume)
    OUT/checkpoints/best.safetensors best validation weights so far
    OUT/log.jsonl                    one line per validation
    OUT/model/                       the trained segmenter (save_pretrained)

Model folder (:meth:`Segmenter.save_pretrained`)::

    config.json        {"format": "marbench-segmenter/1", "config": SegConfig, "classes",
                        "hu_window", "input", "config_name", "dataset_manifest_sha256",
                        "validation": {"miou", "iou.metal", ...}, "trained_steps", ...}
    model.safetensors  the U-Net's parameters
"""

from __future__ import annotations

import hashlib
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
import torch.nn.functional as F
from torch import nn

from artifactgsi.fileio import sha256_file, write_text_atomic
from artifactgsi.schema import HU_MAX, HU_MIN

from .config_files import dataclass_kwargs, find_config_file, load_values, plain_dict
from .metrics.segmentation import CLASS_NAMES, NUM_CLASSES, SegmentationScorer, seg_summary

#: Folder of the shipped YAML configs.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Shipped config names (``train.configs``).
CONFIGS = ("seg-tiny", "seg-cpu", "seg-paper")
#: The fixed HU window of the segmenter's input: clipped to it and scaled to [0, 1]. The
#: 12-bit CT range of the scoring protocol, so metal (> 2500 HU) and bone stay apart.
HU_WINDOW: tuple[float, float] = (HU_MIN, HU_MAX)
#: Images a segmenter can be trained on (dataset columns).
INPUTS = ("gsi", "ordinary")

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "marbench-segmenter/1"


class SegConfigError(ValueError):
    """A config file or value is invalid (the message names the file and the key)."""


class SegmentationDataError(ValueError):
    """The dataset cannot train or score a segmenter (e.g. it has no ``labels``)."""


class SegmenterNotFoundError(FileNotFoundError):
    """No segmenter where one was looked for (the message says where and how to make one)."""


class SegmenterMismatchError(ValueError):
    """A segmenter was trained for other classes or another HU window than the benchmark's."""


class TrainError(RuntimeError):
    """A run cannot start or resume as asked (the message says why and what to do)."""


# ----------------------------------------------------------------------------- config


@dataclass
class SegConfig:
    """Every setting of the segmenter. Defaults = ``seg-paper`` (512 px, GPU)."""

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

        def bad(key: str, why: str) -> SegConfigError:
            return SegConfigError(f"{where}: {key}: {why}")

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

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> SegConfig:
        """Defaults overridden by ``values``; unknown keys and wrong types (list items
        included) are errors."""
        kw = dataclass_kwargs(cls, values, where, SegConfigError, check_items=True)
        return cls(**kw).validate(where)


def _config_path(name: str, relative_to: Path | None = None) -> Path:
    """The YAML file of a shipped config name or a path (a ``base:`` relative to its file)."""
    return find_config_file(name, CONFIG_DIR, SegConfigError, relative_to=relative_to,
                            what="segmenter config", shipped=CONFIGS)


def load_config(config: str | Path | dict[str, Any] | SegConfig | None = None,
                overrides: dict[str, Any] | None = None) -> tuple[SegConfig, str]:
    """(config, its name) from a shipped name (``"seg-cpu"``), a YAML path, a dict, a
    :class:`SegConfig` or ``None`` (the defaults), with ``overrides`` applied last."""
    values, where, path = load_values(config, SegConfig, _config_path, SegConfigError,
                                      keys_of="SegConfig")
    name = path.stem if path else "seg-paper" if config is None else "custom"
    if overrides:
        values.update(overrides)
        where += f" (with overrides {', '.join(sorted(overrides))})"
    return SegConfig.from_dict(values, where), name


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


class Segmenter(nn.Module):
    """The U-Net plus everything needed to apply it to HU images and to identify it.

    Attributes:
        config: the :class:`SegConfig` it was built with.
        meta: provenance written to ``config.json`` (config name, dataset manifest sha256,
            validation scores, trained steps).
        weights_sha256: sha256 of the ``model.safetensors`` it was loaded from (else ``None``).
    """

    def __init__(self, config: SegConfig, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.config = config
        self.meta: dict[str, Any] = dict(meta or {})
        self.weights_sha256: str | None = None
        self.source: str | None = None
        self.net = smp.Unet(encoder_name=config.encoder, encoder_depth=config.encoder_depth,
                            encoder_weights=None, decoder_channels=list(config.decoder_channels),
                            in_channels=1, classes=len(config.classes))
        if config.bn_momentum is not None:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = config.bn_momentum

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
            raise ValueError(f"Segmenter: images must be (B, 1, H, W) HU, got "
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
            outs = [self.logits(images_hu[i:i + batch_size].to(dev)).argmax(1).to(torch.uint8)
                    for i in range(0, images_hu.shape[0], batch_size)]
        finally:
            self.train(was)
        if not outs:
            return torch.zeros((0, *images_hu.shape[-2:]), dtype=torch.uint8, device=dev)
        return torch.cat(outs)

    # ------------------------------------------------------------------------------ weights
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``folder`` (each atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point()
                 else v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = folder / f".{WEIGHTS_NAME}.{os.getpid()}.tmp"
        save_file(state, str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, folder / WEIGHTS_NAME)
        self.weights_sha256 = sha256_file(folder / WEIGHTS_NAME)
        meta = {"format": FORMAT, "classes": list(self.classes),
                "hu_window": list(self.hu_window), "input": self.input,
                **{k: v for k, v in self.meta.items() if k not in ("format", "config")},
                "config": self.config.to_dict()}
        write_text_atomic(folder / CONFIG_NAME, json.dumps(meta, indent=1))
        return folder

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None,
                        map_location: str | torch.device = "cpu") -> Segmenter:
        """Load a folder written by :meth:`save_pretrained`, or a Hub model repo id."""
        from safetensors.torch import load_file

        folder = resolve_segmenter(source, revision)
        cfg_path = folder / CONFIG_NAME
        try:
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SegmenterNotFoundError(f"{cfg_path}: not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise SegmenterNotFoundError(f"{cfg_path}: format {found!r}, expected {FORMAT!r}; "
                                         "is this a segmenter folder (marbench train segmenter)?")
        config = SegConfig.from_dict(meta.get("config", {}), str(cfg_path))
        for key, have in (("classes", list(config.classes)),
                          ("hu_window", list(config.hu_window)), ("input", config.input)):
            if key in meta and meta[key] != have:
                raise SegmenterMismatchError(f"{cfg_path}: {key} {meta[key]!r} differs from "
                                             f"its config's {have!r}; the file was edited")
        extra = {k: v for k, v in meta.items()
                 if k not in ("format", "config", "classes", "hu_window", "input")}
        model = cls(config, extra)
        state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SegmenterNotFoundError(f"{folder / WEIGHTS_NAME}: does not match its "
                                         f"config.json: missing {missing[:5]}, unexpected "
                                         f"{unexpected[:5]}")
        model.weights_sha256 = sha256_file(folder / WEIGHTS_NAME)
        model.source = str(source)
        model.eval()
        return model


def resolve_segmenter(source: str | Path, revision: str | None = None) -> Path:
    """A local segmenter folder, or the snapshot of a Hub model repo id
    (:class:`SegmenterNotFoundError` when neither has config.json + model.safetensors)."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise SegmenterNotFoundError(
                f"{path}: not a segmenter folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                "train one with `marbench train segmenter --config seg-cpu --data DATA "
                "--out RUN` and pass RUN/model")
        return path
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return resolve_segmenter(Path(snapshot_download(
                text, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])))
        except SegmenterNotFoundError:
            raise
        except Exception as e:  # offline, unknown repo, auth
            raise SegmenterNotFoundError(
                f"segmenter {text!r}: no such folder, and downloading it as a Hub model repo "
                f"failed: {type(e).__name__}: {e}") from e
    raise SegmenterNotFoundError(f"segmenter {text!r}: no such folder (nor a Hub repo id "
                                 "'org/name'); train one with `marbench train segmenter`")


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
    seg = Segmenter.from_pretrained(path, revision=revision, map_location=map_location)
    where = Path(str(path)) / CONFIG_NAME
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
    return {"format": FORMAT, "weights_sha256": seg.weights_sha256, "input": seg.input,
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

    from .data import resolve_source, split_content_sha256

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


def patient_split(patient_ids: Sequence[str], val_fraction: float) -> tuple[list[int],
                                                                              list[int]]:
    """(train positions, validation positions): whole patients held out, chosen by the sha256
    of their ids (deterministic, independent of row order); at least one patient when there
    are two or more. With one patient it serves both (validation is then not held out)."""
    patients = sorted(set(patient_ids), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    n_val = math.ceil(val_fraction * len(patients)) if val_fraction > 0 else 0
    if len(patients) < 2:
        every = list(range(len(patient_ids)))
        return every, every
    held = set(patients[:min(max(n_val, 1), len(patients) - 1)])
    train = [i for i, p in enumerate(patient_ids) if p not in held]
    val = [i for i, p in enumerate(patient_ids) if p in held]
    return train, val


class SegSlices(torch.utils.data.Dataset):
    """Training items: ``image`` (1, S, S) float32 network input, ``labels`` (S, S) int64."""

    def __init__(self, split: LabelledSplit, positions: Sequence[int], config: SegConfig
                 ) -> None:
        if config.input not in split.columns:
            raise SegmentationDataError(f"{split.where} has no {config.input!r} column")
        self.split, self.positions, self.cfg = split, list(positions), config

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a = self.split.arrays([self.positions[i]], (self.cfg.input, "labels"))
        img = torch.from_numpy(a[self.cfg.input].astype(np.float32))[:, None]   # (1,1,H,W)
        lab = torch.from_numpy(a["labels"].astype(np.int64))                    # (1,H,W)
        s = self.cfg.image_size
        x = resize_image(hu_to_input(img, self.cfg.hu_window), s)[0]
        return {"image": x, "labels": resize_labels(lab, s)[0]}


def random_affine(images: torch.Tensor, labels: torch.Tensor, config: SegConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random rotation / scaling / shift per sample of (B, 1, S, S) inputs (bilinear,
    outside = 0, i.e. the window's low end) and (B, S, S) labels (nearest, outside =
    background). Never a flip: left and right classes keep their sides."""
    b = images.shape[0]
    u = torch.rand((4, b), generator=generator)
    ang = (u[0] * 2 - 1) * math.radians(config.rotate_deg)
    lo, hi = config.scale_range
    scale = lo + (hi - lo) * u[1]
    shift = (u[2:] * 2 - 1) * 2 * config.shift_fraction   # grid units: the side is 2
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[0]], 1),
                         torch.stack([sin, cos, shift[1]], 1)], 1).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                      align_corners=False)[:, 0].long()
    return x, y


# ----------------------------------------------------------------------------- training


def lr_at(config: SegConfig, step: int, total: int) -> float:
    """Cosine decay from ``lr`` (step 0) to ``lr_final_ratio * lr`` (last step); a pure
    function of the step so a resumed run continues the same curve."""
    if total <= 1:
        return config.lr
    t = min(step, total - 1) / (total - 1)
    lo = config.lr * config.lr_final_ratio
    return lo + 0.5 * (config.lr - lo) * (1.0 + math.cos(math.pi * t))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one step's augmentation draws: a pure function of (seed, step),
    so a resumed run draws what the uninterrupted one did."""
    digest = hashlib.sha256(f"seg/{seed}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The permutation of the training items in ``epoch`` (depends on seed and epoch only)."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


@torch.no_grad()
def evaluate_rows(seg: Segmenter, split: LabelledSplit, positions: Sequence[int],
                  image: str, batch_size: int = 8) -> SegmentationScorer:
    """Score ``seg`` on the ``image`` column (``"gsi"``, ``"ordinary"``, ``"ideal"``) of the
    rows at ``positions``, against their labels on the native grid."""
    if image not in split.columns:
        raise SegmentationDataError(f"{split.where} has no {image!r} column")
    dev = next(seg.parameters()).device
    scorer = SegmentationScorer(seg, dev)
    for i in range(0, len(positions), batch_size):
        pos = list(positions[i:i + batch_size])
        a = split.arrays(pos, (image, "labels"))
        imgs = torch.from_numpy(np.asarray(a[image], np.float32))[:, None]
        scorer.update(imgs, torch.from_numpy(a["labels"].astype(np.uint8)),
                      [split.patient_ids[p] for p in pos], [split.slice_index[p] for p in pos])
    return scorer


@dataclass
class SegEvaluation:
    """Scores of one segmenter on one image column of a split."""

    image: str
    n_slices: int
    summary: dict[str, float]
    per_patient: dict[str, dict[str, float]]
    per_implant: dict[str, dict[str, float]]
    rows: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "n_slices": self.n_slices, "summary": self.summary,
                "per_patient": self.per_patient, "per_implant": self.per_implant}


def evaluate_segmenter(seg: Segmenter, data: str | Path | LabelledSplit, split: str = "test",
                       image: str | None = None, batch_size: int = 8) -> SegEvaluation:
    """IoU / mIoU of ``seg`` on a split's ``image`` column (default: the image it was trained
    on), dataset-level, per patient and per implant type."""
    from .metrics.segmentation import seg_summary_by

    ls = data if isinstance(data, LabelledSplit) else open_labelled(data, split)
    image = image or seg.input
    positions = list(range(len(ls.rows)))
    sc = evaluate_rows(seg, ls, positions, image, batch_size)
    rows = sc.per_slice()
    return SegEvaluation(image=image, n_slices=len(rows), summary=sc.summary(),
                         per_patient=sc.per_patient(),
                         per_implant=seg_summary_by(rows, ls.implant_types), rows=rows)


def score_predictions(seg: Segmenter, data: str | Path | LabelledSplit,
                      predictions: str | Path, split: str = "test",
                      batch_size: int = 8) -> SegEvaluation:
    """IoU / mIoU of ``seg`` applied to a run's predictions Parquet (``patient_id``,
    ``slice_index``, ``prediction`` int16 HU), against the labels of the same slices.

    Args:
        predictions: the Parquet file, or a run folder (``predictions/<split>-*.parquet``).

    Raises:
        SegmentationDataError: a predicted slice has no labelled row in the split.
    """
    import pyarrow.parquet as pq

    from .metrics.segmentation import seg_summary_by

    path = Path(predictions)
    if path.is_dir():
        found = sorted((path / "predictions").glob(f"{split}-*.parquet"))
        if not found:
            raise FileNotFoundError(f"{path}: no predictions/{split}-*.parquet (run "
                                    "`marbench run` without --no-save-predictions)")
        path = found[0]
    ls = data if isinstance(data, LabelledSplit) else open_labelled(data, split)
    at = {(p, s): i for i, (p, s) in enumerate(zip(ls.patient_ids, ls.slice_index,
                                                   strict=True))}
    table = pq.read_table(path)
    pids = [str(p) for p in table.column("patient_id").to_pylist()]
    sidx = [int(s) for s in table.column("slice_index").to_pylist()]
    missing = [(p, s) for p, s in zip(pids, sidx, strict=True) if (p, s) not in at]
    if missing:
        raise SegmentationDataError(f"{path}: {len(missing)} predicted slice(s) have no "
                                    f"labelled row in {ls.where}, e.g. patient "
                                    f"{missing[0][0]!r} slice {missing[0][1]}")
    dev = next(seg.parameters()).device
    scorer = SegmentationScorer(seg, dev)
    implants: list[str] = []
    for i in range(0, len(pids), batch_size):
        chunk = table.slice(i, batch_size)
        pred = np.stack([np.asarray(r, np.float32)
                         for r in chunk.column("prediction").to_pylist()])
        pos = [at[(p, s)] for p, s in zip(pids[i:i + batch_size], sidx[i:i + batch_size],
                                          strict=True)]
        labels = ls.arrays(pos, ("labels",))["labels"].astype(np.uint8)
        scorer.update(torch.from_numpy(pred)[:, None], torch.from_numpy(labels),
                      [ls.patient_ids[p] for p in pos], [ls.slice_index[p] for p in pos])
        implants += [ls.implant_types[p] for p in pos]
    rows = scorer.per_slice()
    return SegEvaluation(image=str(path), n_slices=len(rows), summary=scorer.summary(),
                         per_patient=scorer.per_patient(),
                         per_implant=seg_summary_by(rows, implants), rows=rows)


def _dice_ce(config: SegConfig) -> Any:
    import segmentation_models_pytorch as smp

    dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(logits.float(), target)
        d = dice(logits.float(), target)
        return {"ce": ce, "dice": d, "loss": config.ce_weight * ce + config.dice_weight * d}

    return loss


def train(config: str | Path | dict[str, Any] | SegConfig, data: str | Path, out: str | Path,
          *, resume: bool = False, overrides: dict[str, Any] | None = None) -> Path:
    """Train a segmenter from ``config`` on the ``pairs`` train split of ``data``, into the
    run folder ``out``; return the saved model folder ``out/model``.

    Args:
        config: a shipped config name (``"seg-tiny"``, ``"seg-cpu"``, ``"seg-paper"``), a
            YAML path, a dict or a :class:`SegConfig`.
        data: a built dataset folder or a Hub dataset repo id; needs the ``labels`` column.
        out: run folder (created); must not hold a run unless ``resume``.
        resume: continue the run in ``out`` from its last checkpoint (same config).
        overrides: config keys set from the command line, e.g. ``{"input": "ordinary",
            "seed": 1}``; unknown keys and bad values (an ``input`` other than ``gsi`` /
            ``ordinary``) raise :class:`SegConfigError` (a ``ValueError``).

    Returns:
        ``out / "model"`` (load with :func:`load_segmenter` or ``Segmenter.from_pretrained``).
    """
    from safetensors.torch import load_file, save_file

    cfg, cfg_name = load_config(config, overrides)
    out = Path(out)
    run_cfg = out / "config.json"
    if run_cfg.is_file():
        if not resume:
            raise TrainError(f"{out}: already holds a run; pass resume=True (--resume) to "
                             "continue it, or choose another --out folder")
        old = json.loads(run_cfg.read_text(encoding="utf-8"))
        if old != cfg.to_dict():
            diff = sorted(k for k in set(old) | set(cfg.to_dict())
                          if old.get(k) != cfg.to_dict().get(k))
            raise TrainError(f"{run_cfg}: the run was started with a different config "
                             f"(keys {', '.join(diff)}); resume with the same config")
    elif resume:
        raise TrainError(f"{out}: nothing to resume (no config.json)")

    split = open_labelled(data, "train")
    train_pos, val_pos = patient_split(split.patient_ids, cfg.val_fraction)
    n_train_p = len({split.patient_ids[i] for i in train_pos})
    n_val_p = len({split.patient_ids[i] for i in val_pos})
    if set(train_pos) == set(val_pos):
        import warnings

        warnings.warn(f"{split.where}: one labelled training patient; validation uses the "
                      "training slices (no held-out patient)", stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_cfg, json.dumps(cfg.to_dict(), indent=1))

    torch.manual_seed(cfg.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dev.type == "cuda" and cfg.mixed_precision != "no"
    amp_dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
    meta = {"config_name": cfg_name, "dataset_manifest_sha256": split.manifest_sha256,
            "train_content_sha256": split.content_sha256,
            "dataset_source": str(data), "train_patients": n_train_p, "val_patients": n_val_p,
            "train_slices": len(train_pos), "val_slices": len(val_pos)}
    model = Segmenter(cfg, meta).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    loss_fn = _dice_ce(cfg)
    ds = SegSlices(split, train_pos, cfg)
    spe = math.ceil(len(ds) / cfg.batch_size)
    total = cfg.epochs * spe if cfg.max_steps is None else min(cfg.epochs * spe, cfg.max_steps)
    ckpt = out / "checkpoints"
    best_path = ckpt / "best.safetensors"
    st: dict[str, Any] = {"step": 0, "best_miou": None, "best_step": None, "best_scores": None,
                          "seconds": 0.0}
    if resume and (ckpt / "last.pt").is_file():
        saved = torch.load(ckpt / "last.pt", map_location=dev, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        st = saved["state"]
        print(f"[seg] resumed from {ckpt / 'last.pt'} at step {st['step']}/{total}")

    def save_last() -> None:
        ckpt.mkdir(parents=True, exist_ok=True)
        tmp = ckpt / f".last.pt.{os.getpid()}.tmp"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": st},
                   tmp)
        os.replace(tmp, ckpt / "last.pt")

    print(f"[seg] {cfg_name}: input {cfg.input}, {len(train_pos)} training slices "
          f"({n_train_p} patients), {len(val_pos)} validation slices ({n_val_p} patients), "
          f"{total} steps on {dev}")
    feed = {"num_workers": cfg.num_workers, "pin_memory": dev.type == "cuda",
            "batch_size": cfg.batch_size}
    t0 = time.perf_counter()
    losses_sum, n_seen = 0.0, 0
    while st["step"] < total:
        epoch = st["step"] // spe
        order = epoch_order(len(ds), cfg.seed, epoch)
        skip = st["step"] - epoch * spe
        sub = torch.utils.data.Subset(ds, order[skip * cfg.batch_size:])
        model.train()
        for batch in torch.utils.data.DataLoader(sub, shuffle=False, **feed):
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, st["step"], total)
            x, y = batch["image"], batch["labels"]
            if cfg.augment:
                x, y = random_affine(x, y, cfg, step_generator(cfg.seed, st["step"]))
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                logits = model(x)
            losses = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            st["step"] += 1
            losses_sum += float(losses["loss"].detach())
            n_seen += 1
            end_epoch = st["step"] % spe == 0 or st["step"] >= total
            if st["step"] % cfg.checkpoint_every == 0 and not end_epoch:
                st["seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_last()
            if st["step"] >= total:
                break
        ep_done = st["step"] // spe if st["step"] % spe == 0 else epoch + 1
        if st["step"] < total and ep_done % cfg.val_every:
            continue
        scores = evaluate_rows(model, split, val_pos, cfg.input).summary()
        st["seconds"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        miou = scores["miou"]
        if st["best_miou"] is None or (not math.isnan(miou) and miou > st["best_miou"]):
            st["best_miou"], st["best_step"] = miou, st["step"]
            st["best_scores"] = scores
            ckpt.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().float().cpu().contiguous() if v.is_floating_point()
                       else v.detach().cpu().contiguous()
                       for k, v in model.state_dict().items()}, str(best_path))
        entry = {"epoch": ep_done, "step": st["step"], "train_loss": losses_sum / max(n_seen, 1),
                 **{f"val_{k}": v for k, v in scores.items()},
                 "best_miou": st["best_miou"], "best_step": st["best_step"],
                 "seconds": round(st["seconds"], 2)}
        with open(out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        print(f"[seg] epoch {ep_done}: step {st['step']}/{total} loss "
              f"{entry['train_loss']:.4f} val mIoU {miou:.4f} ({st['seconds']:.0f} s)")
        losses_sum, n_seen = 0.0, 0
        save_last()
    if best_path.is_file():
        best = load_file(str(best_path), device=str(dev))
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in best.items()})
    model.meta.update({"validation": st["best_scores"], "trained_steps": st["best_step"],
                       "total_steps": total, "train_seconds": round(st["seconds"], 1),
                       "device": str(dev)})
    return model.save_pretrained(out / "model")


train.configs = list(CONFIGS)  # type: ignore[attr-defined]


def count_parameters(seg: Segmenter) -> int:
    return sum(p.numel() for p in seg.parameters())


__all__ = ["CONFIGS", "HU_WINDOW", "INPUTS", "NUM_CLASSES", "LabelledSplit", "SegConfig",
           "SegConfigError", "SegEvaluation", "Segmenter", "SegmentationDataError",
           "SegmenterMismatchError", "SegmenterNotFoundError", "TrainError",
           "evaluate_segmenter", "load_config", "load_segmenter", "open_labelled",
           "patient_split", "seg_summary", "segmenter_identity", "train"]
