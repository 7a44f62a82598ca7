"""What an entry cost, measured by the board when it runs the method itself.

``leaderboard evaluate`` (hidden track) and ``leaderboard verify --reproduce`` (public track)
start the method in a process of their own, so the board measures, outside that process:

- **seconds per slice**: wall-clock seconds of the whole run (start-up, loading the weights
  and the data, the method, the harness's bookkeeping) divided by the slices it processed;
  CPU seconds are kept beside it. Nothing the method prints or writes is believed;
- **peak memory**: the largest resident set (``ru_maxrss``) of any process of the run, from
  the kernel's accounting of the reaped process tree (``wait4``);
- **parameters**: counted from the headers of the ``.safetensors`` files among the weights
  the board hands to the method (never loaded); ``None`` where the weights are not
  safetensors or the method has none.

The machine is recorded with the numbers (CPU model, core count): seconds are comparable
only between entries measured on one machine, which the page says.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # POSIX only; the board reads these records on any system
    import resource

#: Largest safetensors header read (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 2**20


class Efficiency(BaseModel):
    """Measured cost of one run of a method over a split (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    seconds_per_slice: float = Field(ge=0)
    wall_s: float = Field(ge=0)
    cpu_s: float = Field(ge=0)
    n_slices: int = Field(ge=1)
    peak_memory_mib: float = Field(ge=0)
    parameters: int | None = Field(None, ge=0)
    measured_by: str
    machine: str = ""


def machine() -> str:
    """This machine in a few words: CPU model and logical core count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def count_parameters(path: Path | str) -> int | None:
    """Parameters stored in the ``.safetensors`` files at ``path`` (a file or a folder,
    searched recursively): the sum of the element counts in their headers. ``None`` when
    there is none or one cannot be read as safetensors."""
    from safetensors import safe_open

    p = Path(path)
    files = [p] if p.is_file() else sorted(p.rglob("*.safetensors")) if p.is_dir() else []
    files = [f for f in files if f.suffix == ".safetensors" and f.is_file()]
    if not files:
        return None
    total = 0
    try:
        for f in files:
            with safe_open(str(f), framework="numpy") as st:  # reads the header only
                for key in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    n = 1
                    for d in st.get_slice(key).get_shape():
                        n *= int(d)
                    total += n
    except Exception:  # noqa: BLE001 (not safetensors: no count, never a crash)
        return None
    return total


@dataclass
class MeasuredRun:
    """A finished command with what the kernel measured of it."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    timed_out: bool = False


def wait_or_kill(proc: subprocess.Popen,
                 deadline: float) -> tuple[int, resource.struct_rusage, bool]:
    """Wait for ``proc`` (started in a new session) until ``deadline`` (``time.perf_counter``
    seconds), then kill its whole process group. Returns the wait status, the resource usage
    of the process and its reaped children (``os.wait4``), and whether it was killed."""
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, ru, False
        if time.perf_counter() > deadline:
            # the group may already be gone (its leader is a zombie until reaped below)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, status, ru = os.wait4(proc.pid, 0)
            return status, ru, True
        time.sleep(0.05)


def run_measured(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> MeasuredRun:
    """Run ``cmd`` to its end (or kill its process group after ``timeout`` s) and measure its
    wall-clock and CPU time and the peak resident memory of its largest process."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        status, ru, timed_out = wait_or_kill(proc, t0 + timeout)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return MeasuredRun(returncode=proc.returncode,
                           stdout=out.read().decode("utf-8", "replace"),
                           stderr=err.read().decode("utf-8", "replace"), wall_s=wall,
                           cpu_s=ru.ru_utime + ru.ru_stime, peak_rss_mib=ru.ru_maxrss / 1024.0,
                           timed_out=timed_out)


def efficiency_of(wall_s: float, cpu_s: float, peak_rss_mib: float, n_slices: int,
                  measured_by: str, weights: Path | None = None) -> Efficiency:
    """An :class:`Efficiency` record of a run over ``n_slices`` slices."""
    return Efficiency(seconds_per_slice=wall_s / max(n_slices, 1), wall_s=wall_s, cpu_s=cpu_s,
                      n_slices=max(n_slices, 1), peak_memory_mib=peak_rss_mib,
                      parameters=count_parameters(weights) if weights is not None else None,
                      measured_by=measured_by, machine=machine())
