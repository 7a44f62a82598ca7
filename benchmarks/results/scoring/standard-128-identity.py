"""Scoring against its floor on real data: the standard preset's test split (164 slices at
128 px) of a `make demo` build, identity, every metric; one cold run, then five warm runs,
each paired with the mean of the floors measured right before and right after it (see
benchmarks/bench_run.py).

Run from the repository root after `make demo`:
    python benchmarks/results/scoring/standard-128-identity.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from artifactgsi.openmp import apply_openmp_defaults

apply_openmp_defaults()  # as the command lines do, before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, "benchmarks")


def main() -> None:
    from bench_run import _Floor

    from benchmark.run import run_benchmark

    torch.set_num_threads(2)
    data = Path("data/built")
    kw = {"verbose": False, "segmenter": "weights/seg-cpu-demo", "figure": False,
          "reference_cache": Path("/tmp/marbench-scoring-cache"), "save_predictions": False}
    cold = run_benchmark("identity", str(data), out=Path("/tmp/marbench-scoring/cold"), **kw)
    floor = _Floor(data, "weights/seg-cpu-demo")
    rows = []
    for k in range(5):
        before = floor.measure()
        r = run_benchmark("identity", str(data), out=Path(f"/tmp/marbench-scoring/warm{k}"),
                          **kw)
        n = r.dataset.n_slices_scored
        after = floor.measure()
        f = {k: (before[k] + after[k]) / 2 for k in after}
        rows.append({"slices": n, "score_s_per_slice": r.timing.score_s / n, **f,
                     "ratio_to_floor": r.timing.score_s / n / f["floor_s_per_slice"]})
    n = cold.dataset.n_slices_scored
    out = {"dataset": "standard preset, 128 px, test split (make demo's build)",
           "method": "identity", "cold_score_s_per_slice": cold.timing.score_s / n,
           "warm": rows,
           "median_ratio_to_floor": sorted(r["ratio_to_floor"] for r in rows)[len(rows) // 2]}
    print(json.dumps(out, indent=1))
    Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
