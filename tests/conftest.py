"""Test-wide settings: CPU threads, a private cache, and the gpu marker's skip."""

import os

import pytest
import torch

# Two shared cores: more torch threads than cores slows everything 2-3x.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
