"""The GPU check: everything a few borrowed minutes on one GPU should tell, in one run.

Usage:
    python benchmarks/gpu_check.py [--out gpu-check] [--steps 200] [--budget-s 420]
    make gpu-check

On one CUDA GPU, in under 8 minutes (``--budget-s`` is shared out between the parts):

1. the ``gpu`` tests (``pytest -m gpu``): the projector, LI / NMAR and the runner on CUDA;
2. training-step time of each ``*-paper`` config, the paper's model at the paper's batch and
   resolution (512 px slices; OSCNet's 64 px patches of them) in bf16 autocast as the configs
   ask: LGA's VAE and alignment stages (``lga-paper``), OSCNet (``oscnet-paper``, the deep
   baseline), the DuDoDp diffusion prior (``dudodp-paper``) and the segmenter
   (``seg-paper``). Each is the family's own model and loss on a fixed synthetic batch on the
   GPU (random images in the models' units), with AdamW, so the number is the GPU's step
   time without data loading;
3. LGA inference at 512 px in bf16 (random weights: the speed does not depend on them).

It writes ``OUT/gpu_check.md`` (one table) and ``OUT/gpu_check.json``, and exits 1 if any
part failed. Without a GPU (or without torch) it says so in one line and exits 2 within
seconds, before anything else.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Exit status when there is no GPU to check (distinct from a failed check).
NO_GPU = 2


class NoGPU(RuntimeError):
    """No usable CUDA device (the message says why)."""


def require_gpu() -> str:
    """The CUDA device's name, or :class:`NoGPU` saying why there is none."""
    try:
        import torch
    except ImportError as e:
        raise NoGPU(f"torch is not importable by {sys.executable} ({e}); run `make setup` "
                    "first") from None
    if not torch.cuda.is_available():
        why = ("torch was built without CUDA" if torch.version.cuda is None
               else "torch.cuda.is_available() is False (no device, or no driver)")
        raise NoGPU(f"no CUDA GPU on this machine: {why}; run it where one is")
    return torch.cuda.get_device_name(0)


# ----------------------------------------------------------------------------- timing


@dataclass
class StepTiming:
    """Timed optimiser steps: ``steps`` in ``seconds`` after ``warmup`` untimed ones."""

    steps: int
    seconds: float
    warmup: int
    stopped_early: bool = False

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.seconds / self.steps if self.steps else math.nan


def time_steps(step: Callable[[], Any], steps: int, *, warmup: int = 5,
               sync: Callable[[], None] = lambda: None, time_limit_s: float | None = None
               ) -> StepTiming:
    """Run ``step()`` ``warmup`` times, then time up to ``steps`` calls (``sync()`` before
    each clock reading, e.g. ``torch.cuda.synchronize``). Stops early, after at least one
    timed step, once ``time_limit_s`` (counted from the first warm-up step) has passed."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_first = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        step()
        done += 1
        if time_limit_s is not None and time.perf_counter() - t_first > time_limit_s:
            break
    sync()
    return StepTiming(steps=done, seconds=time.perf_counter() - t0, warmup=warmup,
                      stopped_early=done < steps)


def optimiser_step(loss_fn: Callable[[], Any], params: list[Any], *, lr: float = 1e-4,
                   amp: str | None = None, device_type: str = "cuda") -> Callable[[], float]:
    """One AdamW step of ``loss_fn()`` (a scalar tensor) under ``amp`` autocast
    (``"bf16"``, ``"fp16"`` or None)."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def step() -> float:
        with torch.autocast(device_type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


# ----------------------------------------------------------------------------- the jobs


@dataclass
class Job:
    """A model's training step, ready to time: ``step``, the batch it uses and its config."""

    name: str
    config: str
    batch: int
    pixels: str
    amp: str | None
    params_m: float
    step: Callable[[], Any]
    setup: Callable[[], None] = lambda: None  # run just before the job is timed


def _params(module: Any) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def lga_jobs(config: Any, device: Any) -> list[Job]:
    """LGA's VAE stage and alignment stage (``baselines.lga.train``'s stage modules)."""
    import torch

    from baselines.lga.config import load_config
    from baselines.lga.model import LGAModel
    from baselines.lga.train import AlignStage, VAEStage

    cfg = load_config(config)
    name = config if isinstance(config, str) else "lga (dict)"
    s, b, d = cfg.image_size, cfg.batch_size, 2 * cfg.neighbour_slices + 1
    g = torch.Generator(device=device).manual_seed(0)

    def vol() -> torch.Tensor:
        return torch.rand(b, d, s, s, device=device, generator=g) * 2 - 1

    model = LGAModel(cfg).to(device)
    vae = VAEStage(model)
    batch = {"ordinary": vol(), "g": vol()}
    jobs = [Job("LGA VAE stage", name, b, f"{d} x {s}^2", cfg.mixed_precision,
                _params(model.vae), optimiser_step(lambda: vae(batch)["loss"],
                                                   list(vae.parameters()), lr=cfg.lr,
                                                   amp=cfg.mixed_precision,
                                                   device_type=device.type))]
    def freeze() -> None:  # as the trainer does: only F learns in this stage
        model.requires_grad_(False)
        model.align.requires_grad_(True)

    align = AlignStage(model)
    abatch = {"ordinary": vol(), "gsi": vol(),
              "mask": (torch.rand(b, 1, s, s, device=device, generator=g) > 0.99).float(),
              "implant": torch.randint(0, 4, (b,), device=device, generator=g)}
    jobs.append(Job("LGA alignment stage", name, b, f"{d} x {s}^2", cfg.mixed_precision,
                    _params(model.align),
                    optimiser_step(lambda: align(abatch)["loss"], list(model.align.parameters()),
                                   lr=cfg.lr, amp=cfg.mixed_precision, device_type=device.type),
                    setup=freeze))
    return jobs


def _hu_batch(b: int, p: int, device: Any, g: Any) -> dict[str, Any]:
    import torch

    hu = torch.rand(b, 1, p, p, device=device, generator=g) * 2000 - 1000
    return {"ordinary": hu + 100, "target": hu, "li": hu + 10,
            "mask": torch.rand(b, 1, p, p, device=device, generator=g) > 0.98}


def oscnet_jobs(config: Any, device: Any) -> list[Job]:
    """OSCNet (``baselines.dictnet``): its ``losses`` on a batch of patches, as trained."""
    import torch

    from baselines.dictnet.model import build_dictnet, load_dictnet_config

    cfg = load_dictnet_config(config)
    model = build_dictnet(cfg).to(device)
    p = cfg.patch_size or 512
    g = torch.Generator(device=device).manual_seed(0)
    batch = model.to_units(_hu_batch(cfg.batch_size, p, device, g))
    amp = getattr(cfg, "mixed_precision", None)
    amp = None if amp in (None, "no") else amp
    return [Job(cfg.variant, config if isinstance(config, str) else "dictnet (dict)",
                cfg.batch_size, f"{p}^2", amp, _params(model),
                optimiser_step(lambda: model(batch)["loss"], list(model.parameters()),
                               lr=cfg.lr, amp=amp, device_type=device.type))]


def dudodp_jobs(config: Any, device: Any) -> list[Job]:
    """The DuDoDp diffusion prior (``baselines.dudodp.prior``): x0-prediction loss."""
    import torch

    from baselines.dudodp.config import load_dudodp_config
    from baselines.dudodp.prior import DiffusionPrior

    cfg = load_dudodp_config(config)
    model = DiffusionPrior(cfg).to(device)
    s, b = cfg.image_size, cfg.batch_size
    g = torch.Generator(device=device).manual_seed(0)
    batch = {"x0": torch.rand(b, 1, s, s, device=device, generator=g) * 2 - 1,
             "t": torch.randint(0, cfg.train_timesteps, (b,), device=device, generator=g),
             "noise": torch.randn(b, 1, s, s, device=device, generator=g)}
    amp = None if cfg.mixed_precision in (None, "no") else cfg.mixed_precision
    return [Job("DuDoDp prior", config if isinstance(config, str) else "dudodp (dict)", b,
                f"{s}^2", amp, _params(model),
                optimiser_step(lambda: model(batch)["loss"], list(model.parameters()),
                               lr=cfg.lr, amp=amp, device_type=device.type))]


def seg_jobs(config: Any, device: Any) -> list[Job]:
    """The segmenter (``benchmark.segmentation``): smp U-Net, Dice + cross-entropy, as its
    trainer computes them."""
    import torch

    from benchmark.segmentation.model import Segmenter, load_config
    from benchmark.segmentation.training import _dice_ce

    cfg, _ = load_config(config)
    seg = Segmenter(cfg).to(device)
    loss = _dice_ce(cfg)
    s, b = cfg.image_size, cfg.batch_size
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(b, 1, s, s, device=device, generator=g)
    y = torch.randint(0, len(cfg.classes), (b, s, s), device=device, generator=g)
    amp = None if cfg.mixed_precision in (None, "no") else cfg.mixed_precision
    return [Job("segmenter", config if isinstance(config, str) else "seg (dict)", b, f"{s}^2",
                amp, _params(seg),
                optimiser_step(lambda: loss(seg.net(x), y)["loss"], list(seg.parameters()),
                               lr=cfg.lr, amp=amp, device_type=device.type))]


#: (family, the paper config it times, the job builder).
PAPER_JOBS: tuple[tuple[str, Any, Callable[[Any, Any], list[Job]]], ...] = (
    ("lga", "lga-paper", lga_jobs),
    ("oscnet", "oscnet-paper", oscnet_jobs),
    ("dudodp", "dudodp-paper", dudodp_jobs),
    ("segmenter", "seg-paper", seg_jobs),
)


def lga_inference(config: Any, device: Any, slices: int = 16, batch: int = 4,
                  size: int = 512) -> dict[str, Any]:
    """LGA's restore (``LGAModel.restore``) on ``slices`` random HU slices, bf16 autocast."""
    import torch

    from baselines.lga.config import load_config
    from baselines.lga.model import LGAModel

    cfg = load_config(config)
    model = LGAModel(cfg).to(device).eval()
    d = 2 * cfg.neighbour_slices + 1
    g = torch.Generator(device=device).manual_seed(0)
    vol = torch.rand(batch, d, size, size, device=device, generator=g) * 2000 - 1000
    mask = torch.rand(batch, 1, size, size, device=device, generator=g) > 0.99
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            model.restore(vol, mask)

    t = time_steps(run, max(1, slices // batch), warmup=1, sync=sync)
    return {"slices": t.steps * batch, "seconds": t.seconds,
            "ms_per_slice": 1000.0 * t.seconds / max(t.steps * batch, 1)}


# ----------------------------------------------------------------------------- the table


@dataclass
class Row:
    """One line of the table."""

    check: str
    config: str = ""
    batch: str = ""
    result: str = ""
    ms: float | None = None
    per_s: float | None = None
    peak_gb: float | None = None
    ok: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _num(v: float | None, digits: int = 1) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def write_table(rows: list[Row], out: Path, header: dict[str, Any]) -> tuple[Path, Path]:
    """``OUT/gpu_check.md`` (a title, the header lines, one markdown table) and
    ``OUT/gpu_check.json`` (header + rows), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# GPU check", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| check | config | batch | result | ms | per s | peak GPU GB | status |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = "ok" if r.ok else "FAILED"
        if r.note:
            status += f": {r.note}"
        cells = [r.check, r.config, r.batch, r.result, _num(r.ms), _num(r.per_s, 2),
                 _num(r.peak_gb, 2), status]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    md, js = out / "gpu_check.md", out / "gpu_check.json"
    for path, text in ((md, "\n".join(lines) + "\n"),
                       (js, json.dumps({"header": header, "rows": [asdict(r) for r in rows]},
                                       indent=1, default=str) + "\n")):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return md, js


# ----------------------------------------------------------------------------- the run


def run_gpu_tests(timeout_s: float) -> Row:
    """``pytest -m gpu`` in a subprocess; the row carries its summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           str(REPO / "tests")]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Row("pytest -m gpu", ok=False, note=f"timed out after {timeout_s:.0f} s")
    tail = [ln for ln in r.stdout.strip().splitlines() if ln.strip()]
    summary = tail[-1].strip("= ") if tail else "(no output)"
    ok = r.returncode == 0 and "passed" in summary
    note = ""
    if not ok:
        text = (r.stdout + r.stderr).strip().splitlines()
        note = text[-1] if text else f"exit {r.returncode}"
    return Row("pytest -m gpu", result=summary, ms=1000.0 * (time.perf_counter() - t0),
               ok=ok, note=note)


def run_jobs(steps: int, budget_s: float, device: Any, jobs: Any = PAPER_JOBS,
             log: Callable[[str], None] = print, warmup: int = 3) -> list[Row]:
    """Time every job of ``jobs`` (the paper configs by default) within ``budget_s``."""
    import torch

    rows: list[Row] = []
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_end = time.perf_counter() + budget_s
    for i, (family, config, build) in enumerate(jobs):
        left = t_end - time.perf_counter()
        share = left / (len(jobs) - i)
        if share < 5:
            rows.append(Row(f"{family} training", str(config), ok=False,
                            note="no time left in the budget"))
            continue
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            built = build(config, device)
            per_job = share / len(built)
            for job in built:
                job.setup()
                t = time_steps(job.step, steps, warmup=warmup, sync=sync, time_limit_s=per_job)
                peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
                rows.append(Row(f"{job.name} training", job.config, f"{job.batch} x {job.pixels}",
                                f"{t.steps} steps ({job.amp or 'fp32'}, "
                                f"{job.params_m:.1f} M params)", t.ms_per_step,
                                1000.0 * job.batch / t.ms_per_step, peak,
                                note="time budget reached" if t.stopped_early else ""))
                log(f"gpu-check: {job.name}: {t.ms_per_step:.1f} ms/step over {t.steps} steps")
            del built
        except Exception as e:  # noqa: BLE001 - one family's failure must not hide the others
            rows.append(Row(f"{family} training", str(config), ok=False,
                            note=f"{type(e).__name__}: {e}"[:300]))
            log(f"gpu-check: {family} failed: {type(e).__name__}: {e}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check"))
    ap.add_argument("--steps", type=int, default=200, help="timed steps per model")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="seconds for everything (tests, training steps, inference)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    args = ap.parse_args(argv)
    try:
        gpu = require_gpu()
    except NoGPU as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return NO_GPU
    import torch

    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    device = torch.device("cuda", 0)
    header = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": args.steps,
              "budget_s": args.budget_s}
    rows: list[Row] = []
    if not args.skip_tests:
        rows.append(run_gpu_tests(timeout_s=0.3 * args.budget_s))
        print(f"gpu-check: gpu tests: {rows[-1].result or rows[-1].note}")
    left = args.budget_s - (time.perf_counter() - t0)
    rows += run_jobs(args.steps, max(0.0, 0.85 * left), device)
    try:
        torch.cuda.reset_peak_memory_stats()
        inf = lga_inference("lga-paper", device)
        rows.append(Row("LGA inference 512 px", "lga-paper", "4 x 5 x 512^2",
                        f"{inf['slices']} slices (bf16)", inf["ms_per_slice"],
                        1000.0 / inf["ms_per_slice"],
                        torch.cuda.max_memory_allocated() / 2**30))
    except Exception as e:  # noqa: BLE001
        rows.append(Row("LGA inference 512 px", "lga-paper", ok=False,
                        note=f"{type(e).__name__}: {e}"[:300]))
    header["seconds"] = round(time.perf_counter() - t0, 1)
    md, js = write_table(rows, args.out, header)
    print(md.read_text())
    print(f"gpu-check: wrote {md} and {js}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
