"""Dataset builder benchmark: build throughput (ordinary slices per second, including DICOM
reading, slice matching and registration), Parquet bytes per slice, and ``load_dataset`` read
throughput, at several image sizes and worker counts. Prints a table.

    .venv/bin/python benchmarks/bench_build.py            # 256 and 512 px, 1 and 2 workers
    .venv/bin/python benchmarks/bench_build.py --sizes 128 --workers 1 --patients 2
    .venv/bin/python benchmarks/bench_build.py --raw data/raw   # an existing raw tree

Without ``--raw`` the raw trees are synthetic (:mod:`artifactgsi.synthetic_raw`): analytic
phantoms with noise, streaks, a known motion and z shift, generated before timing starts.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _synthetic_raw(folder: Path, size: int, patients: int, slices: int) -> None:
    from artifactgsi.synthetic_raw import SyntheticPatient, write_synthetic_raw

    kinds = ("hip_prosthesis", "fracture_fixation", "spinal_fixation")
    rng = np.random.default_rng(0)
    pats = [SyntheticPatient(f"B{i:03d}", kinds[i % 3], "hip",
                             pose=(float(rng.uniform(-2, 2)), float(rng.uniform(-5, 5)),
                                   float(rng.uniform(-5, 5))),
                             z_shift_slices=int(rng.integers(-1, 2)),
                             z_motion_mm=float(rng.uniform(-1, 1)))
            for i in range(patients)]
    pats.append(SyntheticPatient("B999", "none", "pelvis"))
    write_synthetic_raw(folder, pats, size=size, slices=slices)


def _read_throughput(out: Path, cache: Path) -> tuple[float, float]:
    """(rows/s of the first load_dataset incl. Arrow conversion, rows/s iterating as numpy)."""
    from datasets import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(str(out), "pairs", split="train", cache_dir=str(cache))
    t1 = time.perf_counter()
    x = ds.with_format("numpy", dtype=None)
    total = 0
    for row in x:
        total += int(row["ordinary"].dtype == np.int16)
    t2 = time.perf_counter()
    assert total == len(ds)
    return len(ds) / (t1 - t0), len(ds) / (t2 - t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--patients", type=int, default=4, help="implant patients (synthetic)")
    ap.add_argument("--slices", type=int, default=8, help="slices per series (synthetic)")
    ap.add_argument("--raw", type=Path, default=None, help="benchmark this raw tree instead")
    args = ap.parse_args()

    import datasets
    from rich.console import Console
    from rich.table import Table

    from artifactgsi.build import build_dataset

    datasets.disable_progress_bars()
    quiet = Console(quiet=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        tmp = Path(tmp)
        for size in ([None] if args.raw else args.sizes):
            raw = args.raw
            if raw is None:
                raw = tmp / f"raw{size}"
                _synthetic_raw(raw, size, args.patients, args.slices)
            for workers in args.workers:
                out = tmp / f"out{size}-{workers}"
                t0 = time.perf_counter()
                report = build_dataset(raw, out, workers=workers, secret=b"bench",
                                       console=quiet)
                wall = time.perf_counter() - t0
                n_pairs = sum(report.rows.get("pairs", {}).values())
                pair_bytes = sum(e["bytes"] for e in report.files
                                 if e["path"].startswith("pairs/"))
                load_rate, iter_rate = _read_throughput(out, tmp / f"cache{size}-{workers}")
                reg = report.registration
                rows.append((str(size or "raw"), workers, report.slices_per_s, wall,
                             pair_bytes / max(1, n_pairs), load_rate, iter_rate,
                             reg["registration_ncc"]["mean"], reg["matched_slices"]))
                shutil.rmtree(out)
    table = Table(title="artifactgsi build (slices/s include DICOM read, Eq. 1 matching, "
                        "Eq. 2 registration, Parquet writing)")
    for col in ("size px", "workers", "build slices/s", "wall s", "pairs Parquet kB/slice",
                "load rows/s", "iterate rows/s", "mean reg. NCC", "pairs"):
        table.add_column(col, justify="right")
    for size, workers, rate, wall, bps, load_rate, iter_rate, ncc, n in rows:
        table.add_row(size, str(workers), f"{rate:.2f}", f"{wall:.1f}", f"{bps / 1e3:.1f}",
                      f"{load_rate:.0f}", f"{iter_rate:.0f}", f"{ncc:.3f}", str(n))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
