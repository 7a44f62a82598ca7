"""Train LGA in three stages with one accelerate loop: VAE -> invariance encoders -> alignment.

Run it on one CPU, one GPU, or many GPUs / nodes without changing code (the training kit's
launch path, :mod:`benchmark.learn`)::

    marbench train lga --config lga-cpu --data DATA --out runs/lga-cpu
    accelerate launch --multi_gpu --num_processes 4 -m benchmark.learn lga \
        --config lga-paper --data artifactgsi/ArtifactGSI --out runs/lga-paper
    accelerate launch --multi_gpu --num_processes 2 -m benchmark.learn lga ...   # 2 CPU
        processes (no GPU: torchrun + gloo; accelerate's --cpu flag runs one process)
    ... --resume                       # continue from the last checkpoint

Stages (paper Sec. 3, Eq. 12-13):

1. ``vae``: E, D_n, D_g. Ordinary volumes V_n (centre slice augmented) -> D_n reconstructs the
   unaltered ordinary centre slice; V_g (GSI, or clean no-implant with probability
   clean_fraction / (gsi_fraction + clean_fraction)) -> D_g reconstructs its centre. Loss:
   L1 (or MSE) + kl_weight * KL, the KL summed over the latent and divided by the image
   pixel count (the weighting of LDM's autoencoders with a per-pixel mean).
   Validation: mean of PSNR(D_n(E(V_n)), ordinary) and PSNR(D_g(E(V_g)), GSI).
2. ``invariance`` (skipped when beta = 0): Ec_n, Ec_g on frozen latents, symmetric InfoNCE
   (see :mod:`baselines.lga.invariance`). Validation: top-1 retrieval accuracy n -> g.
3. ``align``: F with E, D_g, Ec_n, Ec_g frozen;
   L = MSE(D_g(F(z_n)), GSI) + alpha MSE(F(z_n), z_g) + beta ||Ec_n(F(z_n)) - Ec_g(z_g)||^2,
   z = posterior means. Validation: PSNR(D_g(F(E(V_n))), GSI).

PSNR follows the benchmark (HU clipped to [-1024, 3071], scaled to [0, 1], data range 1)
but at the model's ``image_size`` and on held-out training patients.

Output folder::

    OUT/config.json                       the resolved config of the run
    OUT/model/                            the weights folder (after each stage)
    OUT/checkpoints/<stage>/last/         the stage's model, optimiser and loop state
    OUT/checkpoints/<stage>/best.safetensors   best validation weights of the stage
    OUT/log.jsonl                         one line per validation (every val_every epochs)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from baselines.lga.config import STAGES, LGAConfig
from baselines.lga.data import PairVolumes, VAEVolumes, open_clean
from baselines.lga.invariance import info_nce, invariance_distance, retrieval_accuracy
from baselines.lga.model import LGAModel
from baselines.lga.vae import augment_centre_slice
from benchmark.learn.checkpoint import load_weights, save_weights
from benchmark.learn.errors import TrainError
from benchmark.learn.loop import Report, Trainer, epoch_batches, epoch_validated
from benchmark.learn.rng import EpochSampler, seed_everything, step_generator
from benchmark.learn.run import Run
from benchmark.learn.split import evenly_spaced, patient_split
from benchmark.learn.weights import CONFIG_NAME
from benchmark.metrics.image import psnr

__all__ = ["AlignStage", "InvarianceStage", "TrainError", "VAEStage", "active_stages",
           "random_corners", "random_dihedral", "step_generator", "take_crops", "train",
           "train_lga"]


def active_stages(config: LGAConfig) -> list[str]:
    """Stages this config trains, in order (no invariance stage when beta = 0)."""
    return [s for s in STAGES if s != "invariance" or config.beta > 0]


def _freeze(*modules: nn.Module) -> None:
    for m in modules:
        m.requires_grad_(False)
        m.eval()


def _psnr_unit(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-slice PSNR (B,) of [-1, 1] images = benchmark PSNR on [0, 1] with range 1."""
    return psnr(pred.float().clamp(-1, 1), target.float().clamp(-1, 1), data_range=2.0)


def random_corners(batch: int, full: int, crop: int, multiple: int,
                   generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
    """Top-left corners (rows, cols) of ``batch`` random ``crop``-px squares inside a
    ``full``-px square, on a grid of ``multiple`` px."""
    n = (full - crop) // multiple + 1
    corners = torch.randint(0, n, (2, batch), generator=generator) * multiple
    return corners[0].tolist(), corners[1].tolist()


def take_crops(x: torch.Tensor, ys: list[int], xs: list[int], crop: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, crop, crop): sample i cut at (ys[i], xs[i])."""
    return torch.stack([x[i, :, y:y + crop, c:c + crop]
                        for i, (y, c) in enumerate(zip(ys, xs, strict=True))])


def random_dihedral(batch: dict[str, torch.Tensor], keys: tuple[str, ...],
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A copy of ``batch`` in which each sample's (B, C, H, W) images under ``keys`` get the
    same random one of the 8 symmetries of the square (0-3 quarter turns, then an optional
    left-right flip); other entries are kept. H must equal W."""
    b = batch[keys[0]].shape[0]
    turns = torch.randint(0, 4, (b,), generator=generator).tolist()
    flips = torch.randint(0, 2, (b,), generator=generator).tolist()
    out = dict(batch)
    for key in keys:
        x = batch[key]
        rows = []
        for i in range(b):
            r = torch.rot90(x[i], turns[i], dims=(-2, -1))
            rows.append(r.flip(-1) if flips[i] else r)
        out[key] = torch.stack(rows)
    return out


# ----------------------------------------------------------------------------- stage modules
# Each stage is one nn.Module whose forward returns the losses, so that DDP (which syncs
# gradients in the wrapped module's forward/backward) sees the whole computation. Frozen
# parts are kept out of the registered children (they are neither trained nor checkpointed).


class VAEStage(nn.Module):
    def __init__(self, model: LGAModel) -> None:
        super().__init__()
        self.vae = model.vae
        self.cfg = model.config
        self.rng: torch.Generator | None = None  # set per step (see step_generator)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c, k = self.cfg, self.cfg.neighbour_slices
        rec = F.l1_loss if c.recon_loss == "l1" else F.mse_loss
        if "vae" in c.dihedral:
            batch = random_dihedral(batch, ("ordinary", "g"), self.rng)
        losses = {}
        kl = 0.0
        for name, x, decode in (("rec_n", batch["ordinary"], self.vae.decode_n),
                                ("rec_g", batch["g"], self.vae.decode_g)):
            if 0 < c.vae_crop < x.shape[-1]:
                x = take_crops(x, *random_corners(x.shape[0], x.shape[-1], c.vae_crop, 1,
                                                  self.rng), c.vae_crop)
            post = self.vae.encode(augment_centre_slice(x, c, self.rng))
            out = decode(post.sample(generator=self.rng))
            losses[name] = rec(out.float(), x[:, k:k + 1].float())
            kl = kl + post.kl().float().mean() / (x.shape[-1] * x.shape[-2])
        losses["kl"] = kl / 2
        losses["loss"] = losses["rec_n"] + losses["rec_g"] + c.kl_weight * losses["kl"]
        return losses


class InvarianceStage(nn.Module):
    def __init__(self, model: LGAModel) -> None:
        super().__init__()
        self.ec_n, self.ec_g = model.ec_n, model.ec_g
        self.__dict__["vae"] = model.vae  # frozen, unregistered
        self.cfg = model.config

    def latents(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return (self.vae.encode(batch["ordinary"]).mode(),
                    self.vae.encode(batch["gsi"]).mode())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z_n, z_g = self.latents(batch)
        loss = info_nce(self.ec_n(z_n), self.ec_g(z_g), self.cfg.inv_temperature,
                        batch["patient"], batch["position"], self.cfg.neighbour_slices)
        return {"loss": loss}


class AlignStage(nn.Module):
    def __init__(self, model: LGAModel) -> None:
        super().__init__()
        self.align = model.align
        self.__dict__["model"] = model  # frozen E, D_g, Ec_n, Ec_g, unregistered
        self.cfg = model.config
        self.rng: torch.Generator | None = None  # set per step (see step_generator)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c, k, m = self.cfg, self.cfg.neighbour_slices, self.model
        if "align" in c.dihedral:
            batch = random_dihedral(batch, ("ordinary", "gsi", "mask"), self.rng)
        with torch.no_grad():
            z_n = m.vae.encode(batch["ordinary"]).mode()
            z_g = m.vae.encode(batch["gsi"]).mode()
        target, mask = batch["gsi"][:, k:k + 1], batch["mask"]
        if 0 < c.align_crop < target.shape[-1]:
            # The same window of the latents (side align_crop / f) and of the images.
            f, lc = c.downsample_factor_latent, c.align_crop // c.downsample_factor_latent
            ys, xs = random_corners(z_n.shape[0], z_n.shape[-1], lc, 1, self.rng)
            z_n, z_g = take_crops(z_n, ys, xs, lc), take_crops(z_g, ys, xs, lc)
            big = ([y * f for y in ys], [x * f for x in xs], c.align_crop)
            target, mask = take_crops(target, *big), take_crops(mask, *big)
        pred = self.align(z_n, mask, batch["implant"])
        losses = {"l_l": F.mse_loss(pred.float(), z_g.float())}
        image = m.vae.decode_g(pred)
        losses["l_i"] = F.mse_loss(image.float(), target.float())
        loss = losses["l_i"] + c.alpha * losses["l_l"]
        if c.beta > 0:
            losses["l_inv"] = invariance_distance(m.ec_n(pred), m.ec_g(z_g))
            loss = loss + c.beta * losses["l_inv"]
        losses["loss"] = loss
        return losses


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def _validate(stage: str, model: LGAModel, loader: Any, accelerator: Any) -> tuple[
        float, dict[str, float]]:
    """(metric, details) on the validation loader (sharded; gathered over processes)."""
    k = model.config.neighbour_slices
    modes = [(m, m.training) for m in model.modules()]  # frozen parts stay in eval mode
    model.eval()
    cols: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        with accelerator.autocast():
            if stage == "vae":
                vals = {
                    "psnr_n": _psnr_unit(model.vae.decode_n(
                        model.vae.encode(batch["ordinary"]).mode()), batch["ordinary"][:, k:k + 1]),
                    "psnr_g": _psnr_unit(model.vae.decode_g(
                        model.vae.encode(batch["gsi"]).mode()), batch["gsi"][:, k:k + 1])}
            elif stage == "invariance":
                vals = {"e_n": model.ec_n(model.vae.encode(batch["ordinary"]).mode()),
                        "e_g": model.ec_g(model.vae.encode(batch["gsi"]).mode())}
            else:
                z = model.align(model.vae.encode(batch["ordinary"]).mode(), batch["mask"],
                                batch["implant"])
                vals = {"psnr": _psnr_unit(model.vae.decode_g(z), batch["gsi"][:, k:k + 1]),
                        "psnr_input": _psnr_unit(batch["ordinary"][:, k:k + 1],
                                                 batch["gsi"][:, k:k + 1])}
        for name, v in vals.items():
            cols.setdefault(name, []).append(accelerator.gather_for_metrics(v.float()))
    for m, mode in modes:
        m.training = mode
    got = {n: torch.cat(v) for n, v in cols.items()}
    if stage == "vae":
        details = {"psnr_n": float(got["psnr_n"].mean()), "psnr_g": float(got["psnr_g"].mean())}
        return (details["psnr_n"] + details["psnr_g"]) / 2, details
    if stage == "invariance":
        acc = retrieval_accuracy(got["e_n"], got["e_g"])
        return acc, {"retrieval_top1": acc}
    details = {"psnr": float(got["psnr"].mean()), "psnr_input": float(got["psnr_input"].mean())}
    return details["psnr"], details


# ----------------------------------------------------------------------------- the loop


def _run_stage(stage: str, model: LGAModel, train_ds: Any, val_ds: Any, run: Run) -> int:
    """Train one stage to its end; return its final step. The best weights are loaded."""
    cfg, acc = model.config, run.accelerator
    module: nn.Module = {"vae": VAEStage, "invariance": InvarianceStage,
                         "align": AlignStage}[stage](model)
    if stage != "vae":
        _freeze(model.vae)
    if stage == "align":
        _freeze(model.ec_n, model.ec_g)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas,
                            weight_decay=cfg.weight_decay)
    sampler = EpochSampler(len(train_ds), cfg.seed)
    # Contrastive batches need >= 2 slices; other stages keep the last partial batch.
    # Pinned host memory lets the copies to the GPU overlap compute. Workers are not kept
    # between epochs: each epoch's workers must get the dataset after its set_epoch.
    feed = {"num_workers": cfg.num_workers, "pin_memory": acc.device.type == "cuda"}
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                        drop_last=stage == "invariance" and len(train_ds) > cfg.batch_size,
                        **feed)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, **feed)
    loader, val_loader = acc.prepare(loader, val_loader)
    spe = len(loader)
    if spe == 0:
        raise TrainError(f"stage {stage!r}: no training batch ({len(train_ds)} slices, batch "
                         f"size {cfg.batch_size} x {acc.num_processes} processes)")
    epochs = {"vae": cfg.vae_epochs, "invariance": cfg.invariance_epochs,
              "align": cfg.align_epochs}[stage]
    total = epochs * spe if cfg.max_steps is None else min(epochs * spe, cfg.max_steps)
    ckpt_dir = run.out / "checkpoints" / stage
    best_path = ckpt_dir / "best.safetensors"
    trainer = Trainer(run, module, opt, total_steps=total,
                      lr_at=lambda s: cfg.stage_lr(s, total), checkpoint_dir=ckpt_dir,
                      checkpoint_every=cfg.checkpoint_every, grad_clip=cfg.grad_clip,
                      params=params, state={"stage": stage, "epoch": 0,
                                            "config": cfg.to_dict()})

    def forward(batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        module.rng = step_generator(cfg.seed, stage, step, run.process_index)
        return trainer.module(batch)

    def keep_best(metric: float, details: dict[str, Any]) -> None:
        if run.is_main:
            save_weights(best_path, module)

    def report(r: Report) -> dict[str, Any]:
        epoch = (r.step - 1) // spe
        trainer.state["epoch"] = epoch + 1
        run.say(f"{stage} epoch {epoch}: step {r.step}/{total} val "
                f"{', '.join(f'{n}={v:.4f}' for n, v in r.details.items())}")
        return {"stage": stage, "epoch": epoch, "step": r.step, "train_loss": r.train_loss,
                "val_metric": r.metric, **r.details, "best_metric": trainer.state["best_metric"],
                "best_step": trainer.state["best_step"], "seconds": r.seconds}

    batches = epoch_batches(trainer, loader, sampler, spe,
                            on_epoch=getattr(train_ds, "set_epoch", None))
    trainer.fit(batches, forward,
                validates=lambda s: epoch_validated(s, spe, total, cfg.val_every),
                validate=lambda: _validate(stage, model, val_loader, acc),
                on_best=keep_best, report=report, progress=stage)
    if best_path.is_file():  # the best epoch's weights go on to the next stage
        load_weights(best_path, module)
    acc.free_memory()
    return int(trainer.state["best_step"] or trainer.state["step"])


def train(config: str, data: str, out: Path, *, resume: bool = False,
          overrides: dict[str, Any] | None = None) -> Path:
    """``marbench train lga``: :func:`train_lga` with ``overrides`` laid on ``config``
    (unknown keys are an error, with a suggestion)."""
    cfg, name = LGAConfig.load_named(config, overrides)
    return train_lga(cfg, data, out, resume=resume, config_name=name)


train.configs = ["lga-tiny", "lga-cpu", "lga-paper",  # type: ignore[attr-defined]
                 "table1-baseline", "table1-arvae", "table1-arvae-loss", "table1-arvae-an",
                 "table1-full"]


def train_lga(config: str | Path | dict[str, Any] | LGAConfig, data: str | Path,
              out: str | Path, resume: bool = False, *, config_name: str | None = None
              ) -> Path:
    """Train LGA on the ``pairs`` train split of ``data`` (plus its ``clean`` config if any).

    Args:
        config: a shipped config name (``"lga-cpu"``, ``"lga-paper"``, ``"table1-..."``), a
            YAML path, a dict of overrides or an :class:`LGAConfig`.
        data: a built dataset folder or a Hub dataset repo id.
        out: run folder (created). Must be empty unless ``resume``.
        resume: continue the run in ``out`` (finished stages are skipped; the current one
            restarts from its last checkpoint: weights, optimiser, step, best metric).
        config_name: the name recorded with the weights (default: the YAML file's stem).

    Returns:
        ``out / "model"``: the trained weights (load with ``LGAModel.from_pretrained`` or
        ``marbench run --method lga --option weights=...``).
    """
    from benchmark.data import open_split

    cfg, name = LGAConfig.load_named(config)
    name = config_name or name
    out = Path(out)
    run = Run(out, cfg, resume=resume, tag="lga", mixed_precision=cfg.mixed_precision)
    seed_everything(cfg.seed)
    split = open_split(data, "train")
    ids = [split.slice_id(r)[0] for r in split.order]
    train_pos, val_pos = patient_split(ids, cfg.val_fraction, where=split.where)
    pairs = PairVolumes(split, [split.order[i] for i in train_pos], cfg)
    val = PairVolumes(split, evenly_spaced([split.order[i] for i in val_pos],
                                           cfg.val_max_slices), cfg)
    clean = open_clean(data, cfg)
    run.say(f"{len(pairs)} training slices ({len(pairs.patients)} patients), "
            f"{len(val)} validation slices ({len(val.patients)} patients), "
            f"{len(clean) if clean is not None else 'no'} clean slices; "
            f"{run.accelerator.num_processes} process(es) on {run.device}")

    model_dir = out / "model"
    if resume and (model_dir / CONFIG_NAME).is_file():
        model = LGAModel.from_pretrained(model_dir)
    else:
        model = LGAModel(cfg)
    model.training_info.update(
        config_name=name, data_source=split.source.source, data_revision=split.source.revision,
        dataset_manifest_sha256=split.source.manifest_sha256, train_patients=len(pairs.patients),
        val_patients=len(val.patients))
    model.to(run.device)
    for stage in active_stages(cfg):
        if stage in model.trained:
            run.say(f"{stage}: already trained (step {model.trained[stage]})")
            continue
        ds = VAEVolumes(pairs, clean, cfg) if stage == "vae" else pairs
        model.trained[stage] = _run_stage(stage, model, ds, val, run)
        if run.is_main:
            model.save_pretrained(model_dir)
        run.wait()
    run.end()
    return model_dir
