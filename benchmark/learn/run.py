"""A training run: its folder, its accelerator and its log.

Every trainer writes the same run folder::

    OUT/config.json          the resolved config of the run (written when it starts)
    OUT/log.jsonl            one line per validation (the learning curve)
    OUT/checkpoints/         resumable state (benchmark.learn.checkpoint)
    OUT/model/               the trained weights (save_pretrained)

A folder that already holds a run is refused unless the run is resumed, a resume needs a run
to resume, and a resumed run must have the same config (keys that only concern one
invocation, such as a time budget, may differ).

``accelerate`` runs the same code on one CPU, one GPU or several processes: ``marbench train
NAME ...`` in one process, ``accelerate launch -m benchmark.learn NAME ...`` on several.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import TrainError

CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"


def check_run_folder(out: Path, config: dict[str, Any], resume: bool,
                     per_invocation: tuple[str, ...] = ()) -> None:
    """Refuse to start over a run in ``out`` unless ``resume``, to resume nothing, or to
    resume with another config (keys in ``per_invocation`` may differ).

    Raises:
        TrainError: naming the folder (or its config.json and the keys that differ).
    """
    run_cfg = Path(out) / CONFIG_NAME
    if run_cfg.is_file():
        if not resume:
            raise TrainError(f"{out}: already holds a run; pass resume=True (--resume) to "
                             "continue it, or choose another --out folder")
        old = json.loads(run_cfg.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(config)
                      if old.get(k) != config.get(k) and k not in per_invocation)
        if diff:
            raise TrainError(f"{run_cfg}: the run was started with a different config "
                             f"(keys {', '.join(diff)}); resume with the same config")
    elif resume:
        raise TrainError(f"{out}: nothing to resume (no {CONFIG_NAME})")


class Run:
    """The run folder ``out`` of a config, checked and created, with its accelerator.

    Args:
        out: the run folder.
        config: the resolved config (its ``to_dict()`` is written to ``OUT/config.json``).
        resume: continue the run in ``out``.
        tag: the prefix of printed lines (``"[unet] ..."``).
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``; used on CUDA only (CPU runs fp32).
        per_invocation: config keys that may differ when resuming.

    Attributes:
        accelerator: the ``accelerate.Accelerator`` of the run.
    """

    def __init__(self, out: str | Path, config: Any, *, resume: bool = False,
                 tag: str = "train", mixed_precision: str = "no",
                 per_invocation: tuple[str, ...] = ()) -> None:
        import torch
        from accelerate import Accelerator

        self.out = Path(out)
        self.resume = resume
        self.tag = tag
        values = config.to_dict()
        check_run_folder(self.out, values, resume, per_invocation)
        cuda = torch.cuda.is_available()
        self.accelerator = Accelerator(cpu=not cuda,
                                       mixed_precision=mixed_precision if cuda else "no")
        self.accelerator.wait_for_everyone()  # every process checked before config.json exists
        if self.is_main:
            from artifactgsi.fileio import write_text_atomic

            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out / CONFIG_NAME, json.dumps(values, indent=1))
        self.accelerator.wait_for_everyone()

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def device(self) -> Any:
        return self.accelerator.device

    @property
    def process_index(self) -> int:
        return int(self.accelerator.process_index)

    def say(self, message: str) -> None:
        """Print ``[tag] message`` once (on the main process)."""
        self.accelerator.print(f"[{self.tag}] {message}")

    def log(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` as one line of ``OUT/log.jsonl`` (main process only)."""
        if self.is_main:
            with open(self.out / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def end(self) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
