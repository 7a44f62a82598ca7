"""The dictionary-network family for metal artifact reduction: ``dicdnet`` (free filters),
``oscnet`` (rotated Fourier-basis filters, coefficients shared across orientations) and
``oscnet_plus`` (per-image coefficients re-predicted every stage). One unfolded network
(:mod:`baselines.dictnet.model`) with three filter parameterisations chosen by the config's
``variant``.

Train: ``marbench train oscnet --config oscnet-cpu --data DATA --out RUN`` (likewise
``dicdnet``, ``oscnet_plus`` with ``dicdnet-cpu``, ``oscnet-plus-cpu``); run:
``marbench run --method oscnet -O weights=RUN/model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from baselines.deep_common import DeepMARMethod, DeepModel
from baselines.deep_train import run_training
from baselines.dictnet.model import DictNet, DictNetConfig, load_dictnet, load_dictnet_config
from benchmark.learn.errors import ConfigError, IncompatibleWeightsError

__all__ = ["DICDNet", "OSCNet", "OSCNetPlus", "DictNet", "DictNetConfig",
           "load_dictnet", "load_dictnet_config", "train_dicdnet", "train_oscnet",
           "train_oscnet_plus"]


class _DictNetMethod(DeepMARMethod):
    """Shared method code: loads weights of the matching variant."""

    version = "1"
    # The loss ignores the metal region (as published), so the network's values there are
    # unconstrained: the input's metal pixels are put back, as LI and NMAR do.
    default_reinsert_metal = True
    model_class = DictNet

    def load_model(self, source: str | Path, revision: str | None) -> DeepModel:
        model = DictNet.from_pretrained(source, revision)
        if model.config.variant != self.name:
            raise IncompatibleWeightsError(
                f"{source}: these are {model.config.variant!r} weights; method {self.name!r} "
                f"needs weights trained with `marbench train {self.name}` (or run them with "
                f"--method {model.config.variant})")
        return model


class DICDNet(_DictNetMethod):
    """Unfolded convolutional-dictionary network with free filters (DICDNet); needs weights.

    Options: ``weights``, ``revision``, ``device``, ``batch_size``, ``reinsert_metal``
    (default true), ``target`` (checked against the weights).
    """

    name = "dicdnet"


class OSCNet(_DictNetMethod):
    """Orientation-shared convolutional dictionary network (OSCNet); needs weights.

    Options: ``weights``, ``revision``, ``device``, ``batch_size``, ``reinsert_metal``
    (default true), ``target`` (checked against the weights).
    """

    name = "oscnet"


class OSCNetPlus(_DictNetMethod):
    """OSCNet+ : orientation-shared dictionary with per-image coefficients; needs weights.

    Options: ``weights``, ``revision``, ``device``, ``batch_size``, ``reinsert_metal``
    (default true), ``target`` (checked against the weights).
    """

    name = "oscnet_plus"


def _train(variant: str, config: str, data: str, out: Path, resume: bool,
           overrides: dict[str, Any] | None) -> Path:
    cfg, name = DictNetConfig.load_named(config, overrides)
    if cfg.variant != variant:
        raise ConfigError(f"config {config!r} is for variant {cfg.variant!r}, not {variant!r}; "
                          f"use `marbench train {cfg.variant}` or a {variant} config")
    return run_training(cfg, DictNet, data, out, resume=resume, reinsert_metal=True,
                        tag=variant, config_name=name)


def train_dicdnet(config: str, data: str, out: Path, *, resume: bool = False,
                  overrides: dict[str, Any] | None = None) -> Path:
    """Train DICDNet (configs ``dicdnet-tiny``, ``dicdnet-cpu``, ``dicdnet-paper``)."""
    return _train("dicdnet", config, data, out, resume, overrides)


def train_oscnet(config: str, data: str, out: Path, *, resume: bool = False,
                 overrides: dict[str, Any] | None = None) -> Path:
    """Train OSCNet (configs ``oscnet-tiny``, ``oscnet-cpu``, ``oscnet-paper``)."""
    return _train("oscnet", config, data, out, resume, overrides)


def train_oscnet_plus(config: str, data: str, out: Path, *, resume: bool = False,
                      overrides: dict[str, Any] | None = None) -> Path:
    """Train OSCNet+ (configs ``oscnet-plus-tiny``, ``oscnet-plus-cpu``,
    ``oscnet-plus-paper``)."""
    return _train("oscnet_plus", config, data, out, resume, overrides)


train_dicdnet.configs = ["dicdnet-tiny", "dicdnet-cpu", "dicdnet-paper"]  # type: ignore
train_oscnet.configs = ["oscnet-tiny", "oscnet-cpu", "oscnet-paper"]  # type: ignore
train_oscnet_plus.configs = ["oscnet-plus-tiny", "oscnet-plus-cpu",  # type: ignore
                             "oscnet-plus-paper"]
