"""A third-party MAR method, registered only through its package's entry point."""

from __future__ import annotations

from benchmark.method import MARInput, MARMethod, MAROutput

#: Set on import, so a test can see when the registry imports this module.
IMPORTED = True


class WindowClamp(MARMethod):
    """Clamps the ordinary image to the 12-bit CT range [-1024, 3071] HU."""

    name = "demo-window"
    version = "0.1.0"

    def __init__(self, lo_hu: float = -1024.0, hi_hu: float = 3071.0) -> None:
        self.lo_hu = lo_hu
        self.hi_hu = hi_hu

    def reduce(self, batch: MARInput) -> MAROutput:
        return MAROutput(image=batch.ordinary.clamp(self.lo_hu, self.hi_hu))
