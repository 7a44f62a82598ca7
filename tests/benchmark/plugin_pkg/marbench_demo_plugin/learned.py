"""A third-party learned method and its trainer, built on marbench's training kit (its
template: a residual CNN from the ordinary image to GSI), registered only through this
package's entry points."""

from __future__ import annotations

from benchmark.learn.template import TemplateMethod
from benchmark.learn.template import train as _train


class DemoLearned(TemplateMethod):
    """Residual CNN trained towards GSI (the training kit's template, as a plug-in)."""

    name = "demo-learned"
    version = "0.1.0"


def train(config, data, out, **kwargs):  # noqa: ANN001, ANN003, ANN201 (the trainer contract)
    """``marbench train demo-learned``: the template's trainer."""
    return _train(config, data, out, **kwargs)
