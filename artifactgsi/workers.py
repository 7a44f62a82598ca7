"""Worker processes that die with their parent.

A worker of ``build --workers N`` whose parent is killed (``kill -9``, an OOM kill, a closed
terminal) must not keep running: it would go on writing into the cache and hold the parent's
terminal. Each worker runs :func:`watch_parent` at start-up (the pool's initializer): a daemon
thread that ends the worker as soon as its parent process is gone. On Linux the kernel is also
asked to send SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``), which is immediate;
the thread covers other systems and the case where the signal is not delivered.

This module is deliberately light (standard library only): a worker imports it first, before
the heavy modules of its task, so even a worker still starting up exits promptly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

#: Seconds between two checks of the parent (the worst-case delay of an orphan's exit).
POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the thread below does the job
        pass


def watch_parent(parent_pid: int) -> None:
    """End this process (exit status 1) once process ``parent_pid`` is no longer its parent."""
    _pdeathsig()  # first, then check: a parent that died in between is caught below
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)  # no cleanup: the parent's build is gone, nothing to hand back
            time.sleep(POLL_S)

    threading.Thread(target=loop, name="artifactgsi-watch-parent", daemon=True).start()
