"""Speed of DuDoDp: prior training steps per second per config, and sampler seconds per slice
by number of steps and slice size.

    python benchmarks/bench_dudodp.py [--sizes 128 512] [--steps 10 50 100] [--threads 1]
                                      [--train-configs dudodp-cpu] [--train-steps 3]
                                      [--weights RUN/model]

Sampler: one slice (a water disc with a bone ring and a metal rod, 0.8 mm pixels at 128 px,
scaled with the size) through :func:`baselines.dudodp.sampler.dudodp`: per step one prior
call, one forward projection and one FBP. The prior is the given weights, else a randomly
initialised network of the config whose image size matches (``dudodp-cpu`` at 128 px,
``dudodp-paper`` at 512 px): speed does not depend on the weights. The projector's one-off
system-matrix build is excluded (a warm-up call). Training: optimiser steps (draw, forward,
loss, backward, Adam, EMA) on random slices of the config's size, best of ``--train-steps``
after one warm-up. On a CUDA device everything runs there.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from baselines.dudodp.config import load_dudodp_config
from baselines.dudodp.prior import DiffusionPrior, load_prior
from baselines.dudodp.sampler import dudodp


def phantom(size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    c = torch.arange(size) - size / 2 + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    r = torch.hypot(xx, yy)
    img = torch.full((size, size), -1000.0)
    img[r < 0.42 * size] = 40.0
    img[(r > 0.28 * size) & (r < 0.34 * size)] = 1200.0
    mask = torch.hypot(xx - 0.12 * size, yy - 0.05 * size) < 0.03 * size
    img[mask] = 8000.0
    return img[None, None], mask[None, None], 0.8 * 128 / size


def prior_for(size: int, weights: str | None, device: torch.device) -> DiffusionPrior:
    if weights:
        prior = load_prior(weights)
        if prior.image_size == size:
            return prior.to(device).eval()
    name = "dudodp-paper" if size >= 512 else "dudodp-cpu"
    return DiffusionPrior(load_dudodp_config(name, {"image_size": size})).to(device).eval()


def bench_sampler(size: int, steps: list[int], weights: str | None, device: torch.device
                  ) -> list[dict]:
    prior = prior_for(size, weights, device)
    cfg = prior.config
    img, mask, px = phantom(size)
    img, mask = img.to(device), mask.to(device)

    def once(n: int) -> float:
        t0 = time.perf_counter()
        dudodp(img, mask, px, prior.predict_x0, prior.scheduler, steps=n, seed=0,
               hu_to_pm1=cfg.hu_to_pm1, pm1_to_hu=cfg.pm1_to_hu)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    once(1)  # builds and caches the projector's system matrix
    rows = []
    for n in steps:
        s = once(n)
        rows.append({"what": "sampler", "size": size, "steps": n, "s_per_slice": round(s, 3),
                     "slices_per_s": round(1 / s, 4), "params": prior.parameter_count(),
                     "device": str(device)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_training(name: str, n: int, device: torch.device) -> dict:
    from diffusers.training_utils import EMAModel

    cfg = load_dudodp_config(name)
    net = DiffusionPrior(cfg).to(device)
    ema = EMAModel(net.parameters(), decay=cfg.ema_decay)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    size, b = cfg.image_size, cfg.batch_size
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        x0 = (torch.rand((b, 1, size, size), generator=g) * 2 - 1).to(device)
        batch = {"x0": x0, "noise": torch.randn(x0.shape, generator=g).to(device),
                 "t": torch.randint(0, cfg.train_timesteps, (b,), generator=g).to(device)}
        loss = net(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(net.parameters())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    row = {"what": "train", "config": name, "batch": b, "size": size,
           "steps_per_s": round(1 / min(times), 3), "params": net.parameter_count(),
           "device": str(device)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", default=None, help="prior weights (else random init)")
    p.add_argument("--train-configs", nargs="*", default=["dudodp-cpu"])
    p.add_argument("--train-steps", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name in a.train_configs:
        bench_training(name, a.train_steps, device)
    for size in a.sizes:
        bench_sampler(size, a.steps, a.weights, device)


if __name__ == "__main__":
    main()
