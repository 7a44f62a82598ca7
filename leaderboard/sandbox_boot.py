"""The sandbox's ``sitecustomize``: an audit hook that names what the sandbox forbids.

Copied by :mod:`leaderboard.sandbox` into the sandbox as ``/sandbox/boot/sitecustomize.py``,
first on ``PYTHONPATH``, so every Python process started there (the harness, the method, pip,
a build backend, multiprocessing workers) installs the hook before any other code runs. It is
never imported by the board itself.

The hook (:pep:`578`; it cannot be removed once added) reports, on the file descriptor
``$MARBENCH_SANDBOX_REPORT_FD`` that only the board reads, and then refuses with
``PermissionError``:

- ``open`` of a path outside the folders mounted in the sandbox (``$MARBENCH_SANDBOX_ALLOWED``):
  "file_access";
- reading a path inside them that does not exist there (``/tmp``, ``/proc`` and ``/dev`` are
  the sandbox's own): reported as "missing", not refused (the open fails by itself); the
  board names it as file access when that path is a file of its own machine, so probing
  e.g. ``/tmp/...`` or another process's ``/proc/<pid>`` is named, and a program that merely
  looks for an optional file of its own is not;
- connecting an internet socket (``AF_INET``, ``AF_INET6``, ``AF_PACKET``) or sending on one
  to an address, or resolving a host name: "network". (Creating or binding a socket is not
  named: libraries probe for IPv6 support that way, e.g. pip's urllib3, and nothing leaves.)

The kernel refuses all of these anyway (no such file in the sandbox, no network interface);
the hook only gives the refusal a name. Code that bypasses Python's audit events (``ctypes``,
a program that is not Python) is still refused by the kernel, without a name.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def _install() -> None:
    try:
        fd = int(os.environ.get("MARBENCH_SANDBOX_REPORT_FD", "-1"))
        allowed = tuple(str(a).rstrip("/") or "/" for a in
                        json.loads(os.environ.get("MARBENCH_SANDBOX_ALLOWED", "[]")))
    except ValueError:
        return
    if fd < 0:
        return
    inet = {socket.AF_INET, socket.AF_INET6} | (
        {socket.AF_PACKET} if hasattr(socket, "AF_PACKET") else set())
    resolvers = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                 "socket.gethostbyaddr", "socket.getnameinfo"}
    addressed = {"socket.connect", "socket.sendto", "socket.sendmsg"}
    prefixes = tuple(a + "/" for a in allowed)
    cwd = ["/"]

    def report(kind: str, detail: str) -> None:
        line = json.dumps({"kind": kind, "detail": detail[:300], "pid": os.getpid()})
        try:
            os.write(fd, (line + "\n").encode("utf-8", "replace"))
        except OSError:
            pass

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def absolute(path: object) -> str | None:
        if isinstance(path, int):  # an open file descriptor: already inside
            return None
        try:
            p = os.fsdecode(path)  # type: ignore[arg-type]
        except TypeError:
            return None
        if not p.startswith("/"):
            try:
                cwd[0] = os.getcwd()
            except OSError:
                pass
            p = os.path.join(cwd[0], p)
        return os.path.normpath(p)

    def reading(mode: object, flags: object) -> bool:
        if isinstance(mode, str):
            return not any(c in mode for c in "wax+")
        return isinstance(flags, int) and not flags & write_flags

    def hook(event: str, args: tuple) -> None:  # type: ignore[type-arg]
        if event == "open":
            p = absolute(args[0]) if args and args[0] is not None else None
            if p is None:
                return
            if not (p in allowed or p.startswith(prefixes)):
                report("file_access", p)
                raise PermissionError(f"sandbox: {args[0]!r} is outside the method's inputs")
            if reading(args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else 0) \
                    and not os.path.exists(p):
                report("missing", p)
        elif event in addressed:
            sock = args[0] if args else None
            if getattr(sock, "family", None) in inet:
                report("network", f"{event.split('.')[1]} {args[1]!r}")
                raise PermissionError("sandbox: no network")
        elif event in resolvers:
            report("network", f"{event.split('.')[1]} {args[0]!r}" if args else event)
            raise PermissionError("sandbox: no network")

    sys.addaudithook(hook)


_install()
del _install
