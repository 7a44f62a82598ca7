"""Training of the DuDoDp prior: ``marbench train dudodp --config dudodp-cpu --data D --out O``.

Data: GSI slices of the ``pairs`` train split (train-split patients only) and the ordinary
slices of the ``clean`` config's train split (patients without implant), whole slices with
random flips; each draw takes a clean slice with probability ``clean_fraction`` (GSI only
when the dataset has no clean config). No paired information is used.

Loop (the training kit's, :mod:`benchmark.learn`): x0-prediction MSE at uniform timesteps,
Adam, an EMA of the weights (:mod:`benchmark.learn.ema`), ``accelerate`` for devices, mixed
precision and several GPUs (``accelerate launch -m benchmark.learn dudodp --config
dudodp-paper ...``). Each step's random draws are a pure function of (seed, step, process),
so ``--resume`` continues exactly.

Output::

    OUT/config.json          the resolved config
    OUT/model/               EMA weights (save_pretrained), written at every checkpoint
    OUT/checkpoints/last/    model, EMA, optimiser, step (resume)
    OUT/log.jsonl            loss and speed per ``val_every`` steps
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.deep_train import finish_record
from baselines.dudodp.config import DuDoDpConfig
from baselines.dudodp.prior import DiffusionPrior
from benchmark.learn.data import load_optional_split, to_int16
from benchmark.learn.ema import ema
from benchmark.learn.errors import TrainError
from benchmark.learn.loop import Report, Trainer
from benchmark.learn.rng import seed_everything, step_generator
from benchmark.learn.run import Run


def load_training_images(data: str | Path, log=print) -> tuple[np.ndarray, np.ndarray,
                                                                dict[str, Any]]:
    """``(gsi, clean, info)``: (N, H, W) int16 HU of the train split's GSI slices and of the
    clean config's train split (possibly empty), and a record of what was read."""
    from benchmark.data import open_split

    split = open_split(data, "train")
    rows = list(range(len(split)))
    gsi = [to_int16(split.batch(rows[i:i + 32]).gsi_hu[:, 0]) for i in range(0, len(rows), 32)]
    patients = sorted({split.slice_id(r)[0] for r in rows})
    clean = np.zeros((0, *gsi[0].shape[1:]), np.int16)
    clean_patients: list[str] = []
    ds = load_optional_split(data, "clean", "train")
    if ds is None:
        log("no 'clean' config in the dataset: training on GSI slices only")
    else:
        clean = to_int16(ds.with_format("numpy", columns=["ordinary"])[:]["ordinary"])
        clean_patients = sorted({str(p) for p in ds["patient_id"]})
    info = {"data_source": split.source.source, "data_revision": split.source.revision,
            "dataset_manifest_sha256": split.source.manifest_sha256, "split": "train",
            "gsi_slices": int(sum(len(g) for g in gsi)), "train_patients": len(patients),
            "clean_slices": int(len(clean)), "clean_patients": len(clean_patients)}
    return np.concatenate(gsi), clean, info


def draw_batch(gsi: np.ndarray, clean: np.ndarray, config: DuDoDpConfig,
               g: torch.Generator) -> dict[str, torch.Tensor]:
    """One training batch from generator ``g``: ``x0`` (B, 1, S, S) model units, ``t`` (B,)
    long, ``noise`` (B, 1, S, S)."""
    b = config.batch_size
    use_clean = (torch.rand(b, generator=g) < config.clean_fraction).tolist()
    pick = torch.rand(b, generator=g).tolist()
    flips = torch.randint(0, 2, (b, 2), generator=g).tolist()
    imgs = []
    for c, u, (fu, fl) in zip(use_clean, pick, flips, strict=True):
        src = clean if (c and len(clean)) else gsi
        a = np.asarray(src[min(int(u * len(src)), len(src) - 1)], np.float32)
        if config.flips and fu:
            a = a[::-1]
        if config.flips and fl:
            a = a[:, ::-1]
        imgs.append(np.ascontiguousarray(a))
    x0 = config.hu_to_pm1(torch.from_numpy(np.stack(imgs)[:, None]))
    t = torch.randint(0, config.train_timesteps, (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return {"x0": x0, "t": t, "noise": noise}


def train(config: str | Path | dict[str, Any] | DuDoDpConfig, data: str | Path,
          out: str | Path, *, resume: bool = False,
          overrides: dict[str, Any] | None = None) -> Path:
    """Train the DuDoDp prior from ``config`` on dataset ``data`` into ``out``; returns
    ``OUT/model`` (the EMA weights). ``overrides``: config keys (unknown keys are errors)."""
    cfg, name = DuDoDpConfig.load_named(config, overrides)
    out = Path(out)
    run = Run(out, cfg, resume=resume, tag="dudodp", mixed_precision=cfg.mixed_precision,
              per_invocation=("time_limit_s", "max_steps"))
    gsi, clean, info = load_training_images(data, log=run.say)
    size = int(gsi.shape[-1])
    if gsi.shape[-2] != size:
        raise TrainError(f"{data}: slices are {gsi.shape[-2:]} px; the prior needs square "
                         "slices")
    if cfg.image_size is not None and cfg.image_size != size:
        raise TrainError(f"{data}: slices are {size} px but the config asks image_size "
                         f"{cfg.image_size}; pass --image_size {size}")
    if len(clean) and clean.shape[-2:] != gsi.shape[-2:]:
        raise TrainError(f"{data}: clean slices are {clean.shape[-2:]} px, pairs {size} px")
    run.say(f"{info['gsi_slices']} GSI slices of {info['train_patients']} train-split "
            f"patients + {info['clean_slices']} clean slices ({size} px); "
            f"{run.accelerator.num_processes} process(es) on {run.device}")

    seed_everything(cfg.seed)
    net = DiffusionPrior(cfg).to(run.device)
    averaged = ema(net, cfg.ema_decay, cfg.ema_warmup)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                           weight_decay=cfg.weight_decay)
    trainer = Trainer(run, net, opt, total_steps=cfg.max_steps, lr_at=cfg.lr_at,
                      checkpoint_dir=out / "checkpoints", checkpoint_every=cfg.checkpoint_every,
                      grad_clip=cfg.grad_clip, ema=averaged, time_limit_s=cfg.time_limit_s)
    record = {**info, "config_name": name, "image_size": size, "target": "gsi+clean",
              "prior": "x0 diffusion"}

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            g = step_generator("deep", cfg.seed, trainer.step, run.process_index)
            yield {k: v.to(run.device) for k, v in draw_batch(gsi, clean, cfg, g).items()}

    def export() -> None:  # the EMA weights are the model
        model = averaged.ema_model
        model.training_info = {**record, "steps": trainer.step,
                               "train_seconds": trainer.state["seconds"]}
        model.save_pretrained(out / "model")

    def report(r: Report) -> dict[str, Any]:
        run.say(f"step {r.step}/{cfg.max_steps} loss {r.train_loss:.4g} "
                f"{r.steps_per_s:.2f} steps/s {r.seconds:.0f} s")
        return {"step": r.step, "lr": r.lr, "train_loss": r.train_loss,
                "steps_per_s": r.steps_per_s, "seconds": r.seconds}

    trainer.module.train()
    trainer.fit(batches(), lambda batch, step: trainer.module(batch),
                validates=lambda s: s % cfg.val_every == 0, report=report,
                on_checkpoint=export, progress="dudodp")
    if run.is_main:
        finish_record(out / "model", steps_done=trainer.step,
                      finished=trainer.step >= cfg.max_steps)
    run.end()
    return out / "model"


train.configs = ["dudodp-tiny", "dudodp-cpu", "dudodp-paper"]  # type: ignore[attr-defined]
