"""The hidden track's sandbox, on small Python scripts (no torch, a second each).

Each check is made twice where it matters: the audit hook names the attempt, and the kernel
refuses it when the hook is bypassed with ctypes (libc's own ``connect`` / ``open``).

Skipped where this machine cannot make the namespaces (not root, no util-linux, a kernel that
refuses them), except under CI=true, where the sandbox is expected to work and the tests fail.
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from leaderboard.sandbox import (
    SANDBOX_UID,
    Limits,
    Mount,
    run_sandboxed,
    sandbox_unavailable,
)
from tests.helpers.hidden import require_sandbox


@pytest.fixture
def sandbox(tmp_path):
    require_sandbox()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "given.txt").write_text("what the method is given")
    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "hidden" / "references.txt"  # outside every mount
    secret.parent.mkdir()
    secret.write_text("the hidden references")
    mounts = [Mount(inputs, "/sandbox/inputs"), Mount(out, "/sandbox/out", writable=True)]

    def run(code: str, **limits: object):  # type: ignore[no-untyped-def]
        return run_sandboxed([sys.executable, "-c", textwrap.dedent(code)],
                             tmp_path / f"sb-{uuid.uuid4().hex[:6]}", mounts,
                             limits=Limits(**{"time_s": 60, **limits}))  # type: ignore[arg-type]

    return run, secret, out


#: libc's connect() to 192.0.2.1:80 (TEST-NET-1), bypassing Python's socket module and its
#: audit events; prints the errno.
RAW_CONNECT = """
import ctypes, ctypes.util, socket, struct
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
addr = struct.pack("!HH4s8x", socket.AF_INET, 80, socket.inet_aton("192.0.2.1"))
addr = struct.pack("=H", socket.AF_INET) + addr[2:]
buf = ctypes.create_string_buffer(addr, len(addr))
rc = libc.connect(fd, buf, len(addr))
print("raw connect", rc, ctypes.get_errno())
"""


def test_network_is_cut_by_the_kernel_and_named_by_the_hook(sandbox):
    run, _, _ = sandbox
    # Bypassing the hook: the kernel has no route (ENETUNREACH, 101); only lo, and it is down.
    r = run(RAW_CONNECT + "import os; print(sorted(os.listdir('/sys/class/net')))")
    assert r.returncode == 0, r.stderr
    assert "raw connect -1 101" in r.stdout, r.stdout
    assert "['lo']" in r.stdout
    assert r.violations == [] and r.stop is None  # not named: the hook was bypassed
    # Through Python: named, and the run fails with the reason "network".
    r = run("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=5)")
    assert r.stop is not None and r.stop[0] == "network", (r.stop, r.stderr)
    assert "192.0.2.1" in r.stop[1]
    r = run("import urllib.request\nurllib.request.urlopen('http://example.org', timeout=5)")
    assert r.stop is not None and r.stop[0] == "network"
    assert "example.org" in r.stop[1]


def test_files_outside_the_inputs_are_absent_and_named(sandbox):
    run, secret, out = sandbox
    # Bypassing the hook: the file does not exist in the sandbox's file system.
    r = run(f"""
        import ctypes, ctypes.util, os
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.open({str(secret).encode()!r}, os.O_RDONLY)
        print("raw open", fd, ctypes.get_errno())
        print(open("/sandbox/inputs/given.txt").read())
        """)
    assert r.returncode == 0, r.stderr
    assert "raw open -1 2" in r.stdout  # ENOENT: not in the sandbox's file system at all
    assert "what the method is given" in r.stdout
    # Through Python: named with the path, and refused.
    r = run(f"open({str(secret)!r}).read()")
    assert r.stop == ("file_access", f"tried to open a file outside its inputs ({secret})")
    assert "the hidden references" not in r.stdout + r.stderr
    # The inputs are read-only; the output folder is the only place it writes.
    r = run("""
        open("/sandbox/out/result.txt", "w").write("ok")
        try:
            open("/sandbox/inputs/given.txt", "w")
        except OSError as e:
            print("inputs:", e.errno)
        """)
    assert r.returncode == 0, r.stderr
    assert "inputs: 30" in r.stdout  # EROFS
    assert (out / "result.txt").read_text() == "ok"


def test_the_command_runs_as_nobody_without_privileges(sandbox):
    run, _, _ = sandbox
    r = run("""
        import os
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print(os.getuid(), os.getgid(), status["CapEff"].strip(), status["CapBnd"].strip(),
              status["NoNewPrivs"].strip())
        print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
        """)
    assert r.returncode == 0, r.stderr
    uid, gid, cap, bnd, nnp = r.stdout.splitlines()[0].split()
    assert (int(uid), int(gid)) == (SANDBOX_UID, SANDBOX_UID)
    assert int(cap, 16) == 0 and int(bnd, 16) == 0 and nnp == "1"
    assert eval(r.stdout.splitlines()[1]) == [1]  # noqa: S307 (its own PID namespace)


def test_time_limit_stops_the_whole_process_tree(sandbox, tmp_path):
    run, _, _ = sandbox
    token = uuid.uuid4().hex
    r = run(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()                      # a child that leaves the process group
            time.sleep(600)  # {token}
        time.sleep(600)
        """, time_s=3)
    assert r.timed_out and r.stop is not None and r.stop[0] == "time_limit"
    assert "3 s" in r.stop[1]
    assert r.wall_s < 30
    # Nothing of it survives (the PID namespace died with its first process).
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit()
             and token.encode() in _cmdline(p)]
    assert alive == []


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def test_memory_limit_is_named(sandbox):
    run, _, _ = sandbox
    r = run("b = bytearray(3 * 2**30)\nprint(len(b))", memory_mib=256)
    assert r.stop is not None and r.stop[0] == "memory_limit", (r.stop, r.stderr[-300:])
    ok = run("b = bytearray(64 * 2**20)\nprint(len(b))", memory_mib=256)
    assert ok.stop is None and ok.peak_rss_mib > 64  # measured by the kernel, not reported


def test_unavailable_says_why(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (sandbox_unavailable() or "")
