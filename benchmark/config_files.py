"""Reading config values from files and the command line.

The YAML config loader (``base:`` chains, unknown keys refused with a "did you mean", typed
values) is part of the training kit, :mod:`benchmark.learn.config`; its helpers are
importable from here too, for code written against this module.
"""

from __future__ import annotations

from typing import Any

from .learn import config as _yaml_configs

#: The helpers that moved to :mod:`benchmark.learn.config`.
_MOVED = ("Finder", "check_keys", "coerce_value", "dataclass_kwargs", "find_config_file",
          "plain_dict", "read_yaml_chain")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(_yaml_configs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
