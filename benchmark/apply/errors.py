"""The errors of ``marbench apply`` (:mod:`benchmark.apply.series` and the modules it uses):
each says what to do."""

from __future__ import annotations

from ..errors import MARBenchError


class ApplyError(MARBenchError, ValueError):
    """The input or the output folder cannot be used; the message says what to do."""


class MissingImplantTypeError(ApplyError):
    """The method needs ``--implant-type`` and none was given."""


class OutputExistsError(ApplyError, FileExistsError):
    """The output folder exists and ``overwrite`` was not asked for."""
