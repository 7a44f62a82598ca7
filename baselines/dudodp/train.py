"""Training of the DuDoDp prior: ``marbench train dudodp --config dudodp-cpu --data D --out O``.

Data: GSI slices of the ``pairs`` train split (train-split patients only) and the ordinary
slices of the ``clean`` config's train split (patients without implant), whole slices with
random flips; each draw takes a clean slice with probability ``clean_fraction`` (GSI only
when the dataset has no clean config). No paired information is used.

Loop: x0-prediction MSE at uniform timesteps, Adam, an EMA of the weights (diffusers'
``EMAModel``), ``accelerate`` for devices, mixed precision and several GPUs
(``accelerate launch -m baselines.dudodp.train --config dudodp-paper ...``). Each step's
random draws are a pure function of (seed, step, process), so ``--resume`` continues exactly.

Output::

    OUT/config.json          the resolved config
    OUT/model/               EMA weights (save_pretrained), written at every checkpoint
    OUT/checkpoints/last/    model, EMA, optimiser, step (resume)
    OUT/log.jsonl            loss and speed per ``val_every`` steps
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.deep_common import (
    CONFIG_NAME,
    TrainError,
    check_run_folder,
    lr_at,
    step_generator,
)
from baselines.dudodp.config import DuDoDpConfig, load_dudodp_config
from baselines.dudodp.prior import DiffusionPrior


def load_training_images(data: str | Path, log=print) -> tuple[np.ndarray, np.ndarray,
                                                                dict[str, Any]]:
    """``(gsi, clean, info)``: (N, H, W) int16 HU of the train split's GSI slices and of the
    clean config's train split (possibly empty), and a record of what was read."""
    import datasets

    from benchmark.data import DatasetError, open_split, resolve_source

    split = open_split(data, "train")
    rows = list(range(len(split)))
    gsi: list[np.ndarray] = []
    for i in range(0, len(rows), 32):
        b = split.batch(rows[i:i + 32])
        gsi.append(np.clip(np.rint(b.gsi_hu[:, 0].float().numpy()), -32768, 32767)
                   .astype(np.int16))
    patients = sorted({split.slice_id(r)[0] for r in rows})
    clean = np.zeros((0, *gsi[0].shape[1:]), np.int16)
    clean_patients: list[str] = []
    try:
        source, files = resolve_source(data, "clean", "train")
    except DatasetError:
        log("[dudodp] no 'clean' config in the dataset: training on GSI slices only")
    else:
        ds = datasets.load_dataset("parquet", split="train",
                                   data_files=[str(source.folder / f.path) for f in files])
        if len(ds):
            arr = ds.with_format("numpy", columns=["ordinary"])[:]["ordinary"]
            clean = np.clip(np.rint(np.asarray(arr, np.float32)), -32768, 32767).astype(np.int16)
            clean_patients = sorted({str(p) for p in ds["patient_id"]})
    info = {"data_source": split.source.source, "data_revision": split.source.revision,
            "data_manifest_sha256": split.source.manifest_sha256, "split": "train",
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


def _export(folder: Path, net: DiffusionPrior, ema, info: dict[str, Any]) -> None:
    """Write the EMA weights as a save_pretrained folder (atomically replaced)."""
    params = list(net.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        net.training_info = dict(info)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        net.save_pretrained(tmp)
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        ema.restore(params)


def train(config: str | Path | dict[str, Any] | DuDoDpConfig, data: str | Path,
          out: str | Path, *, resume: bool = False,
          overrides: dict[str, Any] | None = None) -> Path:
    """Train the DuDoDp prior from ``config`` on dataset ``data`` into ``out``; returns
    ``OUT/model`` (the EMA weights). ``overrides``: config keys (unknown keys are errors)."""
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from safetensors.torch import load_file, save_file

    cfg = load_dudodp_config(config, overrides)
    out = Path(out)
    cuda = torch.cuda.is_available()
    acc = Accelerator(cpu=not cuda, mixed_precision=cfg.mixed_precision if cuda else "no")
    say = acc.print
    run_cfg = out / "config.json"
    check_run_folder(out, cfg.to_dict(), resume, per_invocation=("time_limit_s", "max_steps"))
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        tmp = run_cfg.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg.to_dict(), indent=1), encoding="utf-8")
        os.replace(tmp, run_cfg)

    gsi, clean, info = load_training_images(data, log=say)
    size = int(gsi.shape[-1])
    if gsi.shape[-2] != size:
        raise TrainError(f"{data}: slices are {gsi.shape[-2:]} px; the prior needs square "
                         "slices")
    if cfg.image_size is not None and cfg.image_size != size:
        raise TrainError(f"{data}: slices are {size} px but the config asks image_size "
                         f"{cfg.image_size}; pass --image_size {size}")
    if len(clean) and clean.shape[-2:] != gsi.shape[-2:]:
        raise TrainError(f"{data}: clean slices are {clean.shape[-2:]} px, pairs {size} px")
    say(f"[dudodp] {info['gsi_slices']} GSI slices of {info['train_patients']} train-split "
        f"patients + {info['clean_slices']} clean slices ({size} px); {acc.num_processes} "
        f"process(es) on {acc.device}")

    torch.manual_seed(cfg.seed)
    net = DiffusionPrior(cfg)
    net.to(acc.device)
    ema = EMAModel(net.parameters(), decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup)
    ema.to(acc.device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                           weight_decay=cfg.weight_decay)
    st: dict[str, Any] = {"step": 0, "seconds": 0.0}
    ckpt = out / "checkpoints" / "last"
    if resume and (ckpt / "state.json").is_file():
        net.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(acc.device)))
        ema.load_state_dict(torch.load(ckpt / "ema.pt", map_location=acc.device,
                                       weights_only=True))
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=acc.device,
                                       weights_only=True))
        st = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        say(f"[dudodp] resumed from {ckpt} at step {st['step']}")
    model, opt = acc.prepare(net, opt)
    record = {**info, "image_size": size, "target": "gsi+clean", "prior": "x0 diffusion"}

    def checkpoint() -> None:
        tmp = ckpt.with_name("last.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save(ema.state_dict(), tmp / "ema.pt")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(st, indent=1), encoding="utf-8")
        shutil.rmtree(ckpt, ignore_errors=True)
        os.replace(tmp, ckpt)
        _export(out / "model", net, ema, {**record, "steps": st["step"],
                                          "train_seconds": st["seconds"]})

    t0 = time.perf_counter() - float(st.get("seconds", 0.0))
    running, n_run, t_log, s_log = 0.0, 0, time.perf_counter(), st["step"]
    model.train()
    while st["step"] < cfg.max_steps:
        step = st["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        g = step_generator(cfg.seed, step, acc.process_index)
        batch = {k: v.to(acc.device) for k, v in draw_batch(gsi, clean, cfg, g).items()}
        with acc.autocast():
            loss = model(batch)["loss"]
        acc.backward(loss)
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(net.parameters())
        st["step"] = step + 1
        running += float(loss.detach())
        n_run += 1
        over = cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s
        done = st["step"] >= cfg.max_steps
        if st["step"] % cfg.val_every == 0 or done or over:
            st["seconds"] = round(time.perf_counter() - t0, 2)
            rate = (st["step"] - s_log) / max(time.perf_counter() - t_log, 1e-9)
            if acc.is_main_process:
                with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": st["step"], "lr": lr_at(cfg, step),
                                        "train_loss": running / max(n_run, 1),
                                        "steps_per_s": rate, "seconds": st["seconds"]}) + "\n")
            say(f"[dudodp] step {st['step']}/{cfg.max_steps} loss {running / max(n_run, 1):.4g}"
                f" {rate:.2f} steps/s {st['seconds']:.0f} s")
            running, n_run, t_log, s_log = 0.0, 0, time.perf_counter(), st["step"]
        if st["step"] % cfg.checkpoint_every == 0 or done or over:
            st["seconds"] = round(time.perf_counter() - t0, 2)
            if acc.is_main_process:
                checkpoint()
            acc.wait_for_everyone()
        if over:
            say(f"[dudodp] time limit {cfg.time_limit_s} s reached at step {st['step']}; "
                "--resume continues")
            break
    acc.wait_for_everyone()
    if acc.is_main_process:
        meta_path = out / "model" / CONFIG_NAME
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["training"].update(steps_done=st["step"], finished=st["step"] >= cfg.max_steps)
        tmp = meta_path.with_name(f".{CONFIG_NAME}.tmp")
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, meta_path)
    acc.end_training()
    return out / "model"


train.configs = ["dudodp-tiny", "dudodp-cpu", "dudodp-paper"]  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    """``python -m baselines.dudodp.train --config C --data D --out O [-O key=value]``: the
    same as ``marbench train dudodp``, runnable under ``accelerate launch``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m baselines.dudodp.train",
                                description="Train the DuDoDp prior (works under "
                                "`accelerate launch`).")
    p.add_argument("--config", required=True, help="shipped config name or YAML path")
    p.add_argument("--data", required=True, help="built dataset folder or Hub repo id")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable; JSON values when they parse)")
    a = p.parse_args(argv)
    from artifactgsi.cli_common import KeyValueError, parse_key_values

    try:
        overrides = parse_key_values(a.option, option="-O")
    except KeyValueError as e:
        p.error(str(e))
    folder = train(a.config, a.data, Path(a.out), resume=a.resume, overrides=overrides)
    if os.environ.get("RANK", "0") == "0":
        print(folder)


if __name__ == "__main__":
    main()
