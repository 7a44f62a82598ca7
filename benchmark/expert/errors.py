"""The error of building a reading pack (:mod:`benchmark.expert.pack` and the reading design
it draws, :mod:`benchmark.expert.design`)."""

from __future__ import annotations

from benchmark.errors import MARBenchError


class PackError(MARBenchError, ValueError):
    """The pack cannot be built as asked (the message names the input and the fix)."""
