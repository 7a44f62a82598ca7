"""The optimisation loop every trainer runs, read top to bottom in :meth:`Trainer.fit`.

Per step: the learning rate from the schedule, the family's forward (its losses, under
autocast), backward, optional gradient clipping, the optimiser step, the EMA update. After a
step: validation when the family says so (every N steps or at the end of every N-th epoch, and
at the last step), with the best validation metric's weights kept through the family's
``on_best``; a checkpoint every ``checkpoint_every`` steps, after each validation and at the
end; a stop at the time limit (with a checkpoint, so ``--resume`` continues).

The family provides the batches in order, starting at the resumed step (a function of the step
for random patches, an epoch sampler for epochs); everything else is here, so the checkpoint
format, the resume logic and the best-weights rule are written once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .run import Run
from .schedules import set_learning_rate


@dataclass
class Report:
    """What the loop knows when it validates, for the family's log line."""

    step: int                  # optimiser steps done
    lr: float                  # learning rate of the last step
    train_loss: float          # mean loss since the previous validation
    seconds: float             # training time so far (all invocations of the run)
    steps_per_s: float         # speed since the previous validation
    metric: float | None       # the validation metric (higher is better), if any
    details: dict[str, Any]    # the validation's other numbers


class Trainer:
    """One model, its optimiser and their checkpoints in ``checkpoint_dir``.

    On ``run.resume`` the last checkpoint there (if any) is loaded before the model and the
    optimiser are prepared by the run's accelerator. :attr:`state` holds ``step``,
    ``best_metric``, ``best_step`` and ``seconds`` plus anything the family adds; it is saved
    with each checkpoint.

    Args:
        run: the run (accelerator, log).
        model: the module whose ``forward`` the family's step calls (its state is
            checkpointed; frozen parts should not be registered in it).
        optimizer: built on the trainable parameters.
        total_steps: steps of the whole run (the loop stops there).
        lr_at: learning rate of step ``s`` (0-based).
        checkpoint_dir: folder of the ``last`` checkpoint.
        checkpoint_every: steps between checkpoints (besides those after validations).
        grad_clip: maximum gradient norm (0: none); ``params`` are clipped (default: all).
        ema: an EMA of ``model`` updated after every step and checkpointed (``ema_pytorch.EMA``).
        time_limit_s: stop (with a checkpoint) once the run has trained this long.
        state: extra entries of :attr:`state` for a fresh run.
    """

    def __init__(self, run: Run, model: nn.Module, optimizer: Any, *, total_steps: int,
                 lr_at: Callable[[int], float], checkpoint_dir: Path, checkpoint_every: int,
                 grad_clip: float = 0.0, params: Iterable[nn.Parameter] | None = None,
                 ema: nn.Module | None = None, time_limit_s: float | None = None,
                 state: dict[str, Any] | None = None) -> None:
        self.run = run
        self.total = int(total_steps)
        self.lr_at = lr_at
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_every = int(checkpoint_every)
        self.grad_clip = float(grad_clip)
        self.params = list(params) if params is not None else list(model.parameters())
        self.ema = ema
        self.time_limit_s = time_limit_s
        self.state: dict[str, Any] = {"step": 0, "best_metric": None, "best_step": None,
                                      "seconds": 0.0, **(state or {})}
        self.model = model  # unwrapped: what is checkpointed, validated and saved
        last = find_checkpoint(self.checkpoint_dir) if run.resume else None
        if last is not None:
            self.state = load_checkpoint(last, model=model, optimizer=optimizer, ema=ema,
                                         map_location=run.device)
            run.say(f"resumed from {last} at step {self.state['step']}")
        self.module, self.optimizer = run.accelerator.prepare(model, optimizer)
        self.stopped_early = False

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def done(self) -> bool:
        return self.step >= self.total

    def checkpoint(self, on_checkpoint: Callable[[], None] | None = None) -> None:
        """Save the ``last`` checkpoint (main process), then ``on_checkpoint()`` there."""
        if self.run.is_main:
            save_checkpoint(self.checkpoint_dir, self.state, model=self.model,
                            optimizer=self.optimizer, ema=self.ema)
            if on_checkpoint is not None:
                on_checkpoint()
        self.run.wait()

    def fit(self, batches: Iterable[Any], forward: Callable[[Any, int], dict[str, torch.Tensor]],
            *, validates: Callable[[int], bool],
            validate: Callable[[], tuple[float | None, dict[str, Any]]] | None = None,
            on_best: Callable[[float, dict[str, Any]], None] | None = None,
            report: Callable[[Report], dict[str, Any]] | None = None,
            on_checkpoint: Callable[[], None] | None = None,
            progress: str | None = None) -> None:
        """Train until :attr:`total` steps (or the time limit).

        Args:
            batches: the training batches of steps ``step, step + 1, ...`` in order.
            forward: ``forward(batch, step) -> losses`` with the optimised ``"loss"``; it
                runs the prepared :attr:`module` (under autocast, here).
            validates: whether the step count ``s`` (steps done) ends with a validation.
            validate: ``() -> (metric or None, details)`` (every process calls it).
            on_best: called with (metric, details) when the metric is the best so far
                (``state`` already updated); it keeps the best weights.
            report: the log line of a validation (main process; ``None``: no log).
            on_checkpoint: called on the main process after each checkpoint.
            progress: the description of a progress bar (``None``: no bar).
        """
        run, acc = self.run, self.run.accelerator
        t0 = time.perf_counter() - float(self.state.get("seconds", 0.0))
        running, n_run, t_mark, s_mark = 0.0, 0, time.perf_counter(), self.step
        bar = _progress(progress, self.total, self.step, run.is_main)
        try:
            it = iter(batches)
            while not self.done:
                step = self.step
                lr = self.lr_at(step)
                set_learning_rate(self.optimizer, lr)
                batch = next(it)
                with acc.autocast():
                    losses = forward(batch, step)
                acc.backward(losses["loss"])
                if self.grad_clip > 0:
                    acc.clip_grad_norm_(self.params, self.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update()
                self.state["step"] = step + 1
                running += float(losses["loss"].detach())
                n_run += 1
                if bar is not None:
                    bar.update(self.step, losses)
                over = (self.time_limit_s is not None
                        and time.perf_counter() - t0 > self.time_limit_s)
                validated = validates(self.step) or self.done or over
                if validated:
                    self.state["seconds"] = round(time.perf_counter() - t0, 2)
                    metric, details = validate() if validate is not None else (None, {})
                    if metric is not None and (self.state["best_metric"] is None or (
                            not math.isnan(metric) and metric > self.state["best_metric"])):
                        self.state["best_metric"], self.state["best_step"] = metric, self.step
                        if on_best is not None:
                            on_best(metric, details)
                    if report is not None and run.is_main:
                        rate = (self.step - s_mark) / max(time.perf_counter() - t_mark, 1e-9)
                        run.log(report(Report(self.step, lr, running / max(n_run, 1),
                                              self.state["seconds"], rate, metric, details)))
                    running, n_run, t_mark, s_mark = 0.0, 0, time.perf_counter(), self.step
                # After a validation too: the saved best metric must match the best weights.
                if (self.step % self.checkpoint_every == 0 or self.done or over
                        or (validated and validate is not None)):
                    self.state["seconds"] = round(time.perf_counter() - t0, 2)
                    self.checkpoint(on_checkpoint)
                if over and not self.done:
                    self.stopped_early = True
                    run.say(f"time limit {self.time_limit_s} s reached at step {self.step}; "
                            "--resume continues")
                    break
        finally:  # an exception must not leave the live display running
            if bar is not None:
                bar.stop()
        run.wait()


def epoch_batches(trainer: Trainer, loader: Any, sampler: Any, steps_per_epoch: int, *,
                  on_epoch: Callable[[int], None] | None = None) -> Iterator[Any]:
    """The batches of an epoch-based run from the trainer's step on: before each epoch the
    sampler (an :class:`~benchmark.learn.rng.EpochSampler`) and ``on_epoch(epoch)`` are set
    and the module is put in training mode; on resume, the batches of the current epoch that
    were already trained are skipped, so the run continues exactly."""
    acc = trainer.run.accelerator
    while True:
        epoch = trainer.step // steps_per_epoch
        sampler.set_epoch(epoch)
        if on_epoch is not None:
            on_epoch(epoch)
        skip = trainer.step - epoch * steps_per_epoch
        trainer.module.train()
        yield from acc.skip_first_batches(loader, skip) if skip else loader


def epoch_validated(step: int, steps_per_epoch: int, total: int, every: int) -> bool:
    """Whether ``step`` (steps done) ends a validated epoch: every ``every``-th epoch, and the
    run's last step always."""
    if step >= total:
        return True
    return step % steps_per_epoch == 0 and (step // steps_per_epoch) % every == 0


class _Bar:
    """A rich progress bar with the last step's losses."""

    def __init__(self, description: str, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.progress import TimeRemainingColumn as Remaining

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), Remaining(),
                                 TextColumn("{task.fields[info]}"))
        self.task = self.progress.add_task(description, total=total, completed=done, info="")
        self.progress.start()

    def update(self, done: int, losses: dict[str, torch.Tensor]) -> None:
        info = " ".join(f"{n}={float(v.detach()):.4g}" for n, v in losses.items())
        self.progress.update(self.task, completed=done, info=info)

    def stop(self) -> None:
        self.progress.stop()


def _progress(description: str | None, total: int, done: int, main: bool) -> _Bar | None:
    return _Bar(description, total, done) if description is not None and main else None
