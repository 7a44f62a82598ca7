"""Atomic file writes and file hashes, used by every part that writes or checks files.

A file written with these helpers appears complete or not at all: the bytes go to a hidden
temporary name in the same folder, which is then renamed over the target (``os.replace`` is
atomic on POSIX and Windows within one file system). A crash leaves at most a hidden
``.<name>.tmp<pid>`` file, never a half-written target.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    tmp = temporary_sibling(Path(path))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside ``path`` (same file system, so the final rename is atomic) for
    a file written before it is renamed into place; unique per process and call."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")


def replace_dir(tmp: Path, final: Path) -> Path:
    """Move the finished folder ``tmp`` to ``final`` (both on one file system).

    An existing ``final`` is first renamed aside and removed only after ``tmp`` took its
    place, so ``final`` always holds either the old or the new complete content.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def staged_dir(tmp: Path, final: Path) -> Iterator[Path]:
    """Yield the folder ``tmp`` (made by the caller, beside ``final``) to be filled; when the
    block ends normally ``tmp`` replaces ``final`` (:func:`replace_dir`), on an exception it
    is removed and ``final`` is left as it was, so readers never see a half-written folder."""
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (UTF-8 by default)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_bytes`` chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["atomic_path", "replace_dir", "sha256_file", "temporary_sibling", "write_bytes_atomic",
           "write_text_atomic"]
