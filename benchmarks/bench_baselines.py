"""Speed of the LI and NMAR baselines on the CPU, and their quality on a simulated scan.

    python benchmarks/bench_baselines.py [--sizes 256 512] [--batches 1 4] [--repeats 3]
                                         [--quality-sizes 96 256]

Speed: seconds per slice of ``li`` and ``nmar`` on a pelvis-like HU image (body ellipse,
bones, two CoCr-like femoral heads) at each size with a 400 mm field of view, for batches of
B slices (the FBP cost is nearly flat in B, so batching pays); the first call, which builds
the projector's system matrix, is timed separately. Best of ``--repeats`` warm calls (the
machine is shared: the minimum is the least disturbed measurement).

Quality: an ordinary 120 kVp scan (Scanner: spectrum, beam hardening, Poisson noise,
water BHC, FBP) of a water cylinder with two steel rods and a cortical-bone insert (the
test phantom of ``tests/baselines/test_li_nmar.py``), against the same scan without rods:
RMSE in the body outside the metal and streak SD in an annulus 6-30 mm around the rods, HU;
the "noise floor" row scores a second metal-free scan (fresh noise) the same way.

Runs with 2 torch threads.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from artifactgsi.physics.geometry import FanBeamGeometry, ImageGrid
from artifactgsi.physics.scan import Scanner
from baselines.li import li
from baselines.nmar import nmar

METHODS: dict[str, Callable] = {"li": li, "nmar": nmar}


def discs(grid: ImageGrid, items, ss: int = 4) -> np.ndarray:
    """Area fractions of ellipses ``(x, y, a, b)`` in mm on ``grid`` (ss x ss supersampling)."""
    o = ((np.arange(ss) + 0.5) / ss - 0.5) * grid.pixel_mm
    x = grid.x_mm().numpy()[None, :, None, None] + o[None, None, None, :]
    y = grid.y_mm().numpy()[:, None, None, None] + o[None, None, :, None]
    inside = np.zeros((*grid.shape, ss, ss), bool)
    for cx, cy, a, b in items:
        inside |= ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1
    return inside.mean((2, 3))


def pelvis_hu(n: int, fov_mm: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(1, 1, n, n) HU image, its metal mask and the pixel size in mm."""
    grid = ImageGrid((n, n), fov_mm / n)
    img = -1000 + 1000 * discs(grid, [(0, 0, 170, 115)])
    img += 700 * discs(grid, [(-90, 0, 30, 30), (90, 0, 30, 30), (0, 70, 35, 20)])
    metal = discs(grid, [(-90, 0, 22, 22), (90, 0, 22, 22)])
    img = img * (1 - metal) + 8000 * metal
    hu = torch.from_numpy(img).float()[None, None]
    return hu, hu > 2500, grid.pixel_mm


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def speed_rows(sizes: list[int], batches: list[int], repeats: int) -> list[dict[str, str]]:
    rows = []
    for n in sizes:
        hu, mask, p = pelvis_hu(n, 400.0)
        g = FanBeamGeometry.scaled(n, fov_mm=400.0)
        t0 = time.perf_counter()
        li(hu, mask, p)  # builds (and caches) the system matrix
        cold = time.perf_counter() - t0
        for b in batches:
            x, m = hu.expand(b, -1, -1, -1).contiguous(), mask.expand(b, -1, -1, -1).contiguous()
            row = {"size": str(n), "views x det": f"{g.n_views} x {g.n_det}",
                   "first call s": f"{cold:.1f}" if b == batches[0] else "", "B": str(b)}
            for name, fn in METHODS.items():
                call = partial(fn, x, m, p)
                row[f"{name} s/slice"] = f"{best_of(call, repeats) / b:.2f}"
            rows.append(row)
        print(f"done speed {n} px", flush=True)
    return rows


def quality_rows(sizes: list[int]) -> list[dict[str, str]]:
    mats = ("water", "cortical_bone", "steel316l")
    rows = []
    for n in sizes:
        geom = FanBeamGeometry.scaled(n, fov_mm=200.0)
        grid = geom.object_grid
        bone = discs(grid, [(0, 40, 12, 12)])
        steel = discs(grid, [(-35, 0, 5, 5), (35, 0, 5, 5)])
        body = discs(grid, [(0, 0, 80, 80)])
        frac = [np.stack([np.clip(body - bone - s, 0, 1), bone, s]) for s in
                (steel, np.zeros_like(steel))]
        sc = Scanner(geom)
        lines = sc.project(torch.from_numpy(np.stack(frac)).float())
        gen = torch.Generator().manual_seed(0)
        art = sc.ordinary(lines[:1], mats, grid, gen)
        ref = sc.ordinary(lines[1:], mats, grid, gen)
        mask = art > 2500
        yy, xx = np.meshgrid(grid.y_mm().numpy(), grid.x_mm().numpy(), indexing="ij")
        d = np.minimum(np.hypot(xx - 35, yy), np.hypot(xx + 35, yy))
        inside = np.hypot(xx, yy) < 78
        outside = inside & (d > 5 + 2 * grid.pixel_mm)
        ann = inside & (d > 11) & (d < 35) & (np.hypot(xx, yy - 40) > 20)
        # Noise floor: the metal-free scan again with fresh noise (what a perfect method
        # that keeps the input's noise would score).
        floor = sc.ordinary(lines[1:], mats, grid, gen)
        outs = {"uncorrected": art, "li": li(art, mask, grid.pixel_mm),
                "nmar": nmar(art, mask, grid.pixel_mm), "noise floor": floor}
        for name, img in outs.items():
            e = (img - ref)[0, 0].numpy()
            rows.append({"size": f"{n} ({grid.pixel_mm:.2f} mm)", "method": name,
                         "RMSE HU": f"{np.sqrt(np.mean(e[outside] ** 2)):.1f}",
                         "streak SD HU": f"{np.std(e[ann]):.1f}"})
        print(f"done quality {n} px", flush=True)
    return rows


def print_table(title: str, rows: list[dict[str, str]]) -> None:
    cols = list(rows[0])
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in cols:
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(*(r[c] for c in cols))
        Console(width=160).print(table)
    except ImportError:
        print(title)
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(r[c] for c in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quality-sizes", type=int, nargs="*", default=[96, 256])
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.quality_sizes:
        print_table("LI / NMAR on a simulated 120 kVp scan (water, 2 steel rods, bone), "
                    "vs the metal-free scan", quality_rows(args.quality_sizes))
    if args.sizes:
        print_table(f"LI / NMAR speed, CPU, torch {torch.__version__}, "
                    f"{torch.get_num_threads()} threads, best of {args.repeats}",
                    speed_rows(args.sizes, args.batches, args.repeats))


if __name__ == "__main__":
    main()
