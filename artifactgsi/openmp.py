"""OpenMP settings of the project's command lines, made before torch is loaded.

torch's CPU operations run on a GNU OpenMP team. After each operation the team's threads
keep spinning for a while in case another follows (``GOMP_SPINCOUNT``, 300,000 spins by
default: milliseconds on a recent CPU) before they sleep. Scoring alternates torch work with
NumPy and OpenCV work spread over the same cores (:mod:`benchmark.metrics.slices`); with the
default, a spinning torch thread holds one of the two cores of a small machine through most of
each NumPy phase, and the second core gains nothing. 10,000 spins still bridge the gap between
two torch operations (microseconds), so torch itself runs as fast.

libgomp reads the variable once, when torch loads it: :func:`apply_openmp_defaults` must run
first (the command lines call it on import). A value the user set is kept.
"""

from __future__ import annotations

import os
import sys

#: The environment the command lines give OpenMP unless the user set it.
OPENMP_DEFAULTS: dict[str, str] = {"GOMP_SPINCOUNT": "10000"}


def apply_openmp_defaults() -> bool:
    """Set :data:`OPENMP_DEFAULTS` where the environment does not; returns ``False`` (and
    changes nothing) when torch is already loaded, since OpenMP would no longer read them."""
    if "torch" in sys.modules:
        return False
    for key, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return True
