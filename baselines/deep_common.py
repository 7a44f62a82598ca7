"""What the supervised image-domain deep baselines (``unet``, ``dicdnet``, ``oscnet``,
``oscnet_plus``) and the DuDoDp prior share at run time: the config fields of their data and
optimisation, the HU normalisation, the network base class and the benchmark method.

Training is in :mod:`baselines.deep_train`; configs, weights folders, runs, checkpoints and
weights lookup come from the training kit (:mod:`benchmark.learn`).

* Targets: ``gsi`` (default) or ``clean``. A built dataset holds no image of the anatomy
  without its implant, so ``clean`` uses the ``ideal`` column: the noise- and artifact-free
  monochromatic image of the same anatomy (metal included). Both the requested target and
  the column used are recorded in the weights and in results files.
* HU normalisation: HU clipped to [hu_min, hu_max] and mapped linearly to [0, scale].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from artifactgsi.schema import HU_MAX, HU_MIN
from benchmark.learn.config import ConfigBase
from benchmark.learn.errors import ConfigError, ImageSizeMismatchError, IncompatibleWeightsError
from benchmark.learn.method import WeightsMethod, parse_flag
from benchmark.learn.schedules import SCHEDULES, learning_rate
from benchmark.learn.weights import PretrainedModel, hu_window
from benchmark.method import MARInput, MAROutput, PrepareContext

from .errors import OptionError

TARGETS = ("gsi", "clean")


# ----------------------------------------------------------------------------- config


@dataclass
class TrainConfig(ConfigBase):
    """Settings every deep baseline shares: data, normalisation and optimisation.

    Subclasses add their model's fields and set ``config_dir``; they document the defaults
    of their ``*-paper`` config.
    """

    variant: str = ""                 # method name the weights are for (unet, dicdnet, ...)
    # ---- data
    target: str = "gsi"               # "gsi" or "clean" (the ``ideal`` column, see module doc)
    image_size: int | None = None     # px; None = the training data's size (recorded)
    hu_min: float = HU_MIN            # HU window mapped to [0, scale] (the dataset window)
    hu_max: float = HU_MAX
    scale: float = 1.0
    patch_size: int = 64              # random square training patches (0 = whole slices)
    flips: bool = True                # random up-down / left-right flips of training patches
    val_fraction: float = 0.2         # share of training patients held out for validation
    val_max_slices: int | None = 64   # validation subset (None = every held-out slice)
    data_cache: str | None = None     # folder for the cached arrays and LI images
    # ---- optimisation
    batch_size: int = 16
    lr: float = 2e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0            # max gradient norm (0 = none)
    max_steps: int = 1000
    lr_schedule: str = "step"         # "step" (x lr_gamma every lr_decay_every), "cosine",
    lr_decay_every: int = 1000        #   "constant"
    lr_gamma: float = 0.5
    lr_final_ratio: float = 0.02      # cosine: final lr / lr
    val_every: int = 100              # steps between validations (and the last step)
    checkpoint_every: int = 100       # steps between resumable checkpoints
    time_limit_s: float | None = None  # stop early (at a checkpoint) after this many seconds
    mixed_precision: str = "no"       # on GPU: "no", "bf16", "fp16"; CPU always fp32
    seed: int = 0
    init_from: str | None = None      # fine-tune from these weights (same size/normalisation)

    def validate(self, where: str = "config") -> TrainConfig:
        if self.target not in TARGETS:
            raise self.bad(where, "target", f"must be 'gsi' or 'clean', got {self.target!r}")
        if not self.hu_max > self.hu_min:
            raise self.bad(where, "hu_max", f"must be above hu_min ({self.hu_min})")
        if self.scale <= 0:
            raise self.bad(where, "scale", "must be > 0")
        if self.image_size is not None and self.image_size < 8:
            raise self.bad(where, "image_size", "must be >= 8 px or null")
        if self.patch_size < 0 or (self.image_size and self.patch_size > self.image_size):
            raise self.bad(where, "patch_size",
                           f"must be 0 or up to image_size, got {self.patch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise self.bad(where, "val_fraction", "must be in [0, 1)")
        for key in ("batch_size", "max_steps", "lr_decay_every", "val_every",
                    "checkpoint_every"):
            if getattr(self, key) < 1:
                raise self.bad(where, key, "must be >= 1")
        if self.lr_schedule not in SCHEDULES:
            raise self.bad(where, "lr_schedule", f"must be 'step', 'cosine' or 'constant', got "
                           f"{self.lr_schedule!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise self.bad(where, "mixed_precision", "must be 'no', 'bf16' or 'fp16'")
        return self

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based) of the run."""
        return learning_rate(self.lr_schedule, self.lr, step, self.max_steps,
                             final_ratio=self.lr_final_ratio, gamma=self.lr_gamma,
                             decay_every=self.lr_decay_every)

    def normalisation(self) -> dict[str, Any]:
        """The HU normalisation as recorded in weights."""
        return hu_window(self.hu_min, self.hu_max, 0.0, self.scale)

    def hu_to_model(self, hu: torch.Tensor) -> torch.Tensor:
        """HU -> model units: clip to [hu_min, hu_max], map to [0, scale] (any shape)."""
        return (hu.clamp(self.hu_min, self.hu_max) - self.hu_min) * (
            self.scale / (self.hu_max - self.hu_min))

    def model_to_hu(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> HU (no clipping: the caller decides)."""
        return x * ((self.hu_max - self.hu_min) / self.scale) + self.hu_min


# ----------------------------------------------------------------------------- LI input


def li_image(ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
             pixel_spacing_mm: torch.Tensor | float) -> torch.Tensor:
    """The shipped LI image (:func:`baselines.li.li`, metal pixels re-inserted):
    (B, 1, H, W) float32 HU; slices without metal come back unchanged."""
    from baselines.li import li

    return li(ordinary_hu.float(), metal_mask.bool(), pixel_spacing_mm)


# ----------------------------------------------------------------------------- models


class DeepModel(PretrainedModel):
    """Base class of the deep baselines' networks.

    Subclasses implement :meth:`restore_units` (model units in and out) and :meth:`losses`,
    and set ``family`` and ``config_class``. ``training_info`` records the target, the
    column it was read from, the data and the steps.
    """

    uses_li: ClassVar[bool] = True
    legacy_formats = ("marbench-deep/1",)

    def restore_units(self, x_ma: torch.Tensor, li: torch.Tensor, metal: torch.Tensor
                      ) -> torch.Tensor:
        """(B, 1, H, W) model units and bool metal mask -> (B, 1, H, W) restored image."""
        raise NotImplementedError

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training losses of a batch of model-unit tensors (``loss`` is optimised)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.losses(batch)

    def normalisation(self) -> dict[str, Any]:
        return self.config.normalisation()

    def to_units(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        return {"ordinary": c.hu_to_model(batch["ordinary"]),
                "target": c.hu_to_model(batch["target"]),
                "li": c.hu_to_model(batch["li"]), "mask": batch["mask"]}

    @torch.no_grad()
    def restore(self, ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
                li_hu: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) HU -> (B, 1, H, W) float32 HU."""
        c = self.config
        out = self.restore_units(c.hu_to_model(ordinary_hu.float()),
                                 c.hu_to_model(li_hu.float()), metal_mask.bool())
        return c.model_to_hu(out.float()).clamp(c.hu_min, c.hu_max)

    @staticmethod
    def legacy_range(scale: float) -> list[float]:
        """The network's input range of a ``marbench-deep/1`` normalisation record, which
        gave only the ``scale`` of [0, scale]."""
        return [0.0, scale]

    @classmethod
    def upgrade_legacy(cls, meta: dict[str, Any], where: str) -> dict[str, Any]:
        """``marbench-deep/1``: ``training`` also held the parameter count and the
        normalisation (with ``scale`` for the range), and named the manifest hash
        ``data_manifest_sha256``."""
        training = dict(meta.get("training") or {})
        old = dict(training.pop("normalisation", None) or {})
        norm = {k: old[k] for k in ("kind", "hu_min", "hu_max") if k in old}
        if "scale" in old:
            norm["range"] = cls.legacy_range(float(old["scale"]))
        record = {"parameters": training.pop("parameters", None), "normalisation": norm}
        if "data_manifest_sha256" in training:
            training["dataset_manifest_sha256"] = training.pop("data_manifest_sha256")
        return {"family": meta.get("family"), "config": meta.get("config"),
                "training": training, "model": record}


# ----------------------------------------------------------------------------- the method


class DeepMARMethod(WeightsMethod):
    """Base of the deep baselines as benchmark methods (needs trained weights).

    Options (constructor keywords, stored under the same names):
        weights: weights folder (``OUT/model`` of ``marbench train NAME``) or Hub model repo
            id; default ``$MARBENCH_<NAME>_WEIGHTS``, then ``<method cache>/weights``.
        revision: Hub branch, tag or commit of a repo id.
        device: ``"cpu"``, ``"cuda"``... (default: the runner's device).
        batch_size: slices per forward pass.
        reinsert_metal: copy the input's metal pixels into the output (default: the
            family's default, see the subclass).
        target: ``"gsi"`` or ``"clean"``: checked against the weights (error if different);
            after ``prepare`` it holds the weights' target, which results files record.
    """

    version = "1"
    default_reinsert_metal: ClassVar[bool] = False
    #: The model class whose ``from_pretrained`` reads this method's weights.
    model_class: ClassVar[type[DeepModel]] = DeepModel

    def __init__(self, weights: str | None = None, device: str | None = None,
                 batch_size: int = 8, reinsert_metal: bool | None = None,
                 target: str | None = None, revision: str | None = None) -> None:
        self.weights = weights
        self.revision = revision
        self.device = device
        self.batch_size = int(batch_size)
        self.reinsert_metal = (self.default_reinsert_metal if reinsert_metal is None
                               else parse_flag(reinsert_metal, "reinsert_metal", self.name))
        if target is not None and target not in TARGETS:
            raise OptionError(f"{self.name}: option target must be 'gsi' or 'clean', got "
                              f"{target!r}")
        self.target = target
        self.model: DeepModel | None = None
        self.weights_sha256 = None

    def load_model(self, source: str | Path, revision: str | None) -> DeepModel:
        return self.model_class.from_pretrained(source, revision)

    def prepare(self, ctx: PrepareContext) -> None:
        model = self.load_weights(ctx)
        got = model.target
        if self.target is not None and got != self.target:
            raise IncompatibleWeightsError(
                f"{self.weights}: the weights were trained with target {got!r}, option target "
                f"is {self.target!r}; give weights trained with --target {self.target}")
        self.target = got
        self.device = self.model_device(ctx)
        self.model = model.to(self.device).eval()

    def reduce(self, batch: MARInput) -> MAROutput:
        if self.model is None:
            raise self.untrained("prepare() was not called")
        size = self.model.image_size
        h, w = batch.ordinary.shape[-2:]
        if size is not None and (h != size or w != size):
            raise ImageSizeMismatchError(
                f"{self.name}: the weights ({self.weights}) were trained on {size} px slices; "
                f"{batch.describe_slice(0)} is {h} x {w} px. Train weights on data of this "
                f"size (image_size is taken from the training data).")
        outs = []
        for i in range(0, batch.batch_size, self.batch_size):
            sl = slice(i, i + self.batch_size)
            o, m = batch.ordinary[sl], batch.metal_mask[sl]
            li = (li_image(o, m, batch.pixel_spacing_mm[sl]) if self.model.uses_li
                  else o)
            dev = torch.device(self.device)
            out = self.model.restore(o.to(dev), m.to(dev), li.to(dev)).float().cpu()
            if self.reinsert_metal:
                out = torch.where(m, o, out)
            outs.append(out)
        return MAROutput(image=torch.cat(outs).to(batch.ordinary.device))


__all__ = ["ConfigError", "DeepMARMethod", "DeepModel", "TARGETS", "TrainConfig", "li_image"]
