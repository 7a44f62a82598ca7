"""Test-wide settings: CPU threads, a private cache, and the gpu marker's skip."""

import os
import tempfile

import pytest
import torch

# Tests never read or write the user's reference cache (benchmark.refcache): one private
# folder per test session, unless a test points elsewhere.
os.environ.setdefault("MARBENCH_REFERENCE_CACHE",
                      tempfile.mkdtemp(prefix="marbench-refcache-tests-"))

# Two shared cores: more torch threads than cores slows everything 2-3x.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def write_tiny_pairs():
    """:func:`artifactgsi.testing.write_tiny_pairs`: a hand-made ``pairs`` dataset with
    known content in the schema's own columns and types."""
    from artifactgsi.testing import write_tiny_pairs

    return write_tiny_pairs


@pytest.fixture(scope="session")
def tiny_built(tmp_path_factory):
    """A tiny dataset simulated and built by the library itself (32 px, 3 implant patients +
    1 clean, 4 slices): ``TinyBuild(raw, built, secret)``, made once per test session."""
    from artifactgsi.testing import tiny_built_dataset

    return tiny_built_dataset(tmp_path_factory.mktemp("tiny_built"))


@pytest.fixture(scope="module")
def isolated_datasets_cache(tmp_path_factory):
    """A private ``datasets`` cache for one test module (it caches local folders by name)."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE",
                   str(tmp_path_factory.mktemp("hf_datasets_cache")))
        yield
