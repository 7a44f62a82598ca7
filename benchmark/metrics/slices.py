"""The per-slice array work of scoring (SSIM maps, masked SSIM, the clinical metrics), spread
over the threads torch is allowed.

Scoring alternates torch work (the LPIPS network, the segmenter), which uses every thread torch
may use, with NumPy and OpenCV work, which runs in one thread. The latter is a third of a
warm scoring, so while it runs one of the two cores of a small machine idles. Its slices are
independent and NumPy and OpenCV release the GIL in their loops, so the slices of a batch are
computed on a small pool of threads, one phase at a time: nothing in the pool runs beside a
torch operation (torch's own threads would then compete for the same cores).

Each slice is computed by the same operations in the same order whatever thread runs it, so
the values do not depend on the number of threads (a test holds them equal).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def _pool(size: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE != size:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(size, thread_name_prefix="marbench-slices")
            _POOL_SIZE = size
        return _POOL


def threads() -> int:
    """How many threads the per-slice work uses: torch's intra-op thread count (what
    ``torch.set_num_threads`` sets)."""
    return max(1, torch.get_num_threads())


def map_slices(fn: Callable[[int], T], n: int) -> list[T]:
    """``[fn(0), ..., fn(n - 1)]``, on up to :func:`threads` threads; in this thread when one
    is allowed, when there is one slice, or when called from a pool thread itself.

    ``fn`` must touch only what belongs to its slice (and this thread's scratch arrays,
    :func:`benchmark.metrics.ssim.scratch_array`), and call no torch operation."""
    size = threads()
    if size <= 1 or n <= 1 or threading.current_thread().name.startswith("marbench-slices"):
        return [fn(i) for i in range(n)]
    return list(_pool(size).map(fn, range(n)))
