"""Patient tasks on Dask: one process per worker on this machine, or a running cluster.

``simulate``, ``build`` and ``marbench run`` cut their work into one task per patient and run
the tasks through :func:`run_tasks`:

* one worker and no scheduler: in this process, one patient after the other;
* ``workers=N``: a Dask ``LocalCluster`` of N worker processes with one thread each (Dask
  sets ``OMP_NUM_THREADS=1`` and its kin before it spawns them), closed at the end;
* ``scheduler=ADDRESS``: a running Dask scheduler (``tcp://host:8786``), or the JSON
  scheduler file that ``dask scheduler --scheduler-file F`` writes (the usual way on SLURM /
  PBS, also with ``dask-jobqueue``). Its workers must run the same versions of this package,
  torch and numpy (checked on connect), and see the input and output folders at the same
  paths (a shared file system): tasks read and write files, only small records come back.

Results come back in submission order whatever order the tasks finish in, so the caller's
merge is deterministic. A worker that dies mid-task (killed, out of memory) is replaced and
its task runs again elsewhere, up to Dask's ``distributed.scheduler.allowed-failures`` times
(3 by default); every task writes its outputs under temporary names and renames them at the
end, so a killed task leaves no half-written output. An exception raised by a task is not
retried: it is re-raised here with its own type and message (a bad patient is a bad patient
on every worker).

Worker processes end with the process that started them (Dask keeps a pipe open to each and
a worker exits as soon as it closes), so a killed ``build`` leaves no orphans behind.

Dask is imported only when a cluster is used: a serial run does not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import ArtifactGSIError, ConfigError

T = TypeVar("T")
R = TypeVar("R")

#: Seconds to wait for a remote scheduler to answer.
CONNECT_TIMEOUT_S = 30


class TaskError(ArtifactGSIError, OSError):
    """A task could not be run: the scheduler is unreachable, the workers run other code, or
    workers kept dying on one task (the message names it). An ``OSError``, like other
    failures of the machine rather than of the data."""


def check_workers(workers: int, scheduler: str | None = None) -> None:
    """Raise :class:`~artifactgsi.errors.ConfigError` for a bad ``--workers`` /
    ``--scheduler`` pair."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise ConfigError(f"--scheduler must be an address (tcp://host:8786) or a scheduler "
                          f"file, got {scheduler!r}")


def uses_cluster(workers: int, scheduler: str | None) -> bool:
    """Whether :func:`run_tasks` would run tasks on Dask (not in this process)."""
    return scheduler is not None or workers > 1


def code_versions() -> dict[str, str]:
    """Versions that decide the bytes a task writes (compared between client and workers)."""
    import importlib.metadata as md

    out = {}
    for dist in ("artifactgsi", "torch", "numpy", "pydicom", "SimpleITK", "pyarrow",
                 "datasets"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _connect(scheduler: str):
    from distributed import Client

    path = Path(scheduler).expanduser()
    is_file = "://" not in scheduler and (path.is_file() or path.suffix == ".json")
    if is_file and not path.is_file():
        raise TaskError(f"--scheduler {scheduler}: no such scheduler file (start one with "
                        "`dask scheduler --scheduler-file FILE`)")
    try:
        if is_file:
            return Client(scheduler_file=str(path), timeout=CONNECT_TIMEOUT_S)
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as e:
        raise TaskError(f"--scheduler {scheduler}: cannot reach the Dask scheduler "
                        f"({type(e).__name__}: {e}); is `dask scheduler` running there?") \
            from None


def _check_remote(client) -> None:
    mine = code_versions()
    theirs = client.run(code_versions)
    if not theirs:
        raise TaskError("the Dask cluster has no worker yet; start workers (`dask worker "
                        "ADDRESS`, or scale a dask-jobqueue cluster) and run again")
    for worker, versions in sorted(theirs.items()):
        diff = [f"{k} {versions.get(k)} (here {v})" for k, v in mine.items()
                if versions.get(k) != v]
        if diff:
            raise TaskError(f"Dask worker {worker} runs other code: {', '.join(diff)}; the "
                            "outputs would not be the same bytes. Install the same versions "
                            "on every worker")


@contextlib.contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler`` if given, else on a new ``LocalCluster`` of
    ``workers`` single-threaded processes (closed on exit)."""
    from distributed import Client, LocalCluster

    check_workers(workers, scheduler)
    cluster = None
    if scheduler is not None:
        client = _connect(scheduler)
        try:
            _check_remote(client)
        except BaseException:
            client.close()
            raise
    else:
        # memory_limit=0: no nanny kills on a memory estimate; a task holds one patient, and
        # a shared machine's other users would make any fixed share wrong.
        # No dashboard; the scheduler's small HTTP server on any free port (the default,
        # 8787, is often taken on a shared machine, which only makes a warning). Dask's own
        # log is silenced: a task's failure reaches the caller as an exception, and workers
        # closing with the cluster log harmless heartbeat errors.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, memory_limit=0,
                               silence_logs=logging.CRITICAL,
                               scheduler_kwargs={"dashboard_address": ":0"})
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_tasks(fn: Callable[[T], R], items: Sequence[T], names: Sequence[str], *,
              workers: int = 1, scheduler: str | None = None,
              on_done: Callable[[int, R], None] | None = None) -> list[R]:
    """``[fn(item) for item in items]``, as Dask tasks when asked (see the module docstring).

    Args:
        fn: a module-level function (workers import it by name).
        items: one argument per task (picklable; small: the data stays in files).
        names: one label per task (a patient id), for keys and error messages.
        workers: local worker processes when ``scheduler`` is ``None``; 1 = this process.
        scheduler: address or scheduler file of a running Dask cluster.
        on_done: called in this process as ``on_done(index, result)`` when a task ends (in
            completion order: progress bars).

    Returns:
        The results in the order of ``items``.

    Raises:
        TaskError: unreachable scheduler, other code on the workers, or a task whose
            workers died ``allowed-failures`` + 1 times. An exception raised by ``fn``
            itself is re-raised as is; the other tasks are cancelled.
    """
    check_workers(workers, scheduler)
    if len(items) != len(names):
        raise ValueError(f"run_tasks: {len(items)} items but {len(names)} names")
    if not uses_cluster(workers, scheduler):
        results = []
        for i, item in enumerate(items):
            results.append(fn(item))
            if on_done:
                on_done(i, results[-1])
        return results
    if not items:
        return []
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    token = uuid.uuid4().hex[:8]
    out: list[Any] = [None] * len(items)
    with dask_client(workers, scheduler) as client:
        futures = [client.submit(fn, item, key=f"{fn.__name__}-{name}-{token}", pure=False)
                   for item, name in zip(items, names, strict=True)]
        at = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                i = at[fut.key]
                try:
                    out[i] = fut.result()
                except KilledWorker:
                    import dask

                    n = dask.config.get("distributed.scheduler.allowed-failures")
                    times = f"{n + 1} time" + ("s" if n else "")
                    raise TaskError(f"{names[i]}: the workers running this task died "
                                    f"{times} (out of memory? killed?); nothing of it "
                                    "was kept. Fix the cause and rerun: finished patients "
                                    "are kept") from None
                fut.release()
                if on_done:
                    on_done(i, out[i])
        except BaseException:
            client.cancel(futures)
            raise
    return out


__all__ = ["CONNECT_TIMEOUT_S", "TaskError", "check_workers", "code_versions", "dask_client",
           "run_tasks", "uses_cluster"]
