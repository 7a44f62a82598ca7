"""Base class of benchmark methods that run trained weights.

Where the weights come from is written once, here, for every such method:

1. the ``weights`` option (a folder or a Hub model repo id, with the ``revision`` option);
2. else ``$MARBENCH_<NAME>_WEIGHTS`` (e.g. ``MARBENCH_UNET_WEIGHTS``);
3. else ``weights/`` in the method's cache folder (``PrepareContext.cache_dir``: by default
   ``~/.cache/artifactgsi/methods/<name>/weights``).

A method never runs with random weights: without usable weights ``prepare`` raises
:class:`~benchmark.learn.errors.WeightsError` saying how to train them and how to pass them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from benchmark.method import MARMethod, PrepareContext

from .errors import IncompatibleWeightsError, OptionValueError, WeightsError


def parse_flag(value: object, name: str, method: str) -> bool:
    """A boolean option given as a bool or as text (``true`` / ``false``, ``1`` / ``0``,
    ``yes`` / ``no``, ``on`` / ``off``).

    Raises:
        OptionValueError: anything else (a ``ValueError``), naming the method and the option.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise OptionValueError(f"{method}: option {name}={value!r} is not a boolean (true / false)")


class WeightsMethod(MARMethod):
    """A :class:`MARMethod` whose ``prepare`` loads trained weights.

    Subclasses keep ``weights`` (and, for Hub repos, ``revision``) as constructor options,
    implement :meth:`load_model` and call :meth:`load_weights` in ``prepare``. After loading,
    ``weights`` holds the location used and ``weights_sha256`` the hash results files record.

    Class attributes:
        train_config: the shipped config the "train it first" message names (default
            ``<name>-cpu``, underscores as dashes).
    """

    train_config: ClassVar[str] = ""
    weights: str | None = None
    revision: str | None = None

    @property
    def weights_env(self) -> str:
        """The environment variable that names this method's weights."""
        return f"MARBENCH_{self.name.upper()}_WEIGHTS"

    def weights_source(self, ctx: PrepareContext) -> str | Path | None:
        """Where :meth:`load_weights` looks: the option, the environment, the cache."""
        if self.weights:
            return self.weights
        if os.environ.get(self.weights_env):
            return os.environ[self.weights_env]
        if ctx.cache_dir is not None:
            return Path(ctx.cache_dir) / "weights"
        return None

    def untrained(self, why: str) -> WeightsError:
        """The error of a method without usable weights: why, and how to get them."""
        config = self.train_config or f"{self.name.replace('_', '-')}-cpu"
        return WeightsError(
            f"{self.name} has no trained weights ({why}). Train it first: `marbench train "
            f"{self.name} --config {config} --data DATA --out RUN`, then `marbench run "
            f"--method {self.name} -O weights=RUN/model`, or set ${self.weights_env}. It "
            "never runs with random weights.")

    def load_model(self, source: str | Path, revision: str | None) -> Any:
        """The trained model at ``source`` (a folder or Hub repo id); usually the family's
        ``Model.from_pretrained(source, revision)``."""
        raise NotImplementedError

    def load_weights(self, ctx: PrepareContext) -> Any:
        """The model from :meth:`weights_source`, with ``weights`` and ``weights_sha256``
        set. Missing or unreadable weights raise :meth:`untrained`; weights for other inputs
        (:class:`IncompatibleWeightsError`) are raised as they are."""
        source = self.weights_source(ctx)
        if source is None:
            raise self.untrained("no weights location given")
        try:
            model = self.load_model(source, self.revision)
        except IncompatibleWeightsError:
            raise
        except WeightsError as e:
            raise self.untrained(str(e)) from e
        self.weights = str(source)
        self.weights_sha256 = model.weights_sha256
        return model

    def model_device(self, ctx: PrepareContext) -> str:
        """The ``device`` option if the method has one and it is set, else the runner's."""
        return str(getattr(self, "device", None) or ctx.device)
