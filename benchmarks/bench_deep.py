"""Speed of the deep baselines (unet, dicdnet, oscnet, oscnet_plus): training steps per second
per shipped config, and inference slices per second at 512 px.

    python benchmarks/bench_deep.py [--configs unet-cpu oscnet-cpu ...] [--steps 5]
                                    [--size 512] [--threads 1] [--paper]
    python benchmarks/bench_deep.py --table RUN [RUN ...]     # results folders / files

Training: optimiser steps (forward, loss, backward, Adam) on random batches of the config's
patch size and batch size, best of ``--steps`` timed steps after one warm-up step (the
machine may be shared: the minimum is the least disturbed measurement). Inference: one
512 x 512 slice through the network (``restore``, no gradient), best of 2 calls; the LI
input the dictionary networks and the default U-Net need is timed separately (the shipped
LI, first call excluded). ``--paper`` adds the published-size configs (slow on a CPU; on a
GPU they are what the paper runs). On a CUDA device everything runs there.

``--table``: Table 3 rows with their spread over training seeds: runs are grouped by method
and training target (read from results.json), and each metric is shown as the mean over
runs +- the standard deviation over runs of the per-run means (n = number of runs).
"""

from __future__ import annotations

import argparse
import time

import torch

from baselines.deep_common import DeepModel, li_image
from baselines.dictnet.model import DictNet, load_dictnet_config
from baselines.unet import UNetModel, load_unet_config

CPU_CONFIGS = ["unet-cpu", "dicdnet-cpu", "oscnet-cpu", "oscnet-plus-cpu"]
PAPER_CONFIGS = ["unet-paper", "dicdnet-paper", "oscnet-paper", "oscnet-plus-paper"]


def build(name: str) -> DeepModel:
    if name.startswith("unet"):
        return UNetModel(load_unet_config(name))
    return DictNet(load_dictnet_config(name))


def phantom_hu(batch: int, size: int) -> dict[str, torch.Tensor]:
    """HU images of a water disc with a metal rod and noise, as a training batch."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    r = (xx ** 2 + yy ** 2).sqrt()
    img = torch.where(r < 0.8, 40.0, -1000.0).expand(batch, 1, size, size).clone()
    metal = (((xx - 0.2) ** 2 + yy ** 2) < 0.01).expand(batch, 1, size, size).clone()
    ordinary = torch.where(metal, 3000.0, img + 20 * torch.randn_like(img))
    return {"ordinary": ordinary, "target": img, "li": img + 5.0, "mask": metal}


def fake_batch(model: DeepModel, batch: int, size: int, device: torch.device
               ) -> dict[str, torch.Tensor]:
    """:func:`phantom_hu` in the model's units on ``device``."""
    return model.to_units({k: v.to(device) for k, v in phantom_hu(batch, size).items()})


def time_train(model: DeepModel, steps: int, device: torch.device) -> float:
    c = model.config
    size = c.patch_size or 128
    opt = torch.optim.Adam(model.parameters(), lr=c.lr, betas=c.adam_betas)
    model.train()
    batch = fake_batch(model, c.batch_size, size, device)
    best = float("inf")
    for i in range(steps + 1):
        _sync(device)
        t = time.perf_counter()
        loss = model.losses(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i:  # the first step warms up allocators and kernels
            best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def time_infer(model: DeepModel, size: int, device: torch.device) -> float:
    model.eval()
    b = fake_batch(model, 1, size, device)
    best = float("inf")
    for _ in range(2):
        _sync(device)
        t = time.perf_counter()
        model.restore_units(b["ordinary"], b["li"], b["mask"])
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def time_li(size: int) -> float:
    hu = phantom_hu(1, size)
    li_image(hu["ordinary"], hu["mask"], 0.8)  # the first call builds the projector
    t = time.perf_counter()
    li_image(hu["ordinary"], hu["mask"], 0.8)
    return time.perf_counter() - t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


TABLE = (("method_vs_gsi", "psnr", "PSNR/GSI"), ("method_vs_gsi", "ssim", "SSIM/GSI"),
         ("method_vs_gsi", "lpips", "LPIPS/GSI"), ("method_vs_ideal", "psnr", "PSNR/ideal"),
         ("method_vs_ideal", "ssim", "SSIM/ideal"), ("method_vs_ideal", "ct_rmse_hu", "RMSE HU"),
         ("method_vs_ideal", "streak_amplitude_hu", "streak HU"))


def seed_table(paths: list[str], markdown: bool = False) -> None:
    """Print mean +- SD over runs (seeds) of each method / target's per-run means."""
    import json
    import statistics
    from pathlib import Path

    groups: dict[str, list[dict]] = {}
    for p in paths:
        f = Path(p) / "results.json" if Path(p).is_dir() else Path(p)
        r = json.loads(f.read_text(encoding="utf-8"))
        m = r["method"]
        target = (m.get("options") or {}).get("target")
        key = m["name"] + (f" ({target})" if target else "")
        groups.setdefault(key, []).append(r)
    if markdown:
        print("| method | runs | " + " | ".join(h for *_, h in TABLE) + " |")
        print("|---|---|" + "---|" * len(TABLE))
    else:
        print(f"{'method':<22}{'n':>3}" + "".join(f"{h:>17}" for *_, h in TABLE))
    for key, runs in groups.items():
        cells = []
        for comp, metric, _ in TABLE:
            vals = [r["comparisons"][comp]["summary"][metric]["mean"] for r in runs
                    if r["comparisons"].get(comp, {}).get("summary", {}).get(metric)]
            if not vals:
                cells.append(f"{'-':>17}")
                continue
            mean = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            digits = 4 if metric in ("ssim", "lpips") else 2
            spread = f" ± {sd:.{min(digits, 3)}f}" if len(vals) > 1 else ""
            cells.append(f"{mean:.{digits}f}{spread}".rjust(17))
        if markdown:
            print(f"| {key} | {len(runs)} | " + " | ".join(c.strip() for c in cells) + " |")
        else:
            print(f"{key:<22}{len(runs):>3}" + "".join(cells))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None)
    p.add_argument("--paper", action="store_true", help="add the published-size configs")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--size", type=int, default=512, help="inference slice size (px)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", nargs="+", default=None,
                   help="results folders: print Table 3 rows with the spread over seeds")
    p.add_argument("--markdown", action="store_true", help="--table as a markdown table")
    a = p.parse_args(argv)
    if a.table:
        seed_table(a.table, a.markdown)
        return
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = a.configs or (CPU_CONFIGS + (PAPER_CONFIGS if a.paper else []))
    print(f"device {device}, {a.threads} CPU thread(s), inference at {a.size} px")
    print(f"{'config':<20}{'params':>11}{'batch x patch':>15}{'steps/s':>9}"
          f"{'slices/s':>10}{'s/slice':>9}")
    for name in names:
        torch.manual_seed(0)
        model = build(name).to(device)
        c = model.config
        steps = time_train(model, a.steps, device)
        infer = time_infer(model, a.size, device)
        print(f"{name:<20}{model.parameter_count():>11,}"
              f"{f'{c.batch_size} x {c.patch_size}':>15}{1 / steps:>9.2f}"
              f"{1 / infer:>10.3f}{infer:>9.2f}")
    li_s = time_li(a.size)
    print(f"{'LI input (CPU)':<20}{'':>11}{'':>15}{'':>9}{1 / li_s:>10.3f}{li_s:>9.2f}")


if __name__ == "__main__":
    main()
