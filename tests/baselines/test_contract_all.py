"""The contract test (:func:`benchmark.testing.check_method`) on every shipped method: the
classic ones as they are, the learned ones with tiny randomly initialised weights written
here through their own ``save_pretrained`` (the contract is about shapes, HU, determinism
and batch independence, not about what the weights learnt)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch

from benchmark.registry import get_method
from benchmark.testing import check_method

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32  # px: the tiny configs' slices


def _shipped() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(meta["project"]["entry-points"]["marbench.methods"])


def _deep(family: str, config: str) -> Callable[[], Any]:
    def build() -> Any:
        if family == "unet":
            from baselines.unet import UNetModel, load_unet_config

            model = UNetModel(load_unet_config(config))
        elif family == "dudodp":
            from baselines.dudodp.config import load_dudodp_config
            from baselines.dudodp.prior import DiffusionPrior

            model = DiffusionPrior(load_dudodp_config(config))
        else:
            from baselines.dictnet.model import DictNet, load_dictnet_config

            model = DictNet(load_dictnet_config(config))
        model.training_info = {"image_size": SIZE, "target": "gsi"}
        return model
    return build


def _lga() -> Any:
    from baselines.lga.config import load_config
    from baselines.lga.model import LGAModel

    model = LGAModel(load_config("lga-tiny"))
    model.trained = {"vae": 1, "invariance": 1, "align": 1}
    return model


#: name -> (tiny weights builder or None for a classic method, extra options).
METHODS: dict[str, tuple[Callable[[], Any] | None, dict[str, Any]]] = {
    "identity": (None, {}),
    "li": (None, {}),
    "nmar": (None, {}),
    "lga": (_lga, {}),
    "unet": (_deep("unet", "unet-tiny"), {"device": "cpu"}),
    "dicdnet": (_deep("dictnet", "dicdnet-tiny"), {}),
    "oscnet": (_deep("dictnet", "oscnet-tiny"), {}),
    "oscnet_plus": (_deep("dictnet", "oscnet-plus-tiny"), {}),
    "dudodp": (_deep("dudodp", "dudodp-tiny"), {"steps": 2, "batch_size": 2}),
}


def test_every_shipped_method_is_checked_here():
    assert set(_shipped()) == set(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_shipped_method_keeps_the_contract(name, tmp_path, monkeypatch):
    monkeypatch.delenv(f"MARBENCH_{name.upper()}_WEIGHTS", raising=False)
    build, options = METHODS[name]
    cls = get_method(name)
    if build is not None:
        torch.manual_seed(0)
        options = {"weights": str(build().save_pretrained(tmp_path / "w")), **options}
    # Batched float32 convolutions may round differently from single ones: 0.05 HU is far
    # below the integer HU the runner stores.
    method = check_method(cls, size=SIZE, **options)
    if build is not None:
        assert method.weights_sha256 and len(method.weights_sha256) == 64
