"""Cost in time of the scanner physics (bowtie, scatter and its correction, focal-spot and
detector sub-sampling): CPU seconds per slice triplet (ordinary + GSI + clean, with ideal and
labels) with the ideal scanner and with the GSI scanner profile's physics.

Usage: python benchmarks/bench_sim_physics.py [--sizes 128 256] [--slices 4] [--threads 1]

One patient of each implant type per size, after a warm-up that builds the projectors (the
sub-ray projector has 3 times the channels) and the calibrations; each patient runs
``--repeat`` times and the least CPU time counts (process CPU time, one thread: on a shared
machine it varies far less than wall time).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from artifactgsi.simulate import SimConfig, make_scanners, plan_patients, simulate_patient


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| size | scanner | CPU s per triplet (hip / fracture / spinal) | mean | vs ideal |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        base = None
        for physics in (False, True):
            cfg = SimConfig(patients=3, slices=args.slices, size=size, clean_patients=0,
                            scanner_physics=physics)
            sc = make_scanners(cfg)
            warm = replace(cfg, slices=1)
            simulate_patient(warm, plan_patients(warm)[0], sc)
            per = []
            for plan in plan_patients(cfg):
                best = float("inf")
                for _ in range(args.repeat):
                    t0 = time.process_time()
                    simulate_patient(cfg, plan, sc)
                    best = min(best, time.process_time() - t0)
                per.append(best / cfg.slices)
            mean = sum(per) / len(per)
            base = base or mean
            print(f"| {size} | {'profile physics' if physics else 'ideal'} | "
                  f"{' / '.join(f'{p:.2f}' for p in per)} | {mean:.2f} | {mean / base:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
