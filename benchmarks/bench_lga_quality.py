"""Quality of the LGA reference method on a built dataset, against LI, NMAR and identity.

    python benchmarks/bench_lga_quality.py [--data data/built] [--config lga-cpu]
        [--max-steps N] [--weights RUN/model] [--out runs/bench_lga_quality]
        [--no-lpips] [--clinical] [--threads 1]

1. Trains LGA (``--config``, default ``lga-cpu``; ``--max-steps`` caps every stage, for a
   smoke run) on the ``pairs/train`` split into ``OUT/lga-run`` -- or takes trained
   ``--weights``.
2. Scores ``lga``, ``li``, ``nmar`` and ``identity`` (the ordinary image unchanged) on the test
   split with :func:`benchmark.run.run_benchmark` (marbench-v1: 512 px, PSNR / SSIM / LPIPS
   against GSI, and against the ideal image on simulated data) into ``OUT/<method>``.
3. Reports the VAE ceiling: PSNR of D_g(E(V_g)) against the GSI centre slice on the test
   split -- what LGA would reach with a perfect alignment net F(z_n) = z_g -- next to LGA's
   own D_g(F(E(V_n))), both at the model's ``image_size`` with the benchmark HU window
   ([-1024, 3071] HU -> [0, 1], data range 1; the training's validation PSNR), and the same
   two under marbench-v1 (512 px), comparable with the table. A large gap between the two is
   the alignment net's share of the error, the rest is the VAE's.

Runs with ``--threads`` torch threads (default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from baselines.lga.config import pm1_to_hu
from baselines.lga.data import PairVolumes
from baselines.lga.model import LGAModel
from baselines.lga.train import train_lga
from benchmark.data import open_split
from benchmark.metrics.image import image_metrics, psnr
from benchmark.results import METHOD_VS_GSI, METHOD_VS_IDEAL, Results
from benchmark.run import run_benchmark

METHODS = ("lga", "li", "nmar", "identity")


@torch.no_grad()
def latent_psnr(model: LGAModel, data: str | Path, split: str = "test",
                batch_size: int = 8) -> dict[str, float]:
    """Mean PSNR (dB) over the split's slices at the model's ``image_size``, window
    [-1024, 3071] HU, of

    * ``vae_ceiling``: D_g(E(V_g)) (GSI volume in, GSI decoder out; posterior mean);
    * ``lga``: D_g(F(E(V_n))) (the method itself, same resolution);
    * ``vae_ceiling_metal`` / ``lga_metal``: the same with the metal pixels (metal fraction
      > 0.5) taken from the target: what re-inserting metal would gain at best (the
      ordinary image's metal, which ``-O reinsert_metal=true`` puts back, is not GSI's);
    * ``vae_ceiling_v1`` / ``lga_v1``: the first two in HU, scored with marbench-v1
      (resampled to 512 px), so they compare with the benchmark's table;

    all against the GSI centre slice (B, 1, S, S)."""
    model.eval()
    cfg, k = model.config, model.config.neighbour_slices
    pairs = open_split(data, split)
    vols = PairVolumes(pairs, range(len(pairs)), cfg)
    loader = torch.utils.data.DataLoader(vols, batch_size=batch_size)
    got: dict[str, list[torch.Tensor]] = {}
    for i, b in enumerate(loader):
        target = b["gsi"][:, k:k + 1]
        # marbench-v1 resamples before it clips, so it is scored against the stored HU.
        rows = list(range(i * batch_size, i * batch_size + len(target)))
        target_hu = pairs.batch(rows).gsi_hu
        metal = b["mask"] > 0.5
        rec = model.vae.decode_g(model.vae.encode(b["gsi"]).mode()).clamp(-1, 1)
        out = model.vae.decode_g(model.align_latent(b["ordinary"], b["mask"],
                                                    b["implant"])).clamp(-1, 1)
        # [-1, 1] units span 2 = the benchmark's [0, 1] window with range 1.
        for name, x in (("vae_ceiling", rec), ("lga", out)):
            got.setdefault(name, []).append(psnr(x.float(), target, data_range=2.0))
            got.setdefault(f"{name}_metal", []).append(
                psnr(torch.where(metal, target, x).float(), target, data_range=2.0))
            got.setdefault(f"{name}_v1", []).append(
                image_metrics(pm1_to_hu(x.float()), target_hu)["psnr"])
    return {n: float(torch.cat(v).mean()) for n, v in got.items()}


def _cell(results: Results, comparison: str, metric: str) -> str:
    comp = results.comparisons.get(comparison)
    if comp is None or not comp.available or metric not in comp.summary:
        return "n/a"
    v = comp.summary[metric].mean
    if not math.isfinite(v):
        return str(v)
    return f"{v:.2f}" if metric == "psnr" else f"{v:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/built", help="built dataset folder")
    ap.add_argument("--config", default="lga-cpu", help="LGA config name or YAML file")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="cap on optimiser steps per stage (smoke run)")
    ap.add_argument("--weights", type=Path, default=None,
                    help="trained LGA model folder (skips training)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_lga_quality"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    ap.add_argument("--clinical", action="store_true", help="also the clinical metrics")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    console = Console()

    t0 = time.perf_counter()
    if a.weights is not None:
        model_dir, train_s = a.weights, 0.0
    else:
        overrides = {} if a.max_steps is None else {"max_steps": a.max_steps}
        from baselines.lga.config import load_config

        cfg = load_config(a.config, **overrides)
        run_dir = a.out / "lga-run"
        model_dir = train_lga(cfg, a.data, run_dir,
                              resume=(run_dir / "config.json").is_file())
        train_s = time.perf_counter() - t0
    model = LGAModel.from_pretrained(model_dir)

    lpips = None if a.no_lpips else "auto"
    runs: dict[str, tuple[Results, float]] = {}
    for name in METHODS:
        t = time.perf_counter()
        options = {"weights": str(model_dir)} if name == "lga" else {}
        res = run_benchmark(name, a.data, split=a.split, out=a.out / name, lpips=lpips,
                            clinical=a.clinical, figure=False, options=options,
                            verbose=False, console=console)
        runs[name] = (res, time.perf_counter() - t)
    lat = latent_psnr(model, a.data, a.split)

    first = next(iter(runs.values()))[0]
    ideal = any(r.comparisons.get(METHOD_VS_IDEAL) is not None
                and r.comparisons[METHOD_VS_IDEAL].available for r, _ in runs.values())
    steps = ", ".join(f"{s} {n}" for s, n in model.trained.items())
    title = (f"LGA ({model.config.image_size} px, best-checkpoint steps: {steps}) vs baselines on "
             f"{a.data} {a.split} ({first.dataset.n_slices_scored} slices, marbench-v1)")
    if a.max_steps is not None:
        title = f"SMOKE RUN (--max-steps {a.max_steps}): " + title
    t = Table(title=title)
    t.add_column("method")
    comps = [(METHOD_VS_GSI, "GSI"), *([(METHOD_VS_IDEAL, "ideal")] if ideal else [])]
    for _, ref in comps:
        for m in ("PSNR", "SSIM", "LPIPS"):
            t.add_column(f"{m}\nvs {ref}", justify="right")
    t.add_column("run s", justify="right")
    for name, (res, secs) in runs.items():
        t.add_row(name, *[_cell(res, c, m) for c, _ in comps for m in ("psnr", "ssim", "lpips")],
                  f"{secs:.1f}")
    console.print(t)
    console.print(f"At the model's {model.config.image_size} px (benchmark HU window), vs GSI: "
                  f"VAE ceiling D_g(E(V_g)) {lat['vae_ceiling']:.2f} dB "
                  f"({lat['vae_ceiling_metal']:.2f} with the metal pixels re-inserted); "
                  f"LGA D_g(F(E(V_n))) {lat['lga']:.2f} dB ({lat['lga_metal']:.2f}). "
                  f"The same two under marbench-v1 (512 px): {lat['vae_ceiling_v1']:.2f} and "
                  f"{lat['lga_v1']:.2f} dB.")
    missing = {w for r, _ in runs.values() for c in r.comparisons.values()
               for w in c.missing.values()}
    for w in sorted(missing):
        console.print(f"[yellow]missing:[/] {w}")
    if train_s:
        console.print(f"training: {train_s:.0f} s ({model_dir})")


if __name__ == "__main__":
    main()
