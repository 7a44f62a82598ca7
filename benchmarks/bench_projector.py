"""Speed, memory and accuracy of the fan-beam projector, against astra-toolbox on the CPU.

    python benchmarks/bench_projector.py [--sizes 128 256 512] [--channels 1 12] [--repeats 3]

For each ``FanBeamGeometry.scaled(size)``: system-matrix build time and memory (cold, in this
process), forward / backward / FBP wall time for ``B=1`` and ``C`` channels, astra-toolbox's
CPU forward projection (``strip_fanflat``, ``line_fanflat``; it projects one image per call,
so its time is per image) and the relative L2 difference of our sinogram to astra's on a body
phantom. Runs with 2 torch threads (the simulator's budget).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from artifactgsi.physics.geometry import FanBeamGeometry, ImageGrid
from artifactgsi.physics.projector import FanBeamProjector, clear_cache


def phantom(grid: ImageGrid, ss: int = 4) -> np.ndarray:
    """Anti-aliased body ellipse (water) with bone discs and a small metal-like disc, 1/mm."""
    o = ((np.arange(ss) + 0.5) / ss - 0.5) * grid.pixel_mm
    x = grid.x_mm().numpy()[None, :, None, None] + o[None, None, None, :]
    y = grid.y_mm().numpy()[:, None, None, None] + o[None, None, :, None]
    img = np.zeros((*grid.shape, ss, ss))
    for cx, cy, a, b, mu in [(0, 0, 170, 120, 0.0192), (-60, 20, 25, 25, 0.045),
                             (60, 20, 25, 25, 0.045), (0, 80, 18, 15, 0.04),
                             (30, -40, 6, 6, 0.25)]:
        img = np.where(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1, mu, img)
    return img.mean(axis=(2, 3))


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time in ms over ``repeats`` calls after a warm-up call (the machine is shared,
    so the minimum is the least disturbed measurement, as in ``timeit``)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def astra_forward(g: FanBeamGeometry, img: np.ndarray, kind: str) -> tuple[np.ndarray, float]:
    """astra CPU projection of ``img`` in our convention (angles pi - beta, detector reversed);
    returns (sinogram in mm x 1/mm, ms per call)."""
    import astra

    px = g.object_grid.pixel_mm
    vol = astra.create_vol_geom(g.image_size, g.image_size)
    proj = astra.create_proj_geom("fanflat", g.det_pitch_mm / px, g.n_det,
                                  math.pi - g.view_angles().numpy(), g.sid_mm / px,
                                  (g.sdd_mm - g.sid_mm) / px)
    pid = astra.create_projector(kind, proj, vol)
    try:
        t0 = time.perf_counter()
        sid, sino = astra.create_sino(img, pid)
        ms = 1e3 * (time.perf_counter() - t0)
        astra.data2d.delete(sid)
    finally:
        astra.projector.delete(pid)
    return np.ascontiguousarray(sino[:, ::-1]) * px, ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--channels", type=int, nargs="+", default=[1, 12])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-astra", action="store_true", help="skip the astra-toolbox comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import astra  # noqa: F401

        have_astra = not args.no_astra
    except ImportError:
        have_astra = False

    rows: list[dict[str, str]] = []
    for n in args.sizes:
        g = FanBeamGeometry.scaled(n)
        clear_cache()
        op = FanBeamProjector(g)
        img = phantom(g.object_grid)
        x1 = torch.as_tensor(img, dtype=torch.float32)[None, None]
        t0 = time.perf_counter()
        sino1 = op.forward(x1)  # builds the matrix
        build_s = time.perf_counter() - t0
        op.backward(sino1)  # builds the transpose
        sm = op.matrix
        base = {
            "size": str(n), "views x det": f"{g.n_views} x {g.n_det}",
            "nnz (M)": f"{sm.a._nnz() / 1e6:.1f}",
            "build s A+A^T": f"{build_s:.2f}+{sm.transpose_s:.2f}",
            "matrix MB": f"{sm.nbytes / 2**20:.0f}",
        }
        acc = {}
        astra_ms = {}
        if have_astra:
            ours = sino1[0, 0].numpy()
            for kind in ("strip_fanflat", "line_fanflat"):
                ref, ms = astra_forward(g, img, kind)
                acc[kind] = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
                astra_ms[kind] = ms
        for c in args.channels:
            x = x1.expand(1, c, n, n).contiguous() * (1 + 0.01 * torch.arange(c).view(1, c, 1, 1))
            s = op.forward(x)
            row = dict(base) if c == args.channels[0] else {k: "" for k in base}
            row.update({
                "C": str(c),
                "fwd ms": f"{timed(partial(op.forward, x), args.repeats):.0f}",
                "bwd ms": f"{timed(partial(op.backward, s), args.repeats):.0f}",
                "fbp ms": f"{timed(partial(op.fbp, s, filter='hann'), args.repeats):.0f}",
            })
            first = c == args.channels[0]
            for kind, short in (("strip_fanflat", "strip"), ("line_fanflat", "line")):
                row[f"astra {short} ms/img"] = (f"{astra_ms[kind]:.0f}" if first and have_astra
                                                else "")
                row[f"relL2 vs {short} %"] = f"{100 * acc[kind]:.2f}" if first and acc else ""
            rows.append(row)
        print(f"done {n} px", flush=True)

    cols = list(rows[0])
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"FanBeamProjector, torch {torch.__version__}, "
                            f"{torch.get_num_threads()} threads (astra: per image)")
        for col in cols:
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(*(r[c] for c in cols))
        Console(width=220).print(table)
    except ImportError:
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(r[c] for c in cols))


if __name__ == "__main__":
    main()
