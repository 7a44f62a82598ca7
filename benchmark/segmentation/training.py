"""Training of the downstream segmenter (:mod:`benchmark.segmentation`) with the training
kit (:mod:`benchmark.learn`): ``marbench train segmenter --config seg-cpu --data D --out O``.

The recipe (every setting is a field of :class:`~benchmark.segmentation.SegConfig`):

- input: the chosen image column (``gsi`` or ``ordinary``), HU clipped to the config's window
  and scaled to [0, 1], resampled to ``image_size`` (area when shrinking); labels by nearest
  neighbour;
- loss: cross-entropy + multiclass soft Dice (``smp.losses.DiceLoss``);
- augmentation: small random rotations, scalings and shifts, never left / right flips (they
  would swap the paired pelvis / femur classes); each step's draws are a pure function of
  (seed, step), so a resumed run draws what the uninterrupted one did;
- AdamW with a cosine decay from ``lr`` to ``lr_final_ratio * lr``, epochs in an order that
  depends on (seed, epoch) only;
- validation on whole held-out training patients (the kit's patient split) every
  ``val_every`` epochs; the best validation mIoU's weights are kept.

Run folder ``OUT`` (:class:`benchmark.learn.run.Run`)::

    OUT/config.json                  the resolved config of the run
    OUT/checkpoints/last/            weights, optimiser, step, best score (for --resume)
    OUT/checkpoints/best.safetensors best validation weights so far
    OUT/log.jsonl                    one line per validation
    OUT/model/                       the trained segmenter (save_pretrained)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..learn.checkpoint import load_weights, save_weights
from ..learn.loop import Report, Trainer, epoch_batches, epoch_validated
from ..learn.rng import EpochSampler, seed_everything, step_generator
from ..learn.run import Run
from ..learn.schedules import learning_rate
from ..learn.split import patient_split
from .analysis import evaluate_rows
from .model import (
    LabelledSplit,
    SegConfig,
    SegmentationDataError,
    Segmenter,
    hu_to_input,
    open_labelled,
    resize_image,
    resize_labels,
)


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
            ``ordinary``) raise :class:`~benchmark.segmentation.SegConfigError` (a
            ``ValueError``).

    Returns:
        ``out / "model"`` (load with :func:`~benchmark.segmentation.load_segmenter` or
        ``Segmenter.from_pretrained``).
    """
    cfg, cfg_name = SegConfig.load_named(config, overrides)
    out = Path(out)
    run = Run(out, cfg, resume=resume, tag="seg", mixed_precision=cfg.mixed_precision)
    acc = run.accelerator
    split = open_labelled(data, "train")
    train_pos, val_pos = patient_split(split.patient_ids, cfg.val_fraction,
                                       where=f"{split.where} (labelled rows)")
    n_train_p = len({split.patient_ids[i] for i in train_pos})
    n_val_p = len({split.patient_ids[i] for i in val_pos})

    seed_everything(cfg.seed)
    meta = {"config_name": cfg_name, "dataset_manifest_sha256": split.manifest_sha256,
            "train_content_sha256": split.content_sha256, "dataset_source": str(data),
            "train_patients": n_train_p, "val_patients": n_val_p,
            "train_slices": len(train_pos), "val_slices": len(val_pos)}
    model = Segmenter(cfg, meta).to(run.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = _dice_ce(cfg)
    ds = SegSlices(split, train_pos, cfg)
    sampler = EpochSampler(len(ds), cfg.seed)
    loader = acc.prepare(torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        pin_memory=run.device.type == "cuda"))
    spe = len(loader)
    total = cfg.epochs * spe if cfg.max_steps is None else min(cfg.epochs * spe,
                                                                 cfg.max_steps)
    ckpt = out / "checkpoints"
    best_path = ckpt / "best.safetensors"
    trainer = Trainer(run, model, opt, total_steps=total,
                      lr_at=lambda s: learning_rate("cosine", cfg.lr, s, total,
                                                    final_ratio=cfg.lr_final_ratio),
                      checkpoint_dir=ckpt, checkpoint_every=cfg.checkpoint_every,
                      state={"best_scores": None})
    run.say(f"{cfg_name}: input {cfg.input}, {len(train_pos)} training slices "
            f"({n_train_p} patients), {len(val_pos)} validation slices ({n_val_p} patients), "
            f"{total} steps on {run.device}")

    def augmented() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in epoch_batches(trainer, loader, sampler, spe):
            x, y = batch["image"], batch["labels"]
            if cfg.augment:
                x, y = random_affine(x, y, cfg, step_generator("seg", cfg.seed, trainer.step))
            yield x, y

    def forward(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x, y = batch
        return loss_fn(trainer.module(x), y)

    def evaluate() -> tuple[float | None, dict[str, Any]]:
        if not run.is_main:
            return None, {}
        scores = evaluate_rows(model, split, val_pos, cfg.input).summary()
        return scores["miou"], scores

    def keep_best(metric: float, scores: dict[str, Any]) -> None:
        trainer.state["best_scores"] = scores
        save_weights(best_path, model)

    def report(r: Report) -> dict[str, Any]:
        epoch = math.ceil(r.step / spe)
        run.say(f"epoch {epoch}: step {r.step}/{total} loss {r.train_loss:.4f} val mIoU "
                f"{r.metric:.4f} ({r.seconds:.0f} s)")
        return {"epoch": epoch, "step": r.step, "train_loss": r.train_loss,
                **{f"val_{k}": v for k, v in r.details.items()},
                "best_miou": trainer.state["best_metric"],
                "best_step": trainer.state["best_step"], "seconds": r.seconds}

    trainer.fit(augmented(), forward,
                validates=lambda s: epoch_validated(s, spe, total, cfg.val_every),
                validate=evaluate, on_best=keep_best, report=report, progress="seg")
    if best_path.is_file():
        load_weights(best_path, model)
    st = trainer.state
    model.meta.update({"validation": st["best_scores"], "trained_steps": st["best_step"],
                       "total_steps": total, "train_seconds": round(st["seconds"], 1),
                       "device": str(run.device)})
    if run.is_main:
        model.save_pretrained(out / "model")
    run.end()
    return out / "model"
