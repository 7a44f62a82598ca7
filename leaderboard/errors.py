"""The root of every error the leaderboard raises on purpose (``except LeaderboardError``)."""

from __future__ import annotations


class LeaderboardError(Exception):
    """Base class of the leaderboard's own errors; subclasses keep the built-in base a caller
    would expect (``ValueError`` for an invalid card or submission, ...)."""
