"""Reading config values from files and the command line.

The YAML config loader (``base:`` chains, unknown keys refused with a "did you mean", typed
values) is part of the training kit: :mod:`benchmark.learn.config`. Its helpers are
importable from here too, for code written against this module.
"""

from __future__ import annotations

from .learn.config import (
    Finder,
    check_keys,
    coerce_value,
    dataclass_kwargs,
    find_config_file,
    plain_dict,
    read_yaml_chain,
)

__all__ = ["Finder", "check_keys", "coerce_value", "dataclass_kwargs", "find_config_file",
           "plain_dict", "read_yaml_chain"]
