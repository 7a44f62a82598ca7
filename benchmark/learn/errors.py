"""The errors of the training kit, all under :class:`benchmark.errors.MARBenchError`.

Each also keeps the built-in base a caller would expect: a bad config is a ``ValueError``, a
run that cannot start a ``RuntimeError``, missing weights a ``FileNotFoundError``.
"""

from __future__ import annotations

from benchmark.errors import MARBenchError


class OptionValueError(MARBenchError, ValueError):
    """A method option has a value it cannot take (the message names the method and option)."""


class ConfigError(MARBenchError, ValueError):
    """A config file or value is invalid (the message names the file and the key)."""


class TrainError(MARBenchError, RuntimeError):
    """A run cannot start or resume as asked (the message says why and what to do)."""


class WeightsError(MARBenchError, FileNotFoundError):
    """Weights are missing or unreadable (the message says where it looked and what to do)."""


class IncompatibleWeightsError(WeightsError):
    """Weights were trained for other inputs than the ones given."""


class ImageSizeMismatchError(IncompatibleWeightsError):
    """Weights trained on slices of another size than the ones given."""


class NormalisationMismatchError(IncompatibleWeightsError):
    """Weights trained with another HU normalisation than the one asked for."""
