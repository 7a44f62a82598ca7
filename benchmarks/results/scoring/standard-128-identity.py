"""Scoring against its floor on real data: the standard preset's test split (164 slices at
128 px) of a `make demo` build, identity, every metric; one cold run into an empty cache,
then warm runs (5 unless given), each paired with the mean of the floors measured right
before and right after it (see benchmarks/bench_run.py).

Run from the repository root after `make demo`:
    python benchmarks/results/scoring/standard-128-identity.py [REPEATS]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from artifactgsi.openmp import apply_openmp_defaults

apply_openmp_defaults()  # as the command lines do, before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, "benchmarks")


def main() -> None:
    torch.set_num_threads(2)
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    data = Path("data/built")
    tmp = Path(tempfile.mkdtemp(prefix="marbench-scoring-"))
    try:
        out = _measure(data, tmp, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))
    Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")


def _measure(data: Path, tmp: Path, repeats: int) -> dict:
    """One cold run into the empty cache ``tmp/cache``, then ``repeats`` warm runs."""
    from bench_run import _Floor

    from benchmark.run import run_benchmark

    kw = {"verbose": False, "segmenter": "weights/seg-cpu-demo", "figure": False,
          "reference_cache": tmp / "cache", "save_predictions": False}
    cold = run_benchmark("identity", str(data), out=tmp / "cold", **kw)
    floor = _Floor(data, "weights/seg-cpu-demo")
    rows = []
    for k in range(repeats):
        before = floor.measure()
        r = run_benchmark("identity", str(data), out=tmp / f"warm{k}", **kw)
        n = r.dataset.n_slices_scored
        after = floor.measure()
        f = {m: (before[m] + after[m]) / 2 for m in after}
        rows.append({"slices": n, "score_s_per_slice": r.timing.score_s / n, **f,
                     "ratio_to_floor": r.timing.score_s / n / f["floor_s_per_slice"]})
    n = cold.dataset.n_slices_scored
    ratios = sorted(r["ratio_to_floor"] for r in rows)
    return {"dataset": "standard preset, 128 px, test split (make demo's build)",
            "method": "identity", "cold_score_s_per_slice": cold.timing.score_s / n,
            "warm": rows, "median_ratio_to_floor": statistics.median(ratios),
            "range_ratio_to_floor": [ratios[0], ratios[-1]]}


if __name__ == "__main__":
    main()
