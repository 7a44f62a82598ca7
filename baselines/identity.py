"""The identity method: the uncorrected ordinary image, the floor every method must beat."""

from __future__ import annotations

from benchmark.method import MARInput, MARMethod, MAROutput


class Identity(MARMethod):
    """No correction: returns the ordinary image unchanged (the floor)."""

    name = "identity"
    version = "1"

    def reduce(self, batch: MARInput) -> MAROutput:
        # A copy, so that a caller that edits the output in place cannot alter the input.
        return MAROutput(image=batch.ordinary.clone())
