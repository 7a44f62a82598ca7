"""Simulator throughput: slice triplets (ordinary + GSI + clean, with ideal and labels) per
second at several image sizes on this CPU, and peak memory.

Usage: python benchmarks/bench_simulator.py [--sizes 128 256 512] [--slices 8] [--threads 2]

Each size runs the three implant types (one patient each) after a warm-up that builds the
projector's system matrix (reported separately: it is built once per process).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from rich.console import Console
from rich.table import Table

from artifactgsi.simulate import SimConfig, make_scanners, plan_patients, simulate_patient


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = Table(title=f"ArtifactGSI-Sim throughput ({args.threads} CPU threads)")
    for c in ("size px", "views x channels", "projector build s", "hip", "fracture", "spinal",
              "mean triplets/s", "peak RSS GB"):
        t.add_column(c, justify="right")
    for size in args.sizes:
        cfg = SimConfig(patients=3, slices=args.slices, size=size, clean_patients=0)
        t0 = time.perf_counter()
        sc = make_scanners(cfg)
        sc[0].project(torch.zeros(1, 1, size, size))
        build = time.perf_counter() - t0
        rates = []
        for plan in plan_patients(cfg)[:3]:
            t0 = time.perf_counter()
            simulate_patient(cfg, plan, sc)
            rates.append(args.slices / (time.perf_counter() - t0))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        geom = sc[0].geom
        t.add_row(str(size), f"{geom.n_views} x {geom.n_det}", f"{build:.1f}",
                  *(f"{r:.2f}" for r in rates), f"{sum(rates) / 3:.2f}", f"{rss:.2f}")
    Console().print(t)


if __name__ == "__main__":
    main()
