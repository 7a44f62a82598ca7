"""The training kit: what every trainable family (LGA, the deep baselines, DuDoDp, the
segmenter, and a plug-in's own) shares, written once.

- :mod:`~benchmark.learn.config`: :class:`ConfigBase` and the YAML loader (``base:`` chains,
  typed values, unknown keys refused with a suggestion);
- :mod:`~benchmark.learn.weights`: :class:`PretrainedModel`, one weights-folder format
  (config.json, model.safetensors, a model card) with ``save_pretrained`` /
  ``from_pretrained`` (a folder or a Hub model repo id at a revision);
- :mod:`~benchmark.learn.run`: :class:`Run`, the run folder (refused over another run,
  resumed only with the same config) and the ``accelerate`` accelerator;
- :mod:`~benchmark.learn.loop`: :class:`Trainer`, the optimisation loop with checkpoints that
  resume exactly (:mod:`~benchmark.learn.checkpoint`), validation and best weights;
- :mod:`~benchmark.learn.schedules`, :mod:`~benchmark.learn.rng`,
  :mod:`~benchmark.learn.split`, :mod:`~benchmark.learn.ema`: learning-rate schedules, seeds
  and per-step generators, the held-out-patient split, the EMA of weights;
- :mod:`~benchmark.learn.method`: :class:`WeightsMethod`, the base of benchmark methods that
  load weights (option, environment variable, cache);
- ``python -m benchmark.learn NAME ...``: every registered trainer, also under
  ``accelerate launch`` (several GPUs or nodes).

A worked example: :mod:`benchmark.learn.template` (a small learned method and its trainer).
Importing this package imports neither torch nor accelerate; the modules do.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ConfigBase": "config", "ConfigError": "errors", "TrainError": "errors",
    "WeightsError": "errors", "IncompatibleWeightsError": "errors",
    "ImageSizeMismatchError": "errors", "NormalisationMismatchError": "errors",
    "PretrainedModel": "weights", "resolve_weights": "weights", "Run": "run",
    "Trainer": "loop", "WeightsMethod": "method", "patient_split": "split",
    "learning_rate": "schedules", "step_generator": "rng", "seed_everything": "rng",
    "EpochSampler": "rng",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
