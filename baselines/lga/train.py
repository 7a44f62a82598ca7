"""Train LGA in three stages with one accelerate loop: VAE -> invariance encoders -> alignment.

Run it on one CPU, one GPU, or many GPUs / nodes without changing code::

    python -m baselines.lga.train --config lga-cpu --data DATA --out runs/lga-cpu
    accelerate launch --multi_gpu --num_processes 4 -m baselines.lga.train \
        --config lga-paper --data artifactgsi/ArtifactGSI --out runs/lga-paper
    accelerate launch --multi_gpu --num_processes 2 -m baselines.lga.train ...   # 2 CPU
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
    OUT/model/                            config.json + model.safetensors (after each stage)
    OUT/checkpoints/<stage>/last/         accelerate state (model, optimiser, RNG) + state.json
    OUT/checkpoints/<stage>/best.safetensors   best validation weights of the stage
    OUT/log.jsonl                         one line per validation (every val_every epochs)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from baselines.lga.config import STAGES, LGAConfig, load_config
from baselines.lga.data import (
    EpochSampler,
    PairVolumes,
    VAEVolumes,
    open_clean,
    patient_split,
)
from baselines.lga.invariance import info_nce, invariance_distance, retrieval_accuracy
from baselines.lga.model import CONFIG_NAME, LGAModel
from baselines.lga.vae import augment_centre_slice
from benchmark.metrics.image import psnr


class TrainError(RuntimeError):
    """The run cannot start or resume as asked (the message says why and what to do)."""


def active_stages(config: LGAConfig) -> list[str]:
    """Stages this config trains, in order (no invariance stage when beta = 0)."""
    return [s for s in STAGES if s != "invariance" or config.beta > 0]


def stage_lr(config: LGAConfig, step: int, total: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of a stage of ``total`` steps.

    A pure function of the step (no scheduler state), so a resumed run continues the same
    curve. ``cosine``: lr at step 0, ``lr_final_ratio * lr`` at the last step."""
    if config.lr_schedule == "constant" or total <= 1:
        return config.lr
    t = min(step, total - 1) / (total - 1)
    lo = config.lr * config.lr_final_ratio
    return lo + 0.5 * (config.lr - lo) * (1.0 + math.cos(math.pi * t))


def _freeze(*modules: nn.Module) -> None:
    for m in modules:
        m.requires_grad_(False)
        m.eval()


def _psnr_unit(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-slice PSNR (B,) of [-1, 1] images = benchmark PSNR on [0, 1] with range 1."""
    return psnr(pred.float().clamp(-1, 1), target.float().clamp(-1, 1), data_range=2.0)


def step_generator(seed: int, stage: str, step: int, rank: int) -> torch.Generator:
    """The CPU generator of one optimiser step's random draws (crops, augmentation, latent
    samples): a pure function of (seed, stage, step, process), so a resumed run draws exactly
    what the uninterrupted one did (torch's global RNG is also consumed by data loaders)."""
    digest = hashlib.sha256(f"{seed}/{stage}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


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


# ----------------------------------------------------------------------------- checkpoints


def _save_last(accelerator: Any, ckpt_dir: Path, state: dict[str, Any]) -> None:
    """accelerate state (model, optimiser, RNG) + state.json, replaced atomically-ish."""
    tmp = ckpt_dir / "last-tmp"
    last = ckpt_dir / "last"
    accelerator.save_state(str(tmp))
    # Every process writes its own RNG state into tmp; none may still be writing when the
    # main process renames the folder.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        if last.exists():
            shutil.rmtree(last)
        tmp.rename(last)
    accelerator.wait_for_everyone()


def _find_last(ckpt_dir: Path) -> Path | None:
    for name in ("last", "last-tmp"):  # last-tmp: a crash between rmtree and rename
        if (ckpt_dir / name / "state.json").is_file():
            return ckpt_dir / name
    return None


def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.cpu()
            for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- the loop


def _progress(accelerator: Any):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    disable=not accelerator.is_main_process)


def _validates(step: int, steps_per_epoch: int, total: int, every: int) -> bool:
    """Whether ``step`` (1-based count of steps done) ends an epoch that is validated: every
    ``every``-th epoch, and the stage's last step always."""
    if step >= total:
        return True
    return step % steps_per_epoch == 0 and (step // steps_per_epoch) % every == 0


def _run_stage(stage: str, model: LGAModel, train_ds: Any, val_ds: Any, accelerator: Any,
               out: Path, resume: bool, log: Callable[[dict[str, Any]], None]) -> int:
    """Train one stage to its end; return its final step. The best weights are loaded."""
    from safetensors.torch import load_file, save_file

    cfg = model.config
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
    feed = {"num_workers": cfg.num_workers, "pin_memory": accelerator.device.type == "cuda"}
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                        drop_last=stage == "invariance" and len(train_ds) > cfg.batch_size,
                        **feed)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, **feed)
    module, opt, loader, val_loader = accelerator.prepare(module, opt, loader, val_loader)
    spe = len(loader)
    if spe == 0:
        raise TrainError(f"stage {stage!r}: no training batch ({len(train_ds)} slices, batch "
                         f"size {cfg.batch_size} x {accelerator.num_processes} processes)")
    epochs = {"vae": cfg.vae_epochs, "invariance": cfg.invariance_epochs,
              "align": cfg.align_epochs}[stage]
    total = epochs * spe if cfg.max_steps is None else min(epochs * spe, cfg.max_steps)
    ckpt_dir = out / "checkpoints" / stage
    st = {"stage": stage, "step": 0, "epoch": 0, "best_metric": None, "best_step": None,
          "config": cfg.to_dict()}
    last = _find_last(ckpt_dir) if resume else None
    if last is not None:
        accelerator.load_state(str(last))
        st = json.loads((last / "state.json").read_text(encoding="utf-8"))
        accelerator.print(f"[lga] {stage}: resumed from {last} at step {st['step']}")
    best_path = ckpt_dir / "best.safetensors"
    unwrapped = accelerator.unwrap_model(module)

    with _progress(accelerator) as progress:
        task = progress.add_task(f"{stage}", total=total, completed=st["step"], info="")
        t0, n_seen, running = time.perf_counter(), 0, 0.0
        while st["step"] < total:
            epoch = st["step"] // spe
            sampler.set_epoch(epoch)
            if hasattr(train_ds, "set_epoch"):
                train_ds.set_epoch(epoch)
            skip = st["step"] - epoch * spe
            it = accelerator.skip_first_batches(loader, skip) if skip else loader
            module.train()
            for batch in it:
                for group in opt.param_groups:
                    group["lr"] = stage_lr(cfg, st["step"], total)
                unwrapped.rng = step_generator(cfg.seed, stage, st["step"],
                                               accelerator.process_index)
                with accelerator.autocast():
                    losses = module(batch)
                accelerator.backward(losses["loss"])
                if cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                st["step"] += 1
                n_seen += 1
                running += float(losses["loss"].detach())
                progress.update(task, advance=1, info=" ".join(
                    f"{n}={float(v.detach()):.4g}" for n, v in losses.items()))
                # Periodic checkpoints; validated epochs are checkpointed after validation.
                if st["step"] % cfg.checkpoint_every == 0 and not _validates(
                        st["step"], spe, total, cfg.val_every):
                    _save_last(accelerator, ckpt_dir, {**st, "epoch": epoch})
                if st["step"] >= total:
                    break
            if not _validates(st["step"], spe, total, cfg.val_every):
                continue
            metric, details = _validate(stage, model, val_loader, accelerator)
            better = st["best_metric"] is None or metric > st["best_metric"]
            if better:
                st["best_metric"], st["best_step"] = metric, st["step"]
                if accelerator.is_main_process:
                    ckpt_dir.mkdir(parents=True, exist_ok=True)
                    save_file(_state_dict_cpu(unwrapped), str(best_path))
            st["epoch"] = epoch + 1
            log({"stage": stage, "epoch": epoch, "step": st["step"],
                 "train_loss": running / max(n_seen, 1), "val_metric": metric, **details,
                 "best_metric": st["best_metric"], "best_step": st["best_step"],
                 "seconds": round(time.perf_counter() - t0, 2)})
            accelerator.print(f"[lga] {stage} epoch {epoch}: step {st['step']}/{total} "
                              f"val {', '.join(f'{n}={v:.4f}' for n, v in details.items())}")
            _save_last(accelerator, ckpt_dir, st)
            t0, n_seen, running = time.perf_counter(), 0, 0.0
    accelerator.wait_for_everyone()
    if best_path.is_file():  # the best epoch's weights go on to the next stage
        best = load_file(str(best_path))
        unwrapped.load_state_dict({k: v.to(dtype=unwrapped.state_dict()[k].dtype)
                                   for k, v in best.items()})
    accelerator.free_memory()
    return int(st["best_step"] or st["step"])


def train(config: str, data: str, out: Path, *, resume: bool = False,
          overrides: dict[str, Any] | None = None) -> Path:
    """``marbench train lga``: :func:`train_lga` with ``overrides`` laid on ``config``
    (unknown keys are an error, with a suggestion)."""
    cfg = load_config(config, **(overrides or {}))
    return train_lga(cfg, data, out, resume=resume)


train.configs = ["lga-cpu", "lga-paper", "table1-baseline",  # type: ignore[attr-defined]
                 "table1-arvae", "table1-arvae-loss", "table1-arvae-an", "table1-full"]


def train_lga(config: str | Path | dict[str, Any] | LGAConfig, data: str | Path,
              out: str | Path, resume: bool = False) -> Path:
    """Train LGA on the ``pairs`` train split of ``data`` (plus its ``clean`` config if any).

    Args:
        config: a shipped config name (``"lga-cpu"``, ``"lga-paper"``, ``"table1-..."``), a
            YAML path, a dict of overrides or an :class:`LGAConfig`.
        data: a built dataset folder or a Hub dataset repo id.
        out: run folder (created). Must be empty unless ``resume``.
        resume: continue the run in ``out`` (finished stages are skipped; the current one
            restarts from its last checkpoint: weights, optimiser, RNG, step, best metric).

    Returns:
        ``out / "model"``: the trained weights (load with ``LGAModel.from_pretrained`` or
        ``marbench run --method lga --option weights=...``).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from benchmark.data import open_split

    cfg = load_config(config)
    out = Path(out)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda,
                              mixed_precision=cfg.mixed_precision if cuda else "no")
    set_seed(cfg.seed, device_specific=True)

    run_cfg = out / "config.json"
    if run_cfg.is_file():
        old = json.loads(run_cfg.read_text(encoding="utf-8"))
        if not resume:
            raise TrainError(f"{out}: already holds a run; pass resume=True (--resume) to "
                             "continue it, or choose another --out folder")
        if old != cfg.to_dict():
            diff = sorted(k for k in set(old) | set(cfg.to_dict())
                          if old.get(k) != cfg.to_dict().get(k))
            raise TrainError(f"{run_cfg}: the run was started with a different config "
                             f"(keys {', '.join(diff)}); resume with the same config")
    elif resume:
        raise TrainError(f"{out}: nothing to resume (no config.json)")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(run_cfg)

    split = open_split(data, "train")
    train_rows, val_rows = patient_split(split, cfg.val_fraction, cfg.val_max_slices)
    pairs = PairVolumes(split, train_rows, cfg)
    val = PairVolumes(split, val_rows, cfg)
    clean = open_clean(data, cfg)
    accelerator.print(f"[lga] {len(pairs)} training slices ({len(pairs.patients)} patients), "
                      f"{len(val)} validation slices ({len(val.patients)} patients), "
                      f"{len(clean) if clean is not None else 'no'} clean slices; "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}")

    model_dir = out / "model"
    if resume and (model_dir / CONFIG_NAME).is_file():
        model = LGAModel.from_pretrained(model_dir)
    else:
        model = LGAModel(cfg)
    model.to(accelerator.device)

    def log(entry: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    for stage in active_stages(cfg):
        if stage in model.trained:
            accelerator.print(f"[lga] {stage}: already trained (step {model.trained[stage]})")
            continue
        ds = VAEVolumes(pairs, clean, cfg) if stage == "vae" else pairs
        step = _run_stage(stage, model, ds, val, accelerator, out, resume, log)
        model.trained[stage] = step
        if accelerator.is_main_process:
            model.save_pretrained(model_dir)
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return model_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m baselines.lga.train",
                                description="Train the LGA reference method (3 stages).")
    p.add_argument("--config", default="lga-cpu",
                   help="shipped config name or YAML path (default lga-cpu)")
    p.add_argument("--data", required=True, help="built dataset folder or Hub repo id")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    a = p.parse_args(argv)
    model_dir = train_lga(a.config, a.data, a.out, resume=a.resume)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(model_dir)


if __name__ == "__main__":
    main()
