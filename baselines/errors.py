"""The root of every error the shipped methods raise on purpose.

``except BaselinesError`` catches them all; each subclass also keeps the built-in base a caller
would expect (``ValueError`` for a bad option or setting), so ``except ValueError`` keeps
working. Errors of the training kit the methods use (configs, runs, weights) are the kit's own,
under :class:`benchmark.errors.MARBenchError` (:mod:`benchmark.learn.errors`).
"""

from __future__ import annotations


class BaselinesError(Exception):
    """Base class of the shipped methods' own errors."""


class OptionError(BaselinesError, ValueError):
    """A method option or setting has a value it cannot take (the message names both)."""
