"""Scale: serial against Dask workers for simulate, build and ``marbench run`` (same bytes?
how fast?), and the build's and the runner's peak memory at several dataset sizes.

Usage:
    python benchmarks/bench_scale.py workers [--patients 20 --slices 12 --size 128
                                              --clean 2 --workers 2 --method li]
    python benchmarks/bench_scale.py memory [--counts 4 16 --size 128 --slices 12]
    python benchmarks/bench_scale.py paper-slice --patients 3 --clean 1 --slices 4 --size 512

``workers``: the demo's dataset (20 implant + 2 clean patients, 12 slices, 128 px) made
serially and on a local Dask cluster of ``--workers`` processes: simulate, build (one fixed
secret) and ``marbench run`` (``--method``, LPIPS off to keep it short). Every file of the two
raw trees and the two builds is compared byte for byte, and the two results.json without the
fields that describe the run itself (created_utc, hardware, timing) plus every other output
file of the runs. Times are wall seconds including the cluster's start.

``memory``: for each patient count, simulate (on 2 workers), then build serially and score
(identity) serially, each in a fresh process that reports its own peak RSS: the streaming
build and runner hold a bounded number of patients, so the peak must not grow with the count.

``paper-slice``: a slice of the paper-size dataset (simulate, then build) on a local Dask
cluster of ``--workers`` processes: the wall time and the CPU seconds the workers spent (their
projector builds included), to check docs/scale.md's extrapolation against.

The root folder (``--root``, default a temporary one) keeps everything for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SECRET = b"bench-scale-secret"
PER_RUN = ("created_utc", "hardware", "timing")


def _quiet():
    return Console(quiet=True)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _same_tree(a: Path, b: Path, skip: tuple[str, ...] = ()) -> tuple[bool, int]:
    ta, tb = _tree(a), _tree(b)
    names = [n for n in ta if n not in skip]
    same = sorted(ta) == sorted(tb) and all(ta[n] == tb[n] for n in names)
    return same, len(ta)


def _results(run: Path) -> dict:
    d = json.loads((run / "results.json").read_text())
    for k in PER_RUN:
        d.pop(k)
    return d


def workers(args: argparse.Namespace, root: Path) -> list[dict]:
    from artifactgsi.build import build_dataset
    from artifactgsi.simulate import SimConfig, simulate_dataset
    from benchmark.distributed import run_distributed
    from benchmark.run import run_benchmark

    cfg = SimConfig(patients=args.patients, slices=args.slices, size=args.size,
                    clean_patients=args.clean)
    rows = []
    timings: dict[str, dict[int, float]] = {"simulate": {}, "build": {}, "run": {}}
    for n in (1, args.workers):
        t0 = time.perf_counter()
        simulate_dataset(cfg, root / f"raw-{n}", workers=n, console=_quiet())
        timings["simulate"][n] = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_dataset(root / f"raw-{n}", root / f"built-{n}", workers=n, secret=SECRET,
                      console=_quiet())
        timings["build"][n] = time.perf_counter() - t0
        t0 = time.perf_counter()
        kw = dict(out=root / f"run-{n}", lpips=None, verbose=False,
                  data_cache_dir=root / f"cache-{n}")
        # Both runs score the serial build (results.json records the folder's path).
        if n == 1:
            run_benchmark(args.method, root / "built-1", **kw)
        else:
            run_distributed(args.method, root / "built-1", workers=n, **kw)
        timings["run"][n] = time.perf_counter() - t0
    w = args.workers
    same_raw, n_raw = _same_tree(root / "raw-1", root / f"raw-{w}")
    same_built, n_built = _same_tree(root / "built-1", root / f"built-{w}")
    same_run, n_run = _same_tree(root / "run-1", root / f"run-{w}", skip=("results.json",))
    same_run = same_run and _results(root / "run-1") == _results(root / f"run-{w}")
    n_slices = (args.patients + args.clean) * args.slices
    scored = len(json.loads((root / "run-1" / "results.json").read_text())["per_slice"])
    for step, same, files, units in (("simulate", same_raw, n_raw, n_slices),
                                     ("build", same_built, n_built, n_slices),
                                     (f"run {args.method}", same_run, n_run, scored)):
        t = timings[step.split()[0]]
        rows.append({"step": step, "identical": same, "files": files,
                     "serial_s": t[1], "workers_s": t[w], "speedup": t[1] / t[w],
                     "serial_slices_per_s": units / t[1], "workers_slices_per_s": units / t[w]})
    return rows


def _peak(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                               "")}
    code += ("\nimport json, resource, time\n"
             "print('PEAK', json.dumps({'peak_gb': resource.getrusage(resource.RUSAGE_SELF)"
             ".ru_maxrss / 2**20, 'seconds': time.perf_counter() - T0}))")
    r = subprocess.run([sys.executable, "-c", "import time; T0 = time.perf_counter()\n" + code],
                       capture_output=True, text=True, env=env, check=True)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("PEAK ")][-1]
    return json.loads(line[5:])


def memory(args: argparse.Namespace, root: Path) -> list[dict]:
    from artifactgsi.simulate import SimConfig, simulate_dataset

    rows = []
    for n in args.counts:
        raw, built = root / f"raw-{n}", root / f"built-{n}"
        cfg = SimConfig(patients=n, slices=args.slices, size=args.size, clean_patients=0)
        simulate_dataset(cfg, raw, workers=2, console=_quiet())
        b = _peak(f"from artifactgsi.build import build_dataset\n"
                  f"from rich.console import Console\n"
                  f"build_dataset({str(raw)!r}, {str(built)!r}, secret={SECRET!r}, "
                  f"console=Console(quiet=True))")
        r = _peak(f"from benchmark.run import run_benchmark\n"
                  f"run_benchmark('identity', {str(built)!r}, split='train', "
                  f"out={str(root / f'run-{n}')!r}, lpips=None, verbose=False, figure=False, "
                  f"data_cache_dir={str(root / f'cache-{n}')!r})")
        size_mb = sum(p.stat().st_size for p in built.rglob("*.parquet")) / 2**20
        rows.append({"patients": n, "slices": n * args.slices, "built_mb": size_mb,
                     "build_peak_gb": b["peak_gb"], "build_s": b["seconds"],
                     "run_peak_gb": r["peak_gb"], "run_s": r["seconds"]})
    return rows


def _cpu_s() -> float:
    """This process's CPU seconds (user + system), for a worker to report."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def paper_slice(args: argparse.Namespace, root: Path) -> list[dict]:
    """Simulate and build a slice of the paper-size dataset on a local Dask cluster; wall
    time and the workers' CPU seconds of each step (projector builds included)."""
    import logging

    from distributed import Client, LocalCluster

    from artifactgsi.build import build_dataset
    from artifactgsi.simulate import SimConfig, simulate_dataset

    cfg = SimConfig(patients=args.patients, slices=args.slices, size=args.size,
                    clean_patients=args.clean)
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=0, silence_logs=logging.ERROR,
                      scheduler_kwargs={"dashboard_address": ":0"}) as c, Client(c) as client:
        for step in ("simulate", "build"):
            cpu0 = sum(client.run(_cpu_s).values())
            t0 = time.perf_counter()
            if step == "simulate":
                simulate_dataset(cfg, root / "raw", scheduler=c.scheduler_address,
                                 console=_quiet())
            else:
                build_dataset(root / "raw", root / "built", secret=SECRET,
                              scheduler=c.scheduler_address, console=_quiet())
            wall = time.perf_counter() - t0
            cpu = sum(client.run(_cpu_s).values()) - cpu0
            rows.append({"step": step, "size": args.size, "patients": args.patients,
                         "clean": args.clean, "slices": args.slices, "workers": args.workers,
                         "wall_s": wall, "worker_cpu_s": cpu,
                         "cpu_share": cpu / (wall * args.workers)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("workers", "memory", "paper-slice"))
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--clean", type=int, default=2)
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--method", default="li")
    ap.add_argument("--counts", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = None
    if args.root is None:
        tmp = tempfile.TemporaryDirectory()
        args.root = Path(tmp.name)
    args.root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    if args.what == "workers":
        rows = workers(args, args.root)
        t = Table(title=f"serial vs {args.workers} Dask workers: {args.patients} + {args.clean} "
                        f"patients x {args.slices} slices at {args.size} px (load {load:.1f})")
        for c in ("step", "identical", "files", "serial s", f"{args.workers} workers s",
                  "speed-up", "slices/s serial", f"slices/s {args.workers} workers"):
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(r["step"], "yes" if r["identical"] else "NO", str(r["files"]),
                      f"{r['serial_s']:.1f}", f"{r['workers_s']:.1f}", f"{r['speedup']:.2f}",
                      f"{r['serial_slices_per_s']:.2f}", f"{r['workers_slices_per_s']:.2f}")
    elif args.what == "paper-slice":
        rows = paper_slice(args, args.root)
        t = Table(title=f"{args.patients} + {args.clean} patients x {args.slices} slices at "
                        f"{args.size} px on {args.workers} Dask workers (load {load:.1f})")
        for c in ("step", "wall s", "worker CPU s", "CPU share per worker"):
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(r["step"], f"{r['wall_s']:.1f}", f"{r['worker_cpu_s']:.1f}",
                      f"{r['cpu_share']:.2f}")
    else:
        rows = memory(args, args.root)
        t = Table(title=f"peak RSS of build and run (serial) at {args.size} px, "
                        f"{args.slices} slices per patient (load {load:.1f})")
        for c in ("patients", "slices", "shards MB", "build peak GB", "build s",
                  "run peak GB", "run s"):
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(str(r["patients"]), str(r["slices"]), f"{r['built_mb']:.1f}",
                      f"{r['build_peak_gb']:.2f}", f"{r['build_s']:.1f}",
                      f"{r['run_peak_gb']:.2f}", f"{r['run_s']:.1f}")
    Console().print(t)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
