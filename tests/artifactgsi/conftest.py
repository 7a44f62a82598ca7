"""Fixtures for the Hub tests: a tiny built dataset folder, a fake Hub, and a client runner.

``huggingface_hub`` and ``datasets`` read ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE`` and
``HF_HUB_DISABLE_XET`` once, at import. So the client side of every Hub test runs in a fresh
``python -c`` subprocess whose environment points at the fake Hub and a private ``HF_HOME``; the
fake Hub itself runs in the pytest process, where the test inspects its request log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:  # tests/ may become a package later; until then pytest puts this folder on sys.path
    from .fakehub import FakeHub, make_dataset_folder
except ImportError:
    from fakehub import FakeHub, make_dataset_folder

REPO_ROOT = Path(__file__).resolve().parents[2]


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
