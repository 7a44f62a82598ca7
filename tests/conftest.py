"""Test-wide settings and fixtures: CPU threads, the gpu marker's skip, tiny datasets made by
the library, a private ``datasets`` cache, and a fake Hub with a client runner.

Fixtures live in conftest files; helpers that tests import by name live in the
:mod:`tests.helpers` package (``from tests.helpers.fakehub import FakeHub``), so any subset
of test files runs together.

``huggingface_hub`` and ``datasets`` read ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE`` and
``HF_HUB_DISABLE_XET`` once, at import. So the client side of every Hub test runs in a fresh
``python -c`` subprocess (:func:`hub_client`) whose environment points at the fake Hub and a
private ``HF_HOME``; the fake Hub itself runs in the pytest process, where the test inspects
its request log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers.fakehub import FakeHub, make_dataset_folder
from tests.helpers.files import private_datasets_cache

# Tests never read or write the user's reference cache (benchmark.refcache): one private
# folder per test session, unless a test points elsewhere; removed when the session ends.
_SESSION_REFCACHE: str | None = None
if "MARBENCH_REFERENCE_CACHE" not in os.environ:
    _SESSION_REFCACHE = tempfile.mkdtemp(prefix="marbench-refcache-tests-")
    os.environ["MARBENCH_REFERENCE_CACHE"] = _SESSION_REFCACHE

# Two shared cores: more torch threads than cores slows everything 2-3x.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_REFCACHE is not None:
        shutil.rmtree(_SESSION_REFCACHE, ignore_errors=True)


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
    with private_datasets_cache(tmp_path_factory.mktemp("hf_datasets_cache")):
        yield


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory, write_tiny_pairs) -> Path:
    """:func:`artifactgsi.testing.write_tiny_pairs` at 32 px, 4 slices per patient, for one
    test module."""
    return write_tiny_pairs(tmp_path_factory.mktemp("data") / "tiny", size=32, slices=4)


# ----------------------------------------------------------------------------- fake Hub

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny built dataset folder and the int16 ``gsi`` arrays it holds."""
    folder = tmp_path / "built"
    return folder, make_dataset_folder(folder)


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A running fake Hub; 2 entries per tree page so pagination is always exercised."""
    with FakeHub(page_size=2) as hub:
        yield hub


ClientRunner = Callable[..., dict[str, Any]]


@pytest.fixture
def hub_client(fake_hub: FakeHub, tmp_path: Path) -> ClientRunner:
    """Run Python code as a Hub client in a subprocess pointed at ``fake_hub``.

    ``hub_client(code, expect_error=False, **env)``: ``code`` may call ``emit(obj)`` to return a
    JSON object; the call returns it (plus ``"stderr"``). A non-zero exit fails the test unless
    ``expect_error``. ``HF_HOME`` is shared by all calls of one test, so a second call sees the
    cache of the first, as a user re-running a command would.
    """
    hf_home = tmp_path / "hf_home"
    base_env = {
        key: value for key, value in os.environ.items()
        if not key.upper().startswith(("HF_", "HUGGINGFACE_", "ARTIFACTGSI_", "TRANSFORMERS_"))
        and not key.lower().endswith("_proxy")
    }
    base_env.update({
        "HF_ENDPOINT": fake_hub.endpoint, "HF_HOME": str(hf_home), "HF_TOKEN": fake_hub.token,
        "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0", "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    })
    prelude = ("import json as _json\n"
               "def emit(obj):\n"
               "    print('RESULT ' + _json.dumps(obj), flush=True)\n")

    def run(code: str, expect_error: bool = False, **env: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code)],
            env={**base_env, **env}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )
        if (proc.returncode != 0) != expect_error:
            raise AssertionError(
                f"client exited with {proc.returncode} (expect_error={expect_error})\n"
                f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
        results = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        out: dict[str, Any] = json.loads(results[-1]) if results else {}
        out["stderr"] = proc.stderr
        return out

    return run
