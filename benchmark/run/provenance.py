"""Provenance of a run: the code (package version, git commit) and the hardware."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

from ..results import (
    CodeRecord,
    HardwareRecord,
)


def code_record() -> CodeRecord:
    """Package version and, for a git checkout, its commit and whether it has edits."""
    try:
        version = importlib.metadata.version("artifactgsi")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    root = Path(__file__).resolve().parents[2]
    commit: str | None = None
    dirty: bool | None = None
    if (root / ".git").exists():
        # --no-optional-locks: never take index.lock (another git process may be running).
        git = ["git", "--no-optional-locks", "-C", str(root)]
        try:
            r = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                               timeout=10)
            if r.returncode == 0:
                commit = r.stdout.strip() or None
                s = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=30)
                dirty = bool(s.stdout.strip()) if s.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            pass
    return CodeRecord(package="artifactgsi", version=version, git_commit=commit,
                      git_dirty=dirty)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware_record(device: torch.device) -> HardwareRecord:
    """CPU, torch and (for CUDA) the GPU the run used."""
    cuda_name = cuda_version = None
    if device.type == "cuda":
        cuda_name = torch.cuda.get_device_name(device)
        cuda_version = torch.version.cuda
    return HardwareRecord(cpu=_cpu_model(), cpu_count=os.cpu_count() or 0,
                          platform=platform.platform(), python=platform.python_version(),
                          torch=torch.__version__, torch_threads=torch.get_num_threads(),
                          device=str(device), cuda_device=cuda_name, cuda_version=cuda_version)
