"""Any subset of test files runs on its own: helpers that tests import by name live in the
``tests.helpers`` package, not in a conftest (two conftest modules both named ``conftest``
would answer for each other when files of two folders run together)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_files_of_several_folders_collect_together():
    # pytest reads the conftest of every folder named before it collects the first file: with
    # helpers in conftest, "from conftest import ..." in tests/leaderboard met the conftest of
    # tests/artifactgsi and failed (ImportError) before the helpers moved.
    files = ["tests/leaderboard/test_browser.py", "tests/leaderboard/test_validate.py",
             "tests/artifactgsi/test_hub.py", "tests/adversarial/test_hub_transfer.py",
             "tests/artifactgsi/test_dicom.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only",
                           "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
    assert "error" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
