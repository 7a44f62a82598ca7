"""Where the time of ``marbench run`` goes on CPU at the dataset's native 512 x 512: the
method (identity, ~0), scoring (PSNR / SSIM / LPIPS / clinical, three comparisons on
simulated data), and the runner's own work (reading Parquet, writing int16 predictions,
per-slice CSV, results.json, figure).

The data set is the synthetic one of ``tests/benchmark/test_run.py`` (body, bone, metal,
streaks), 2 patients x ``--slices`` slices, patient P000 with an ideal image.

Usage: python benchmarks/bench_run.py [--slices 4] [--size 512] [--threads 1] [--no-lpips]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table


def _fixture_writer():
    path = Path(__file__).resolve().parents[1] / "tests" / "benchmark" / "test_run.py"
    spec = importlib.util.spec_from_file_location("marbench_test_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.write_tiny_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=4, help="slices per patient (2 patients)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--no-lpips", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import datasets

    from benchmark.run import run_benchmark

    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        tmp_path = Path(tmp)
        datasets.config.HF_DATASETS_CACHE = str(tmp_path / "cache")
        t0 = time.perf_counter()
        folder = _fixture_writer()(tmp_path / "data", size=args.size, slices=args.slices)
        build_s = time.perf_counter() - t0
        rows = []
        for clinical in (False, True):
            t0 = time.perf_counter()
            res = run_benchmark("identity", str(folder), "test", tmp_path / f"out{clinical}",
                                batch_size=args.batch, lpips=None if args.no_lpips else "auto",
                                clinical=clinical, verbose=False)
            wall = time.perf_counter() - t0
            n = res.dataset.n_slices_scored
            t = res.timing
            other = t.total_s - t.score_s - t.reduce_s - t.prepare_s
            lp = "lpips" if res.protocol.lpips_weights_fingerprint else "no lpips"
            rows.append((f"psnr+ssim ({lp})" + (" + clinical" if clinical else ""), n,
                         1000 * t.score_s / n, 1000 * other / n, wall))
    table = Table(title=f"marbench run, identity, {args.size}x{args.size}, "
                        f"{args.threads} thread(s), batch {args.batch} "
                        f"(fixture written in {build_s:.1f} s)")
    for c in ("metrics", "slices", "scoring ms/slice", "runner I/O ms/slice", "wall s"):
        table.add_column(c, justify="right" if c != "metrics" else "left")
    for name, n, score_ms, other_ms, wall in rows:
        table.add_row(name, str(n), f"{score_ms:.0f}", f"{other_ms:.0f}", f"{wall:.1f}")
    Console().print(table)
    print("scoring ms/slice covers all comparisons of a slice (3 on P000, 1 on P001);"
          " runner I/O includes data loading, predictions, CSV, JSON and the figure.")


if __name__ == "__main__":
    main()
