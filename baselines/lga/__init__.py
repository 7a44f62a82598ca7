"""LGA: the paper's reference method (latent space alignment with GSI, CVPR 2025, Sec. 3).

* :class:`LGA` (``baselines.lga:LGA``): the benchmark method (needs trained weights).
* :mod:`baselines.lga.config`: :class:`LGAConfig`, :func:`load_config`, shipped YAML configs.
* :mod:`baselines.lga.vae` (ARVAE), :mod:`~baselines.lga.invariance` (Ec_n, Ec_g),
  :mod:`~baselines.lga.align` (F), :mod:`~baselines.lga.model` (``LGAModel``: weights, inference),
  :mod:`~baselines.lga.train` (:func:`train_lga`; ``marbench train lga``, or
  ``accelerate launch -m benchmark.learn lga`` on several processes).

Importing this package imports neither diffusers nor accelerate; the model modules do.
"""

from baselines.lga.method import LGA

__all__ = ["LGA", "train_lga"]


def __getattr__(name: str):
    if name == "train_lga":  # lazy: pulls in accelerate and diffusers
        from baselines.lga.train import train_lga

        return train_lga
    raise AttributeError(f"module 'baselines.lga' has no attribute {name!r}")
