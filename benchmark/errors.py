"""The root of every error the benchmark raises on purpose.

``except MARBenchError`` catches them all; each subclass also keeps the built-in base a
caller would expect (``LookupError`` for an unknown name, ``ValueError`` for bad values), so
existing ``except ValueError`` code keeps working. Messages name the file, slice, method or
option that is wrong and say what to do.
"""

from __future__ import annotations


class MARBenchError(Exception):
    """Base class of the benchmark's own errors."""

    def __str__(self) -> str:  # LookupError and KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
