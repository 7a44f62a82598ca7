"""Rows streamed to one Parquet file that appears only when complete.

The runner's predictions and the AAPM protocol's structures file are both written a batch at
a time while a run scores (the images never all sit in memory), under a temporary name that is
renamed into place on :meth:`ParquetStream.close` and deleted on :meth:`ParquetStream.abort`:
an interrupted run leaves no half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artifactgsi.fileio import temporary_sibling


class ParquetStream:
    """A Parquet file (Hugging Face ``datasets`` features) written in batches.

    Args:
        path: the file's final name; its folder is created on the first write.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows = 0
        self._writer: Any = None
        self._tmp: Path | None = None

    def write(self, features: Callable[[], Any], batch: dict[str, list[Any]]) -> None:
        """Append ``batch`` (column -> values, all of one length); ``features()`` gives the
        file's ``datasets.Features`` and is called once, on the first batch."""
        if self._writer is None:
            from datasets.arrow_writer import ParquetWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = temporary_sibling(self.path)
            self._writer = ParquetWriter(path=str(self._tmp), features=features())
        self._writer.write_batch(batch)
        self.rows += len(next(iter(batch.values()), []))

    def close(self) -> bool:
        """Finish the file and rename it into place; False when nothing was written."""
        if self._writer is None or self._tmp is None:
            return False
        self._writer.finalize()
        self._writer = None
        os.replace(self._tmp, self.path)
        self._tmp = None
        return True

    def abort(self) -> None:
        """Drop what was written (the final name is never created)."""
        if self._writer is not None:
            try:
                self._writer.finalize()
            except Exception:  # best effort: the file is removed anyway
                pass
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
