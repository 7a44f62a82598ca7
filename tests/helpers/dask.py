"""Dask test helpers: a local two-worker cluster without dashboard or logs, and a worker
plugin that kills one worker in the middle of a task (tests that a killed task is retried
and leaves nothing half-written)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distributed import Client, LocalCluster, WorkerPlugin


@contextmanager
def local_cluster(n_workers: int = 2) -> Iterator[tuple[LocalCluster, Client]]:
    """A local cluster of one-thread worker processes and its client, closed at exit."""
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=0,
                      scheduler_kwargs={"dashboard_address": ":0"},
                      silence_logs=logging.CRITICAL) as c, Client(c) as client:
        yield c, client


class KillOnce(WorkerPlugin):
    """On every worker: replace ``module.name`` by a wrapper that, on the first call in the
    whole cluster (``marker`` is created exclusively), runs ``partial`` and ends the worker
    process without any cleanup. ``partial``: ``"call"`` lets the call run (its first writes
    happen) before the process dies; anything else begins a temporary file next to the
    call's first argument (a path) instead."""

    def __init__(self, module: str, name: str, marker: str, partial: str) -> None:
        self.module, self.name, self.marker, self.partial = module, name, marker, partial

    def setup(self, worker) -> None:  # type: ignore[no-untyped-def]
        import importlib

        mod = importlib.import_module(self.module)
        orig = getattr(mod, self.name)
        marker, partial = self.marker, self.partial

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return orig(*args, **kwargs)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            if partial == "call":
                orig(*args, **kwargs)
            else:
                path = Path(args[0])
                (path.parent / f".{path.name}.tmp{os.getpid()}-dead").write_bytes(b"half")
            os._exit(1)

        setattr(mod, self.name, wrapper)
