"""A method on one's own scans: :mod:`.series` (``marbench apply``: a CT series in, a derived
DICOM series out, written by :mod:`.derived`, the method run over the volume by :mod:`.reduce`,
errors in :mod:`.errors`), :mod:`.reference_free` (reference-free measures for data without a
reference), :mod:`.cli` (the
``apply`` and ``generalization`` commands), :mod:`.viewer` (``marbench view``, a local app) and
:mod:`.cross_scanner` (``marbench scanners``: methods across scanner profiles)."""

from __future__ import annotations

from .reference_free import reference_free_measures, run_reference_free
from .series import (
    ApplyError,
    ApplyResult,
    MissingImplantTypeError,
    OutputExistsError,
    apply_to_series,
    check_report_target,
    check_separate,
    iter_reduced,
    method_needs_implant_type,
    select_series,
)

__all__ = [
    "ApplyError", "ApplyResult", "MissingImplantTypeError", "OutputExistsError",
    "apply_to_series", "check_report_target", "check_separate", "iter_reduced",
    "method_needs_implant_type", "reference_free_measures", "run_reference_free",
    "select_series",
]
