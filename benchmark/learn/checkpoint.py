"""Checkpoints that resume a run exactly: model, optimiser, EMA and loop state in one folder.

Layout of ``<checkpoints>/last/``::

    model.safetensors     the trained module's state (parameters and buffers)
    optimizer.pt          the optimiser's state_dict (torch.save; loaded with weights_only)
    ema.pt                the EMA's state_dict, when the run keeps one
    state.json            step, best metric and step, seconds, and what the family adds

A new checkpoint is written to ``last.tmp`` and swapped in with two renames, so ``last`` is
never half written; a crash between the renames leaves ``last.old``, which is read instead.
The random draws of each step come from :func:`benchmark.learn.rng.step_generator`, so no
random-generator state needs saving.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

LAST = "last"


def cpu_state_dict(module: nn.Module, *, float32: bool = False) -> dict[str, torch.Tensor]:
    """``module``'s state as contiguous CPU tensors (floating ones as float32 with
    ``float32``), ready for safetensors."""
    return {k: (v.detach().float() if float32 and v.is_floating_point() else v.detach())
            .contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(root: Path, state: dict[str, Any], *, model: nn.Module, optimizer: Any,
                    ema: nn.Module | None = None) -> Path:
    """Write ``root/last`` (see the module doc); returns it."""
    from safetensors.torch import save_file

    root = Path(root)
    folder, tmp, old = root / LAST, root / f"{LAST}.tmp", root / f"{LAST}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(cpu_state_dict(model), str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if ema is not None:
        torch.save(ema.state_dict(), tmp / "ema.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(root: Path) -> Path | None:
    """``root/last``, else ``root/last.old`` (a crash between the renames), else ``None``."""
    for name in (LAST, f"{LAST}.old"):
        if (Path(root) / name / "state.json").is_file():
            return Path(root) / name
    return None


def load_checkpoint(folder: Path, *, model: nn.Module, optimizer: Any,
                    ema: nn.Module | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint folder into ``model``, ``optimizer`` (and ``ema``); returns its
    state."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(map_location)))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=map_location,
                                         weights_only=True))
    if ema is not None:
        ema.load_state_dict(torch.load(folder / "ema.pt", map_location=map_location,
                                       weights_only=True))
    return json.loads((folder / "state.json").read_text(encoding="utf-8"))


def save_weights(path: Path, module: nn.Module) -> None:
    """``module``'s state as float32 safetensors at ``path`` (written atomically): the best
    validation weights of a run, kept beside its checkpoints."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(cpu_state_dict(module, float32=True), str(tmp))
    os.replace(tmp, path)


def load_weights(path: Path, module: nn.Module) -> None:
    """Load :func:`save_weights`' file into ``module``, each tensor in the module's dtype."""
    from safetensors.torch import load_file

    own = module.state_dict()
    module.load_state_dict({k: v.to(dtype=own[k].dtype, device=own[k].device)
                            for k, v in load_file(str(path)).items()})

