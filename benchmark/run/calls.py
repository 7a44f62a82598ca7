"""Calling a method: the device, its cache folder, ``reduce`` with the output checked and
rounded to the integer HU that are stored and scored."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch

from ..errors import MARBenchError
from ..method import MARInput, MARMethod, validate_output


class MethodRunError(MARBenchError, RuntimeError):
    """A method raised an exception in ``prepare`` or ``reduce`` (the message names it and
    the slices)."""


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available in this environment "
                         "(torch.cuda.is_available() is False); use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "method"


def default_out_dir(method: str, split: str) -> Path:
    """``results/<method>-<split>`` (method spec made filesystem-safe)."""
    return Path("results") / f"{safe_name(method)}-{safe_name(split)}"


def method_cache_dir(name: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "artifactgsi" / "methods" / safe_name(name)


def reduce_batch(mar: MARMethod, name: str, inp: MARInput,
            dev: torch.device) -> tuple[torch.Tensor, float]:
    """Run ``reduce`` on ``dev`` -> ((B, 1, H, W) float32 HU rounded to integers, on CPU, s).

    Runs under ``torch.no_grad()``; a method that optimises at test time wraps its work in
    ``torch.enable_grad()``.
    """
    batch = inp.to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = mar.reduce(batch)
    except (Exception, SystemExit) as e:  # a method's exit() must not end the run silently
        slices = ", ".join(inp.describe_slice(i) for i in range(inp.batch_size))
        raise MethodRunError(f"method {name!r}: reduce() raised {type(e).__name__} on "
                             f"{slices}: {e}") from e
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    img = validate_output(name, batch, out)
    # Integer HU, as the dataset stores HU and the predictions file holds them: scores are
    # computed from exactly what is written (round half to even, int16 range).
    return img.detach().cpu().round().clamp(-32768, 32767), dt
