"""What every command line of the project shares: one error printer and one ``KEY=VALUE``
parser.

Every command of ``artifactgsi``, ``marbench`` and the subcommands that plug into it prints a
failure the same way, as one line ``error: <what is wrong>`` on stderr and exit code 2, never
a traceback (:func:`print_error`, :func:`cli_errors`). A full disk, a missing permission or a
read-only file system becomes a line that names the path and says what to do
(:func:`describe_error`). Options given as ``KEY=VALUE`` (``-O`` of ``marbench run``,
``apply``, ``train``...) are read by :func:`parse_key_values`; values are JSON when they
parse (``3``, ``true``, ``[1, 2]``), text otherwise.

:func:`exit_on_sigterm` turns SIGTERM into ``SystemExit``, so a terminated command unwinds
like an interrupted one and removes its temporary folders.

This module sits in ``artifactgsi`` (the lowest layer) so that ``benchmark`` and
``baselines`` can use it; it imports typer and rich only inside the functions that print.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import ArtifactGSIError
from .openmp import apply_openmp_defaults

# Every command line imports this module before torch: OpenMP's settings take effect only then.
apply_openmp_defaults()

__all__ = ["DeviceError", "KeyValueError", "check_device", "cli_errors", "describe_error",
           "exit_on_sigterm", "fail", "parse_flag_overrides", "parse_key_values", "print_error",
           "read_secret"]

#: Exit code of a command that failed on bad input, a full disk, a missing permission...
EXIT_ERROR = 2
#: Exit code of a command ended by SIGTERM (128 + the signal number, as shells report it).
EXIT_SIGTERM = 128 + int(signal.SIGTERM)


class KeyValueError(ArtifactGSIError, ValueError):
    """An option that should be ``KEY=VALUE`` (or a key file) is not usable (names the option
    and the text)."""


class DeviceError(ArtifactGSIError, ValueError):
    """A ``--device`` that torch does not know or that this machine does not have."""


# ----------------------------------------------------------------------------- KEY=VALUE


def _decode(value: str) -> Any:
    """JSON when it parses (numbers, ``true`` / ``false``, ``null``, lists), else the text."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def parse_key_values(items: Sequence[str], *, option: str = "--option") -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{"k": v}``; ``v`` is JSON-decoded when it parses.

    Keys are stripped of surrounding blanks; a later item overrides an earlier one.

    Raises:
        KeyValueError: an item without ``=`` or with an empty key (names ``option``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise KeyValueError(f"{option} {item!r}: expected KEY=VALUE")
        out[key.strip()] = _decode(value)
    return out


def parse_flag_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--input", "gsi", "--seed=1", "--flag"]`` -> ``{"input": "gsi", "seed": 1,
    "flag": True}``: each ``--KEY VALUE`` / ``--KEY=VALUE`` / bare ``--KEY`` (``true``) is the
    ``KEY=VALUE`` of :func:`parse_key_values`, dashes in keys becoming ``_``."""
    pairs: list[str] = []
    i = 0
    while i < len(args):
        a = str(args[i])
        if not a.startswith("--") or len(a) < 3:
            raise KeyValueError(f"unexpected argument {a!r}: config overrides are --KEY VALUE "
                                "or -O KEY=VALUE")
        key, eq, value = a[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                value = str(args[i + 1])
                i += 1
            else:
                value = "true"
        pairs.append(f"{key.replace('-', '_')}={value}")
        i += 1
    return parse_key_values(pairs, option="--KEY")


# ----------------------------------------------------------------------------- secrets


def read_secret(path: Path | str, option: str = "--secret-file") -> bytes:
    """The bytes of a key file (``--secret-file``); an empty (or blank) file is refused, as it
    would key nothing: a caller would otherwise fall back to a random key without a word."""
    data = Path(path).read_bytes()
    if not data.strip():
        raise KeyValueError(f"{option} {path}: the file is empty; the pseudonym key must be "
                            "non-empty (e.g. 32 random bytes: head -c 32 /dev/urandom > FILE)")
    return data


# ----------------------------------------------------------------------------- devices


def scheduler_option(verb: str = "run") -> Any:
    """The ``--scheduler`` option of every command that spreads patients over Dask workers
    (docs/scale.md); ``verb`` says what the workers do with them ("run", "score")."""
    import typer

    return typer.Option(None, help=f"a running Dask scheduler (tcp://host:8786 or a scheduler "
                                   f"file): {verb} the patients on its workers")


def check_device(device: str) -> str:
    """``device`` if torch knows it and this machine has it (``cpu``, ``cuda``, ``cuda:1``,
    ``mps``...); else :class:`DeviceError` saying which devices exist."""
    import torch

    text = str(device).strip()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N"
                          ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: CUDA is not available on this machine; "
                              "use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"--device {device}: this machine has {n} CUDA device(s) "
                              f"(cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"--device {device}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise DeviceError(f"--device {device!r}: only cpu, cuda[:N] and mps are supported")
    return text


# ----------------------------------------------------------------------------- errors


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space (or choose a folder on "
                  "another disk) and run the command again",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again",
    errno.EACCES: "permission denied; choose a folder you may write to (or fix its "
                  "permissions)",
    errno.EPERM: "operation not permitted; choose a folder you may write to (or fix its "
                 "permissions)",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder, a file was expected",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "folder is not empty",
    errno.EMFILE: "too many open files",
    errno.ENAMETOOLONG: "file name too long",
}


def describe_error(err: BaseException, path: Path | str | None = None) -> str:
    """One line for ``err``: the message of the project's errors as they are; for an
    ``OSError`` the path it concerns (its file name, else ``path``) and what to do."""
    if isinstance(err, OSError) and not isinstance(err, ArtifactGSIError) \
            and err.errno is not None:
        where = err.filename if err.filename is not None else path
        what = _OS_HINTS.get(err.errno) or (err.strerror or str(err))
        if err.filename2 is not None:
            where = f"{where} -> {err.filename2}"
        text = f"{os.fsdecode(where)}: {what}" if where is not None else what
        if err.errno not in _OS_HINTS:
            text += f" ({errno.errorcode.get(err.errno, err.errno)})"
        return text
    if isinstance(err, MemoryError):
        return (f"out of memory{f' while writing {path}' if path else ''}: use smaller "
                "inputs (fewer slices per batch, a smaller matrix) or a machine with more "
                "memory")
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    return text or type(err).__name__


def print_error(message: str, code: int = EXIT_ERROR) -> Any:
    """Print ``error: message`` on stderr (literally: ``[...]`` in paths is not markup) and
    return the ``typer.Exit`` to raise (``raise print_error(...) from None``)."""
    import typer
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}",
                                               highlight=False)
    return typer.Exit(code)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """:func:`print_error` and raise its ``typer.Exit``."""
    raise print_error(message, code)


@contextlib.contextmanager
def cli_errors(*kinds: type[BaseException], path: Path | str | None = None) -> Iterator[None]:
    """Turn the errors a user can act on into one printed line and exit code 2.

    Caught: :class:`~artifactgsi.errors.ArtifactGSIError`, every ``OSError`` (full disk, no
    permission, a file where a folder was expected... named by :func:`describe_error`, with
    ``path``, e.g. the output folder, when the error has no file name), ``MemoryError``, and
    ``kinds`` (a package's root error, e.g. ``MARBenchError``). Anything else is a bug and
    keeps its traceback.
    """
    try:
        yield
    except (ArtifactGSIError, OSError, MemoryError, *kinds) as err:
        raise print_error(describe_error(err, path)) from None


# ----------------------------------------------------------------------------- signals


def _raise_exit(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    # Worker processes (build / simulate --workers) end now, as they did when their parent
    # died at once: a process pool would otherwise run every queued task before it unwinds.
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        for child in mp.active_children():
            with contextlib.suppress(Exception):
                child.terminate()
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in this process (main thread only; elsewhere a
    no-op), so ``finally`` blocks and ``except BaseException`` clean-ups run as they do for
    Ctrl-C. Python's default is to die at once, leaving temporary folders behind. Worker
    processes of this process are terminated first; a second SIGTERM kills at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_exit)
