"""``artifactgsi download`` when the connection keeps dropping or the server is gone: a
message that says what happened and how to resume, exit status 2, no traceback. Runs the
real ``huggingface_hub`` client against the local fake Hub (127.0.0.1), in a subprocess."""

from __future__ import annotations

import socket

import pytest

from tests.helpers.fakehub import REPO_ID

CLI = """
import sys
from artifactgsi.cli import app
sys.argv = ["artifactgsi", "download"]
app()
"""


def _check_clean_failure(out: dict) -> str:
    err = out["stderr"]
    assert "Traceback" not in err, err
    assert "error:" in err, err
    assert "again" in err and "resume" in err, err  # says how to resume
    return err


def test_hub_download_connection_keeps_dropping(fake_hub, hub_client, dataset_folder):
    folder, _ = dataset_folder
    fake_hub.add_folder(REPO_ID, folder)
    victim = "pairs/train-00000-of-00001.parquet"
    fake_hub.inject_fault(REPO_ID, victim, "drop", after_bytes=100, times=50)
    out = hub_client(CLI, expect_error=True)
    err = _check_clean_failure(out)
    assert "connection" in err.lower(), err


def test_hub_download_server_gone(fake_hub, hub_client, dataset_folder):
    folder, _ = dataset_folder
    fake_hub.add_folder(REPO_ID, folder)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = hub_client(CLI, expect_error=True, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    err = _check_clean_failure(out)
    assert f"127.0.0.1:{port}" in err, err


@pytest.mark.parametrize("where", ["./typo", "no/such/folder/", "/nonexistent-abc"])
def test_hub_info_of_a_missing_folder_says_so(hub_client, where):
    out = hub_client(f"""
        import sys
        from artifactgsi.cli import app
        sys.argv = ["artifactgsi", "info", {where!r}]
        app()
    """, expect_error=True)
    err = out["stderr"]
    assert "Traceback" not in err
    assert "no such folder" in err and where.rstrip("/") in err, err
    assert "repo" not in err.lower().replace("repo id", ""), err  # not a repo-id validation error
