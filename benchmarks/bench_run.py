"""What scoring one method costs, by metric, against its floor.

For each image size, a small dataset with ideal images and labels (the hand-made fixture of
``artifactgsi.testing.write_tiny_pairs``: 2 patients x ``--slices`` slices, every slice with an
ideal image) is scored for the identity method with every metric (PSNR, SSIM, LPIPS, clinical,
the downstream segmenter), three ways:

- ``uncached``: no reference cache (everything about GSI and the ideal image is computed);
- ``cold``: into an empty reference cache (computed once and stored);
- ``warm``: a second method's run on the same dataset revision (the references come from the
  cache): what every method after the first pays, and what ``rescore`` pays.

Seconds per slice are given per computation (the image metrics, the clinical metrics, the
segmenter) and in all. The **floor** is the work no cache can remove: one LPIPS backbone
forward and one segmenter forward of the method's output per slice (the identity method itself
costs nothing). ``warm / floor`` is the ratio the benchmark is held to (at most 1.5).

Run with code that predates the reference cache (``run_benchmark`` without
``reference_cache``), it measures the uncached path only: that is how the "before" column of
docs/protocol.md was measured.

On a shared machine the speed drifts by 10-30 % over minutes, so each run is paired with the
floor measured right before and right after it, in the same process, and its ratio is taken
to their mean; the warm run is repeated ``--repeat`` times and the repeat with the median
ratio is reported.

Like the command lines, this script gives OpenMP its settings before torch loads
(``artifactgsi.openmp``).

Usage: python benchmarks/bench_run.py [--sizes 128 256 512] [--slices 8] [--threads 2]
       [--repeat 5] [--segmenter weights/seg-cpu-demo] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from artifactgsi.openmp import apply_openmp_defaults

# As the command lines do, before torch loads OpenMP: torch's threads stop spinning soon after
# each operation, so the NumPy work of scoring has the cores (artifactgsi.openmp).
apply_openmp_defaults()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _timed(store: dict[str, float], key: str, fn):  # type: ignore[no-untyped-def]
    def wrapper(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            store[key] += time.perf_counter() - t0
    return wrapper


def _instrument(store: dict[str, float]):  # type: ignore[no-untyped-def]
    """Time each metric computation and the segmenter, in this code version's terms; returns
    a function that undoes it."""
    import importlib

    undo = []

    def patch(module, attr: str, key: str) -> None:  # type: ignore[no-untyped-def]
        orig = getattr(module, attr)
        undo.append((module, attr, orig))
        setattr(module, attr, _timed(store, key, orig))

    try:  # the registry-driven scorer: one entry per declared computation
        compute = importlib.import_module("benchmark.metrics.compute")
        orig = compute.resolve_compute
        undo.append((compute, "resolve_compute", orig))

        def resolve(spec):  # type: ignore[no-untyped-def]
            return _timed(store, str(spec.compute).rpartition(":")[2], orig(spec))
        compute.resolve_compute = resolve
    except ImportError:  # older code: the two metric families are module functions
        metrics = importlib.import_module("benchmark.metrics")
        patch(metrics, "image_metrics", "score_image")
        patch(metrics, "clinical_metrics", "score_clinical")
    try:
        patch(importlib.import_module("benchmark.run.runner"), "segment_batch", "segmenter")
    except ImportError:  # older code: one module
        patch(importlib.import_module("benchmark.run"), "_segment_batch", "segmenter")

    def restore() -> None:
        for module, attr, orig in reversed(undo):
            setattr(module, attr, orig)
    return restore


class _Floor:
    """Seconds per slice of one LPIPS forward (at the protocol's evaluation size) and one
    segmenter forward (on the image's own grid) of each test image, in batches of 4 as
    ``marbench run`` scores them."""

    def __init__(self, folder: Path, segmenter: str | None) -> None:
        import datasets

        from benchmark.metrics import LPIPSMetric

        ds = datasets.load_dataset("parquet",
                                   data_files=str(folder / "pairs" / "test-*.parquet"),
                                   split="train").with_format("numpy", dtype=None)
        # ds[:] gives the whole column as one array (by column name: a lazy Column)
        self.x = torch.from_numpy(np.asarray(ds[:]["ordinary"], dtype=np.float32))[:, None]
        self.lpips = LPIPSMetric()
        self.seg = None
        if segmenter:
            from benchmark.segmentation import load_segmenter

            self.seg = load_segmenter(segmenter).eval()
        self.measure()  # warm-up

    def measure(self) -> dict[str, float]:
        from benchmark.metrics import resample_hu
        from benchmark.metrics.protocol import MARBENCH_V1, hu_to_unit

        p, x = MARBENCH_V1, self.x
        t0 = time.perf_counter()
        for i in range(0, len(x), 4):
            self.lpips.features(hu_to_unit(resample_hu(x[i:i + 4], p.eval_size), p.hu_min,
                                           p.hu_max))
        t1 = time.perf_counter()
        if self.seg is not None:
            with torch.no_grad():
                for i in range(0, len(x), 4):
                    self.seg.predict(x[i:i + 4])
        t2 = time.perf_counter()
        return {"floor_lpips_s_per_slice": (t1 - t0) / len(x),
                "floor_segmenter_s_per_slice": (t2 - t1) / len(x),
                "floor_s_per_slice": (t2 - t0) / len(x)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--slices", type=int, default=8, help="slices per patient (2 patients)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5,
                    help="warm runs, each with its floor; the median ratio is reported")
    ap.add_argument("--segmenter", default="weights/seg-cpu-demo")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import datasets

    from artifactgsi.testing import write_tiny_pairs
    from benchmark.run import run_benchmark

    has_cache = importlib.util.find_spec("benchmark.refcache") is not None
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
            tmp_path = Path(tmp)
            datasets.config.HF_DATASETS_CACHE = str(tmp_path / "hf")
            folder = write_tiny_pairs(tmp_path / "data", size=size, slices=args.slices,
                                      ideal=True)
            floor = _Floor(folder, args.segmenter)
            modes = [("uncached", None)] + ([("cold", tmp_path / "cache")]
                                            + [("warm", tmp_path / "cache")] * args.repeat
                                            if has_cache else [])
            warm = []
            for k, (mode, cache) in enumerate(modes):
                store: dict[str, float] = defaultdict(float)
                restore = _instrument(store)
                kw = {"reference_cache": cache} if has_cache else {}
                before = floor.measure()
                t0 = time.perf_counter()
                try:
                    r = run_benchmark("identity", str(folder), out=tmp_path / f"out-{k}",
                                      verbose=False, segmenter=args.segmenter, figure=False,
                                      **kw)
                finally:
                    restore()
                wall = time.perf_counter() - t0
                n = r.dataset.n_slices_scored
                row = {"size": size, "mode": mode, "slices": n,
                       "score_s_per_slice": r.timing.score_s / n, "wall_s_per_slice": wall / n,
                       **{f"{k}_s_per_slice": v / n for k, v in sorted(store.items())}}
                after = floor.measure()  # paired: the mean of the floors before and after
                row.update({k: (before[k] + after[k]) / 2 for k in after})
                row["ratio_to_floor"] = row["score_s_per_slice"] / row["floor_s_per_slice"]
                if mode == "warm":
                    warm.append(row)
                else:
                    rows.append(row)
            if warm:
                warm.sort(key=lambda r: r["ratio_to_floor"])
                median = dict(warm[len(warm) // 2])
                median["ratios"] = [round(r["ratio_to_floor"], 3) for r in warm]
                rows.append(median)
    # One column per instrumented computation, named as this code version names them.
    fixed = {"size", "mode", "slices", "score_s_per_slice", "wall_s_per_slice",
             "floor_s_per_slice", "floor_lpips_s_per_slice", "floor_segmenter_s_per_slice",
             "ratio_to_floor", "ratios"}
    parts = sorted({k for row in rows for k in row} - fixed)
    keys = ["size", "mode", "slices", *parts, "score_s_per_slice", "floor_lpips_s_per_slice",
            "floor_segmenter_s_per_slice", "floor_s_per_slice", "ratio_to_floor"]
    head = ["px", "mode", "slices", *(k.removesuffix("_s_per_slice") + " s/slice" for k in parts),
            "scoring s/slice", "floor: LPIPS", "floor: segmenter", "floor s/slice",
            "scoring / floor"]
    import os

    print(f"marbench run, identity, every metric, {args.threads} thread(s), "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k, float("nan"))
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        if "ratios" in row:
            print(f"{row['size']} px warm: ratio of each repeat {row['ratios']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
