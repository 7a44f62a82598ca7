"""Simulator throughput: slice triplets (ordinary + GSI + clean, with ideal and labels) per
second at several image sizes, and peak memory; optionally the same on 1, 2, ... Dask workers.

Usage:
    python benchmarks/bench_simulator.py [--sizes 128 256 512] [--slices 8] [--threads 2]
    python benchmarks/bench_simulator.py --sizes 256 --workers 1 2 --patients 6 --slices 8

In-process (the default): each size runs the three implant types (one patient each) after a
warm-up that builds the projector's system matrix (reported separately: it is built once per
process). ``cpu s/triplet`` is this process's CPU time per triplet, which a busy machine
inflates less than the wall time.

``--workers N ...``: ``simulate_dataset`` on a local Dask cluster of N single-threaded
workers (started and warmed up before the clock starts: each worker builds its system matrix
once), ``--patients`` patients per size, into a temporary folder. Throughput = triplets /
wall seconds of the whole run (writing DICOM and NIfTI included).

``--json FILE`` also writes the rows as JSON. The script uses only the simulator's public
API, so it measures older versions of the code too (``PYTHONPATH=old-checkout``), except
``--workers`` (Dask scheduling came later).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from artifactgsi.simulate import SimConfig, make_scanners, plan_patients, simulate_patient


def _load() -> str:
    try:
        one = os.getloadavg()[0]
    except OSError:
        return "n/a"
    return f"{one:.1f}"


def in_process(sizes: list[int], slices: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for size in sizes:
        cfg = SimConfig(patients=3, slices=slices, size=size, clean_patients=0)
        t0 = time.perf_counter()
        sc = make_scanners(cfg)
        sc[0].project(torch.zeros(1, 1, size, size))
        build = time.perf_counter() - t0
        rates, cpu = [], []
        for plan in plan_patients(cfg)[:3]:
            t0, c0 = time.perf_counter(), time.process_time()
            simulate_patient(cfg, plan, sc)
            rates.append(slices / (time.perf_counter() - t0))
            cpu.append((time.process_time() - c0) / slices)
        geom = sc[0].geom
        rows.append({"size": size, "views": geom.n_views, "channels": geom.n_det,
                     "build_s": build, "rates": rates, "mean": sum(rates) / 3,
                     "cpu_s_per_triplet": sum(cpu) / 3, "threads": threads,
                     "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                     "load_1min": _load()})
    return rows


def _warm(size: int) -> None:
    """Build the projectors of ``size`` in a worker (once per process)."""
    cfg = SimConfig(size=size)
    torch.set_num_threads(1)
    make_scanners(cfg)[0].project(torch.zeros(1, 1, size, size))


def on_workers(sizes: list[int], slices: int, workers: list[int], patients: int) -> list[dict]:
    import logging

    from distributed import Client, LocalCluster

    from artifactgsi.simulate import simulate_dataset

    rows = []
    for size in sizes:
        for n in workers:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                              dashboard_address=None, memory_limit=0,
                              scheduler_kwargs={"dashboard_address": ":0"},
                              silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
                client.run(_warm, size)
                cfg = SimConfig(patients=patients, slices=slices, size=size, clean_patients=0)
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    simulate_dataset(cfg, Path(tmp) / "raw", scheduler=cluster.scheduler_address,
                                     console=Console(quiet=True))
                    dt = time.perf_counter() - t0
            rows.append({"size": size, "workers": n, "patients": patients, "slices": slices,
                         "seconds": dt, "triplets_per_s": patients * slices / dt,
                         "load_1min": _load()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="*", default=None,
                    help="Dask worker counts to compare (one thread each)")
    ap.add_argument("--patients", type=int, default=4, help="patients per size (--workers)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    console = Console()
    if args.workers:
        rows = on_workers(args.sizes, args.slices, args.workers, args.patients)
        t = Table(title=f"ArtifactGSI-Sim on Dask workers ({args.patients} patients x "
                        f"{args.slices} slices per size)")
        for c in ("size px", "workers", "seconds", "triplets/s", "load (1 min)"):
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(str(r["size"]), str(r["workers"]), f"{r['seconds']:.1f}",
                      f"{r['triplets_per_s']:.2f}", r["load_1min"])
    else:
        rows = in_process(args.sizes, args.slices, args.threads)
        t = Table(title=f"ArtifactGSI-Sim throughput ({args.threads} CPU threads)")
        for c in ("size px", "views x channels", "projector build s", "hip", "fracture",
                  "spinal", "mean triplets/s", "cpu s/triplet", "peak RSS GB", "load (1 min)"):
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(str(r["size"]), f"{r['views']} x {r['channels']}", f"{r['build_s']:.1f}",
                      *(f"{x:.2f}" for x in r["rates"]), f"{r['mean']:.2f}",
                      f"{r['cpu_s_per_triplet']:.2f}", f"{r['peak_rss_gb']:.2f}",
                      r["load_1min"])
    console.print(t)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
