"""Versioned scoring protocols, by name.

=================== ==========================================================================
``marbench-v1``     the paper's protocol: PSNR / SSIM / LPIPS against GSI (and the ideal
                    image), clinical metrics, segmentation (:mod:`benchmark.metrics`)
``aapm-ctmar-2024`` the AAPM CT-MAR Grand Challenge's eight metrics, each mapped to a 0-4
                    score per case and averaged (:mod:`benchmark.protocol.aapm`)
=================== ==========================================================================

``marbench run --protocol NAME`` chooses one (default ``marbench-v1``); results record its
version and every setting. This module imports no torch: :func:`get_protocol` loads a
protocol's settings only when asked.
"""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import MARBenchError
from ..results import PROTOCOL_VERSIONS

__all__ = ["AAPM_VERSION", "DEFAULT_PROTOCOL", "PROTOCOL_VERSIONS", "UnknownProtocolError",
           "get_protocol"]

DEFAULT_PROTOCOL = PROTOCOL_VERSIONS[0]   # "marbench-v1"
AAPM_VERSION = PROTOCOL_VERSIONS[1]       # "aapm-ctmar-2024"


class UnknownProtocolError(MARBenchError, ValueError):
    """A protocol name this harness does not know (the message lists the known ones)."""


def get_protocol(name: Any) -> Any:
    """The settings object of protocol ``name`` (a version string; a protocol object is
    returned as is).

    Raises:
        UnknownProtocolError: not one of :data:`PROTOCOL_VERSIONS` (with a suggestion).
    """
    if not isinstance(name, str):
        if name is not None and getattr(name, "version", None) in PROTOCOL_VERSIONS:
            return name
        raise UnknownProtocolError(f"not a scoring protocol: {name!r}")
    if name == DEFAULT_PROTOCOL:
        from ..metrics import MARBENCH_V1

        return MARBENCH_V1
    if name == AAPM_VERSION:
        from .aapm import AAPM_CTMAR_2024

        return AAPM_CTMAR_2024
    close = difflib.get_close_matches(name, PROTOCOL_VERSIONS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownProtocolError(f"unknown protocol {name!r}{hint} Known protocols: "
                               f"{', '.join(PROTOCOL_VERSIONS)}")
