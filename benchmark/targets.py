"""Import the object a ``"pkg.module:attr"`` string names (methods, trainers and metric
computations are all named this way). Standard library only: the torch-free metric registry
uses it too."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_target"]


def import_target(target: str, what: str) -> Any:
    """The object ``target`` (``"pkg.module:attr"``, ``attr`` may be dotted) names.

    Args:
        target: the string.
        what: how errors name it (``"method spec 'x:Y'"``, ``"metric 'psnr'"``).

    Raises:
        ValueError: ``target`` is not ``module:attr``.
        ImportError: the module does not import, or lacks the attribute (the message says
            which, and that the package may be missing).
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what}: {target!r} must look like 'pkg.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"{what}: cannot import module {module_name!r} ({e}); is its "
                          "package installed in this environment?") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ImportError(f"{what}: module {module_name!r} has no attribute {attr!r}") \
                from e
    return obj
