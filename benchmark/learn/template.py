"""A template learned method and its trainer, written with the training kit: the smallest
complete example to copy when adding a learned method (see docs/architecture.md, "Adding a
learned method").

It learns a residual CNN from the ordinary image to the GSI image on random patches, keeps
the weights of the best validation PSNR, and runs in the benchmark as a method. Every part a
learned method needs is here, in the order a reader meets it:

1. :class:`TemplateConfig`: every setting with its default, loaded from YAML / dicts with
   ``base:`` chains and unknown keys refused (:class:`~benchmark.learn.config.ConfigBase`);
2. :class:`TemplateModel`: the network, built from the config, with ``save_pretrained`` /
   ``from_pretrained`` (a folder or a Hub repo id) and a model card
   (:class:`~benchmark.learn.weights.PretrainedModel`);
3. :func:`train`: the ``marbench.trainers`` contract (run folder, seed, patient split,
   checkpoints that resume exactly, ``accelerate`` for devices:
   :class:`~benchmark.learn.run.Run`, :class:`~benchmark.learn.loop.Trainer`);
4. :class:`TemplateMethod`: the benchmark method that loads the weights (option,
   ``$MARBENCH_TEMPLATE_WEIGHTS``, method cache: :class:`~benchmark.learn.method.WeightsMethod`).

It is not registered (the project's tests import it); a package registers its own copy::

    [project.entry-points."marbench.methods"]
    mine = "my_pkg.mine:TemplateMethod"
    [project.entry-points."marbench.trainers"]
    mine = "my_pkg.mine:train"
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from artifactgsi.schema import HU_MAX, HU_MIN, hu_to_unit01
from benchmark.method import MARInput, MAROutput, PrepareContext

from .config import ConfigBase
from .loop import Report, Trainer
from .method import WeightsMethod
from .rng import seed_everything, step_generator
from .run import Run
from .schedules import SCHEDULES, learning_rate
from .split import evenly_spaced, patient_split
from .weights import PretrainedModel, hu_window


@dataclass
class TemplateConfig(ConfigBase):
    """Every setting of the template. A family with shipped YAML files sets ``config_dir``."""

    default_name: ClassVar[str] = "template-defaults"

    channels: int = 16                # width of the residual CNN
    blocks: int = 2                   # 3x3 conv + ReLU pairs between the input and output convs
    patch_size: int = 32              # px, random square training patches
    batch_size: int = 4
    lr: float = 1e-3                  # Adam
    lr_schedule: str = "cosine"       # "constant", "cosine" or "step" (benchmark.learn.schedules)
    max_steps: int = 20
    val_every: int = 10               # steps between validations (and the last step)
    val_fraction: float = 0.2         # share of training patients held out for validation
    val_max_slices: int | None = 16
    checkpoint_every: int = 10        # steps between resumable checkpoints
    time_limit_s: float | None = None  # stop (resumably) after this many seconds
    mixed_precision: str = "no"       # on CUDA: "no", "bf16", "fp16"
    seed: int = 0

    def validate(self, where: str = "config") -> TemplateConfig:
        for key in ("channels", "blocks", "patch_size", "batch_size", "max_steps", "val_every",
                    "checkpoint_every"):
            if getattr(self, key) < 1:
                raise self.bad(where, key, "must be >= 1")
        if self.lr_schedule not in SCHEDULES:
            raise self.bad(where, "lr_schedule", f"must be one of {', '.join(SCHEDULES)}")
        return self


class TemplateModel(PretrainedModel):
    """Residual CNN in [0, 1] units: (B, 1, H, W) HU in, HU out (any size)."""

    family = "template"
    config_class = TemplateConfig

    def __init__(self, config: TemplateConfig) -> None:
        super().__init__(config)
        c = config.channels
        layers: list[nn.Module] = [nn.Conv2d(1, c, 3, padding=1), nn.ReLU()]
        for _ in range(config.blocks):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(c, 1, 3, padding=1))

    def normalisation(self) -> dict[str, Any]:
        return hu_window(HU_MIN, HU_MAX, 0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) units in [0, 1] -> the same plus the learned residual."""
        return x + self.net(x)

    @torch.no_grad()
    def restore(self, ordinary_hu: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) HU -> (B, 1, H, W) float32 HU inside the dataset window."""
        out = self(hu_to_unit01(ordinary_hu.float()))
        return out.clamp(0.0, 1.0) * (HU_MAX - HU_MIN) + HU_MIN


def train(config: str | Path | dict[str, Any] | TemplateConfig, data: str | Path,
          out: str | Path, *, resume: bool = False,
          overrides: dict[str, Any] | None = None) -> Path:
    """Train on the ``pairs`` train split of ``data`` into the run folder ``out``; returns
    ``out/model`` (the best validation weights)."""
    from benchmark.data import open_split
    from benchmark.metrics.image import psnr

    cfg, name = TemplateConfig.load_named(config, overrides)
    run = Run(out, cfg, resume=resume, tag="template", mixed_precision=cfg.mixed_precision,
              per_invocation=("time_limit_s",))
    split = open_split(data, "train")
    ids = [split.slice_id(r)[0] for r in split.order]
    train_pos, val_pos = patient_split(ids, cfg.val_fraction, where=split.where)

    def images(positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        b = split.batch([split.order[i] for i in positions])
        return hu_to_unit01(b.input.ordinary), hu_to_unit01(b.gsi_hu)  # (N, 1, H, W) each

    x_train, y_train = images(train_pos)
    x_val, y_val = images(evenly_spaced(val_pos, cfg.val_max_slices))
    size = int(x_train.shape[-1])
    seed_everything(cfg.seed)
    model = TemplateModel(cfg).to(run.device)
    model.training_info = {"config_name": name, "target": "gsi", "image_size": size,
                           "dataset_manifest_sha256": split.source.manifest_sha256}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    trainer = Trainer(run, model, opt, total_steps=cfg.max_steps,
                      lr_at=lambda s: learning_rate(cfg.lr_schedule, cfg.lr, s, cfg.max_steps),
                      checkpoint_dir=run.out / "checkpoints",
                      checkpoint_every=cfg.checkpoint_every, time_limit_s=cfg.time_limit_s)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p, n = min(cfg.patch_size, size), x_train.shape[0]
        while True:  # each step's draws depend on (seed, step, process) only
            g = step_generator("template", cfg.seed, trainer.step, run.process_index)
            idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
            ys, xs = torch.randint(0, size - p + 1, (2, cfg.batch_size), generator=g)
            crop = [(i, slice(y, y + p), slice(x, x + p))
                    for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist(), strict=True)]
            yield (torch.stack([x_train[i, :, a, b] for i, a, b in crop]).to(run.device),
                   torch.stack([y_train[i, :, a, b] for i, a, b in crop]).to(run.device))

    def forward(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": F.l1_loss(trainer.module(x), y)}

    def evaluate() -> tuple[float | None, dict[str, Any]]:
        model.eval()
        with torch.no_grad():
            pred = model(x_val.to(run.device)).clamp(0.0, 1.0).cpu()
        model.train()
        value = float(np.mean(psnr(pred, y_val, data_range=1.0).numpy()))
        return value, {"psnr": value}

    def report(r: Report) -> dict[str, Any]:
        run.say(f"step {r.step}/{cfg.max_steps} loss {r.train_loss:.4g} "
                f"val PSNR {r.metric:.2f} dB")
        return {"step": r.step, "lr": r.lr, "train_loss": r.train_loss, "val_psnr": r.metric,
                "best_step": trainer.state["best_step"], "seconds": r.seconds}

    def keep_best(metric: float, details: dict[str, Any]) -> None:
        if run.is_main:
            model.training_info.update(best_step=trainer.step, val_psnr=metric)
            model.save_pretrained(run.out / "model")

    trainer.module.train()
    trainer.fit(batches(), forward, validates=lambda s: s % cfg.val_every == 0,
                validate=evaluate, on_best=keep_best, report=report)
    run.end()
    return run.out / "model"


train.configs = []  # type: ignore[attr-defined]  # a package lists its shipped YAML names


class TemplateMethod(WeightsMethod):
    """The template as a benchmark method; needs weights (``weights`` option, a folder or Hub
    repo id with ``revision``; else ``$MARBENCH_TEMPLATE_WEIGHTS``, else the method cache)."""

    name = "template"
    version = "1"
    train_config = "CONFIG.yaml"  # the "train it first" hint (a package names its own config)

    def __init__(self, weights: str | None = None, revision: str | None = None,
                 device: str | None = None) -> None:
        self.weights = weights
        self.revision = revision
        self.device = device
        self.model: TemplateModel | None = None
        self.weights_sha256: str | None = None

    def load_model(self, source: str | Path, revision: str | None) -> TemplateModel:
        return TemplateModel.from_pretrained(source, revision)

    def prepare(self, ctx: PrepareContext) -> None:
        model = self.load_weights(ctx)
        self.device = self.model_device(ctx)
        self.model = model.to(self.device).eval()

    def reduce(self, batch: MARInput) -> MAROutput:
        if self.model is None:
            raise self.untrained("prepare() was not called")
        out = self.model.restore(batch.ordinary.to(self.device))
        return MAROutput(image=out.float().to(batch.ordinary.device))
