"""Segmenter benchmarks on CPU.

1. Inference throughput: slices per second of the downstream segmenter at 512 x 512 (the
   scoring grid of real data), for the ``seg-cpu`` and ``seg-paper`` architectures (random
   weights: speed does not depend on them). Procedural CT-like slices from
   ``bench_metrics.make_slices``.
2. ``--compare-encoders DATA``: trains the ``seg-cpu`` recipe with several smp encoders for the
   same number of steps on a built dataset and reports seconds per step and the validation
   mIoU (held-out training patients), the measurement behind ``seg-cpu``'s encoder.

Usage::

    python benchmarks/bench_segmentation.py [--slices 8] [--threads 2]
    python benchmarks/bench_segmentation.py --compare-encoders data/built --steps 200 \
        [--encoders resnet18 efficientnet-b0 mobilenet_v2] [--out data/segmentation/encoders]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import make_slices  # noqa: E402

from benchmark.segmentation import Segmenter, load_config, train  # noqa: E402


def bench_inference(n: int, batch: int, console: Console) -> None:
    imgs = make_slices(n, 512)[0]
    t = Table(title=f"segmenter inference on CPU, 512 x 512 input, {torch.get_num_threads()} "
                    "thread(s)")
    for col in ("config", "encoder", "network size", "params (M)", "slices/s"):
        t.add_column(col, justify="right")
    for name in ("seg-cpu", "seg-paper"):
        cfg, _ = load_config(name)
        seg = Segmenter(cfg).eval()
        seg.predict(imgs[:1])  # warm-up (allocator, kernels)
        t0 = time.perf_counter()
        seg.predict(imgs, batch_size=batch)
        dt = time.perf_counter() - t0
        t.add_row(name, cfg.encoder, f"{cfg.image_size} px",
                  f"{sum(p.numel() for p in seg.parameters()) / 1e6:.1f}", f"{n / dt:.2f}")
    console.print(t)


def compare_encoders(data: str, encoders: list[str], steps: int, out: Path | None,
                     console: Console) -> None:
    t = Table(title=f"seg-cpu recipe, {steps} steps per encoder, "
                    f"{torch.get_num_threads()} thread(s)")
    for col in ("encoder", "params (M)", "s / step", "val mIoU", "metal", "L pelvis",
                "R pelvis", "L femur", "R femur"):
        t.add_column(col, justify="right")
    rows = []
    base = out or Path(tempfile.mkdtemp(prefix="seg-encoders-"))
    for enc in encoders:
        run = base / enc
        t0 = time.perf_counter()
        model_dir = train("seg-cpu", data, run, resume=(run / "config.json").is_file(),
                          overrides={"encoder": enc, "max_steps": steps,
                                     "val_every": 1000})
        wall = time.perf_counter() - t0
        meta = json.loads((model_dir / "config.json").read_text())
        seg = Segmenter.from_pretrained(model_dir)
        v = meta["validation"]
        row = {"encoder": enc, "params_m": sum(p.numel() for p in seg.parameters()) / 1e6,
               "s_per_step": meta["train_seconds"] / steps, "wall_s": wall, **v}
        rows.append(row)
        t.add_row(enc, f"{row['params_m']:.1f}", f"{row['s_per_step']:.2f}",
                  f"{v['miou']:.4f}", *(f"{v[k]:.4f}" for k in
                                        ("iou.metal", "iou.l_pelvis", "iou.r_pelvis",
                                         "iou.l_femur", "iou.r_femur")))
    console.print(t)
    (base / "encoders.json").write_text(json.dumps(rows, indent=1))
    console.print(f"runs and encoders.json in {base}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare-encoders", metavar="DATA", default=None)
    p.add_argument("--encoders", nargs="+",
                   default=["resnet18", "resnet34", "efficientnet-b0", "mobilenet_v2"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    console = Console()
    if a.compare_encoders:
        compare_encoders(a.compare_encoders, a.encoders, a.steps, a.out, console)
    else:
        bench_inference(a.slices, a.batch, console)


if __name__ == "__main__":
    main()
