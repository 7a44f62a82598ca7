"""Scoring throughput of the marbench-v1 protocol on CPU: slices per second at 512 x 512,
for PSNR + SSIM alone, with LPIPS, with the clinical metrics, all together, and the
downstream segmenter (`seg-cpu`).

Slices are procedural CT-like images (body, bone, metal rod, noise; the "method output" is
the reference plus noise and a streak pattern), scored with :class:`benchmark.metrics.Scorer`.
LPIPS rows need the real AlexNet weights (``marbench weights lpips``); without them they are
reported as missing.

Usage: python benchmarks/bench_metrics.py [--slices 16] [--batch 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmark.metrics import MARBENCH_V1, LPIPSMetric, LPIPSUnavailable, Scorer
from benchmark.segmentation import Segmenter, load_config


def make_slices(n: int, size: int = 512, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(reference, output, metal mask), each (n, 1, size, size): HU, HU, bool."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = size / 2
    refs, outs, masks = [], [], []
    for _ in range(n):
        ref = np.full((size, size), -1000.0)
        ref[((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.46 * size)) ** 2 <= 1] = 40.0
        bx = c + rng.uniform(-0.25, -0.15) * size
        ref[(yy - c) ** 2 + (xx - bx) ** 2 <= (0.06 * size) ** 2] = 700.0
        mx, my = c + rng.uniform(0.1, 0.2) * size, c + rng.uniform(-0.1, 0.1) * size
        metal = (yy - my) ** 2 + (xx - mx) ** 2 <= (0.02 * size) ** 2
        ref[metal] = 3000.0
        theta = np.arctan2(yy - my, xx - mx)
        streaks = 60.0 * np.cos(8 * theta) * np.exp(-np.hypot(yy - my, xx - mx) / (0.2 * size))
        out = ref + streaks + rng.normal(0.0, 15.0, ref.shape)
        ref = ref + rng.normal(0.0, 10.0, ref.shape)
        refs.append(ref)
        outs.append(out)
        masks.append(metal)
    t = [torch.from_numpy(np.stack(a)[:, None]) for a in (refs, outs)]
    return t[0].float(), t[1].float(), torch.from_numpy(np.stack(masks)[:, None])


def run(scorer: Scorer, ref: torch.Tensor, out: torch.Tensor, mask: torch.Tensor,
        batch: int) -> float:
    """Seconds to score every slice, in batches."""
    spacing = torch.full((ref.shape[0],), 0.78)
    t0 = time.perf_counter()
    for i in range(0, ref.shape[0], batch):
        sl = slice(i, i + batch)
        scorer.update(out[sl], ref[sl], metal_mask=mask[sl], pixel_spacing_mm=spacing[sl])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    ref, out, mask = make_slices(args.slices, MARBENCH_V1.eval_size)
    try:
        lp: LPIPSMetric | None = LPIPSMetric()
        lp_reason = ""
    except LPIPSUnavailable as e:
        lp, lp_reason = None, str(e)
    # Warm-up: first calls pay for imports and allocator growth.
    run(Scorer(lpips=lp), ref[:1], out[:1], mask[:1], 1)

    table = Table(title=f"marbench-v1 scoring on CPU, {MARBENCH_V1.eval_size} px, "
                        f"{args.threads} threads, batch {args.batch}, {args.slices} slices")
    for col in ("metrics", "s / slice", "slices / s"):
        table.add_column(col, justify="right" if col != "metrics" else "left")
    configs = [("PSNR + SSIM", None, False), ("PSNR + SSIM + LPIPS", lp, False),
               ("clinical + PSNR + SSIM", None, True), ("all (with LPIPS)", lp, True)]
    for label, lpips_metric, clinical in configs:
        if "LPIPS" in label and lpips_metric is None:
            table.add_row(label, "missing", lp_reason[:60])
            continue
        scorer = Scorer(lpips=lpips_metric, clinical=clinical)
        secs = run(scorer, ref, out, mask, args.batch)
        table.add_row(label, f"{secs / args.slices:.3f}", f"{args.slices / secs:.1f}")
    # Downstream segmentation: the frozen seg-cpu segmenter on each output slice (random
    # weights: the speed does not depend on them; bench_segmentation.py adds seg-paper).
    seg = Segmenter(load_config("seg-cpu")[0]).eval()
    seg.predict(out[:1])
    t0 = time.perf_counter()
    seg.predict(out, batch_size=args.batch)
    secs = time.perf_counter() - t0
    table.add_row("segmentation (seg-cpu segmenter)", f"{secs / args.slices:.3f}",
                  f"{args.slices / secs:.1f}")
    console.print(table)
    console.print("means of the last run: " + ", ".join(
        f"{k} {v.mean:.4g}" for k, v in scorer.summary().items()))


if __name__ == "__main__":
    main()
