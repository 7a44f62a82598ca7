"""The board's command line and a Hub client run against the fake Hub, in subprocesses
(huggingface_hub reads ``HF_ENDPOINT`` when it is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers.fakehub import FakeHub

REPO_ROOT = Path(__file__).resolve().parents[2]


def marbench_env() -> str:
    """The re-scoring command: this interpreter's ``marbench`` (``rescore`` subcommand)."""
    return f"{sys.executable} -m benchmark.cli"


def hub_environment(hub: FakeHub, home: Path) -> dict[str, str]:
    """This process's environment pointed at ``hub`` (no proxy, no other HF settings), with
    ``home`` as HF_HOME and this interpreter's ``marbench``."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("HF_", "HUGGINGFACE_"))
           and not k.lower().endswith("_proxy")}
    env.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home),
                "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "NO_PROXY": "127.0.0.1,localhost", "OMP_NUM_THREADS": "1",
                "MARBENCH": marbench_env(),
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
                                               os.environ.get("PYTHONPATH", "")])})
    return env


def run_cli(env: dict[str, str], *args: object, ok: bool = True) -> str:
    """``leaderboard ARGS`` in a subprocess; its output (an AssertionError if it exits
    otherwise than ``ok`` says)."""
    proc = subprocess.run([sys.executable, "-m", "leaderboard.cli", *map(str, args)], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if (proc.returncode == 0) != ok:
        raise AssertionError(f"leaderboard {args}: exit {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc.stdout + proc.stderr


def client(env: dict[str, str], code: str) -> dict:
    """Run ``code`` with ``api = HfApi()`` in a subprocess; the JSON its last line prints."""
    prelude = "import json\nfrom huggingface_hub import HfApi\napi = HfApi()\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
