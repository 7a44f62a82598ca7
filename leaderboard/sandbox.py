"""Run an untrusted command with no network, no file but those it is given, and limits.

The hidden track runs code the maintainers did not write (a submitted method, and the build
backend that installs it). :func:`run_sandboxed` runs such a command so that:

- **no network**: a new network namespace (``unshare --net``) with only a loopback interface
  that is down, so every connection fails in the kernel (``ENETUNREACH``);
- **no other file**: a new mount namespace whose root is an empty tmpfs holding read-only bind
  mounts of what the command needs (the system's ``/usr``, libraries and ``/etc``, the Python
  interpreter and the project's environment, the project's packages) and the folders it is
  given (:class:`Mount`), then ``pivot_root`` into it and the old root detached. Everything
  else on this machine (the hidden references, the board, the maintainers' secrets, ``/root``,
  other users' files) is not in the command's file system at all;
- **no privilege**: the command runs as ``nobody`` (uid / gid 65534) with no capability, an
  empty capability bounding set and ``no_new_privs`` (setuid programs do nothing), so it can
  neither mount, nor ``mknod`` a disk, nor undo the above;
- **its own processes only**: a new PID namespace (its ``/proc`` lists only its processes);
  when its first process ends, or the time limit is reached, every process in it is killed;
- **limits**: a wall-clock limit (the whole process group and the namespace are killed),
  a memory limit (a memory cgroup when this machine lets us make one, and ``RLIMIT_AS`` on the
  address space in any case), ``RLIMIT_FSIZE`` on each file written, ``RLIMIT_NPROC`` on
  processes and threads, tmpfs sizes for ``/tmp`` and ``/dev/shm``.

On top, every Python process started in the sandbox installs an audit hook
(``sitecustomize`` from :mod:`leaderboard.sandbox_boot`) that *names* what the kernel would
refuse: opening a file outside the mounted folders (or reading one of this machine's files
that the sandbox does not have, e.g. under its own ``/tmp``), connecting an internet socket
or resolving a name. The hook reports on a pipe that only this process reads; the command
then fails with the reason. The hook gives the name, the kernel gives the guarantee: a method
that evades the hook (``ctypes``, a non-Python child) still finds no network and no file,
it just is not named. See docs/board.md, "What the sandbox guarantees".

Linux only, run as root (to create the namespaces and mounts); :func:`sandbox_unavailable`
says why not where it cannot work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .efficiency import wait_or_kill
from .errors import LeaderboardError

#: What the setup script prints when a step fails (with a per-run token).
SETUP_FAILED = "marbench-sandbox-setup-failed"
#: The unprivileged user and group the command runs as (``nobody`` / ``nogroup``).
SANDBOX_UID = 65534
#: Address space torch and its libraries reserve without using (about 3.5 GiB at import on
#: x86-64 Linux with torch 2.x): added to the memory limit for ``RLIMIT_AS``, which counts
#: reserved address space, not resident memory.
ADDRESS_SPACE_HEADROOM_MIB = 4096
#: Processes and threads the sandbox user may have at once (``RLIMIT_NPROC``).
MAX_PROCESSES = 512
#: Where the boot files (sitecustomize) appear in the sandbox.
BOOT_DIR = "/sandbox/boot"
#: Largest text kept of the command's stdout / stderr, and of the hook's reports.
TAIL_CHARS = 4000
MAX_REPORT_BYTES = 1 << 20
#: System folders bound read-only (or re-created as the same symbolic link).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
#: The system's configuration (the dynamic loader's cache, users, time zone; pip and
#: platform read the distribution's files): read-only, and as ``nobody`` only what is
#: world-readable (not /etc/shadow, not private keys).
_ETC = "/etc"
#: Device files bound into the sandbox's own /dev (no disk, no terminal of this machine).
_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
#: The project's packages the harness needs inside (found, never imported, here).
PROJECT_PACKAGES = ("artifactgsi", "benchmark", "baselines")

Stop = Literal["network", "file_access", "time_limit", "memory_limit", "crashed"]


class SandboxUnavailable(LeaderboardError, RuntimeError):
    """The sandbox cannot be made on this machine (the message says what failed)."""


@dataclass(frozen=True)
class Mount:
    """A folder (or file) of this machine shown at ``target`` inside the sandbox."""

    source: Path
    target: str
    writable: bool = False


@dataclass(frozen=True)
class Limits:
    """What the command may use: seconds of wall-clock time, MiB of memory (resident, by
    cgroup where possible; address space plus :data:`ADDRESS_SPACE_HEADROOM_MIB` always),
    MiB of ``/tmp``, MiB per written file, and the number of threads asked of torch /
    OpenMP (``OMP_NUM_THREADS``)."""

    time_s: float = 3600.0
    memory_mib: int = 8192
    tmp_mib: int = 1024
    file_mib: int = 4096
    threads: int = 1


@dataclass(frozen=True)
class Violation:
    """Something the command tried that the sandbox forbids: ``kind`` is ``network`` or
    ``file_access``; ``detail`` what exactly (the address, the path)."""

    kind: Literal["network", "file_access"]
    detail: str


@dataclass
class SandboxResult:
    """How the command ended and what it used (all measured here, never by the command)."""

    returncode: int | None
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    timed_out: bool
    oom_killed: bool
    stdout: str
    stderr: str
    violations: list[Violation] = field(default_factory=list)
    memory_enforced_by: str = "rlimit"
    limits: Limits = field(default_factory=Limits)

    @property
    def stop(self) -> tuple[Stop, str] | None:
        """``None`` when the command ran to a clean end; else why it was stopped or failed,
        as (reason code, a sentence naming what happened)."""
        nets = [v.detail for v in self.violations if v.kind == "network"]
        files = [v.detail for v in self.violations if v.kind == "file_access"]
        if nets:
            return "network", (f"tried to reach the network ({'; '.join(nets[:3])}); the "
                               "sandbox has no network")
        if files:
            return "file_access", (f"tried to open a file outside its inputs "
                                   f"({'; '.join(files[:3])})")
        if self.timed_out:
            return "time_limit", (f"ran past its time limit of {self.limits.time_s:g} s and "
                                  "was stopped")
        text = self.stderr + self.stdout
        if self.oom_killed or "MemoryError" in text or "std::bad_alloc" in text \
                or "Cannot allocate memory" in text:
            return "memory_limit", (f"ran out of its memory limit of "
                                    f"{self.limits.memory_mib} MiB")
        if self.returncode != 0:
            how = (f"was killed by signal {-self.returncode}" if self.returncode
                   and self.returncode < 0 else f"exited with status {self.returncode}")
            return "crashed", f"{how}: {_tail(text, 600)}"
        return None


def _tail(text: str, n: int = TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= n else "…" + text[-n:]


# ----------------------------------------------------------------------------- availability


def sandbox_unavailable() -> str | None:
    """Why the sandbox cannot run here (``None``: it can): not Linux, not root, a tool
    missing, or the kernel refusing the namespaces (the message quotes it)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces; this is {sys.platform}"
    if os.geteuid() != 0:
        return ("the sandbox needs root to create its namespaces and mounts "
                f"(running as uid {os.geteuid()})")
    for tool in ("unshare", "setpriv", "pivot_root", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"`{tool}` (util-linux) is not installed"
    try:
        r = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                            "--propagation", "private", "--", "true"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare --mount --net --pid` could not run ({e})"
    if r.returncode != 0:
        return (f"the kernel refuses new namespaces: `unshare --mount --net --pid --fork true` "
                f"exited {r.returncode}: {_tail(r.stderr, 300)}")
    return None


# ----------------------------------------------------------------------------- what is shown


def _covered(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def runtime_mounts() -> tuple[list[Mount], list[tuple[str, str]], list[str]]:
    """What every sandboxed Python needs, read-only: (mounts, symbolic links to re-create as
    (path, target), PYTHONPATH entries for the project's packages).

    The project's packages are found with :func:`importlib.util.find_spec`, which locates a
    top-level package without importing it (this module never imports the harness)."""
    mounts: list[Mount] = []
    links: list[tuple[str, str]] = []
    shown: list[str] = []

    def add(path: str | Path) -> None:
        p = str(Path(path).resolve())
        if not Path(p).exists() or _covered(p, shown):
            return
        shown.append(p)
        mounts.append(Mount(Path(p), p))

    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            links.append((d, os.readlink(d)))
        elif os.path.isdir(d):
            add(d)
    add(_ETC)
    add(sys.base_prefix)
    add(sys.prefix)
    pythonpath: list[str] = []
    for pkg in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(list(spec.submodule_search_locations)[0]).resolve()
        add(folder)
        if str(folder.parent) not in pythonpath:
            pythonpath.append(str(folder.parent))
    return mounts, links, pythonpath


def _boot_folder(work: Path) -> Path:
    """``work/boot/sitecustomize.py``: the audit hook every Python in the sandbox loads."""
    boot = work / "boot"
    boot.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).with_name("sandbox_boot.py")
    shutil.copyfile(source, boot / "sitecustomize.py")
    os.chmod(boot, 0o755)
    os.chmod(boot / "sitecustomize.py", 0o644)
    return boot


def _script(root: Path, mounts: list[Mount], links: list[tuple[str, str]], env: dict[str, str],
            argv: list[str], cwd: str, limits: Limits, token: str) -> str:
    """The shell script run as PID 1 of the new namespaces: build the root, pivot into it,
    drop every privilege and exec ``argv``."""
    q = shlex.quote
    r = q(str(root))
    lines = [f"R={r}",
             "mount -t tmpfs -o size=16m,mode=755 marbench-sandbox \"$R\"",
             # The private /tmp first, so that what is bound below it (a project or an
             # environment that lives under the host's /tmp) lands on top of it, not under it.
             "mkdir -p \"$R/tmp\"",
             f"mount -t tmpfs -o size={limits.tmp_mib}m,mode=1777,nosuid,nodev marbench-tmp "
             "\"$R/tmp\""]
    for path, target in links:
        lines.append(f"ln -s {q(target)} \"$R\"{q(path)}")
    for m in mounts:
        dst = f"\"$R\"{q(m.target)}"
        if m.source.is_dir():
            lines.append(f"mkdir -p {dst}")
        else:
            lines.append(f"mkdir -p \"$(dirname {dst})\" && : > {dst}")
        opts = "nosuid,nodev" if m.writable else "ro,nosuid,nodev"
        lines.append(f"mount --bind -o {opts} {q(str(m.source))} {dst}")
    lines += [
        "mkdir -p \"$R/proc\" \"$R/dev\" \"$R/sys\"",
        "mount -t proc -o nosuid,nodev,noexec proc \"$R/proc\"",
        # A sysfs of its own network namespace (the host's would list the host's devices).
        "mount -t sysfs -o ro,nosuid,nodev,noexec sysfs \"$R/sys\"",
        "mount -t tmpfs -o size=1m,mode=755,nosuid marbench-dev \"$R/dev\"",
    ]
    for d in _DEVICES:
        if os.path.exists(d):
            lines.append(f": > \"$R\"{q(d)} && mount --bind {q(d)} \"$R\"{q(d)}")
    lines += [
        "mkdir -p \"$R/dev/shm\" && mount -t tmpfs -o size=256m,mode=1777,nosuid,nodev "
        "marbench-shm \"$R/dev/shm\"",
        "ln -s /proc/self/fd \"$R/dev/fd\"",
        "cd \"$R\" && mkdir .old && pivot_root . .old && umount -l /.old && rmdir /.old",
        "mount -o remount,bind,ro /",
        f"cd {q(cwd)}",
    ]
    # Every setup step must succeed; a failure says which step, with this run's token.
    lines = [f"{line} || fail {q(line[:80])}" for line in lines]
    lines.insert(0, f"fail() {{ echo {q(SETUP_FAILED)}-{token}: \"$1\" >&2; exit 97; }}")
    env_args = " ".join(q(f"{k}={v}") for k, v in sorted(env.items()))
    lines.append(f"exec setpriv --reuid={SANDBOX_UID} --regid={SANDBOX_UID} --clear-groups "
                 "--inh-caps=-all --bounding-set=-all --no-new-privs -- "
                 f"env -i {env_args} {' '.join(q(a) for a in argv)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- memory cgroup


class _MemoryCgroup:
    """A memory cgroup (v2, or v1's ``memory`` controller) with a limit, for one command.

    Hand-written: no library here makes a transient cgroup without systemd. Where this
    machine does not let us make one, :meth:`create` returns ``None`` and the limit is the
    address-space rlimit alone."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @classmethod
    def create(cls, limit_bytes: int) -> _MemoryCgroup | None:
        name = f"marbench-sandbox-{uuid.uuid4().hex[:12]}"
        try:
            own = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return None
        v2_root = Path("/sys/fs/cgroup")
        try:
            if (v2_root / "cgroup.controllers").is_file():
                rel = next(line.split(":", 2)[2] for line in own if line.startswith("0::"))
                parent = v2_root / rel.lstrip("/")
                if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                    return None
                d = parent / name
                d.mkdir()
                (d / "memory.max").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):
                    (d / "memory.swap.max").write_text("0")
                return cls(d, 2)
            v1_root = v2_root / "memory"
            rel = next((line.split(":", 2)[2] for line in own
                        if line.split(":", 2)[1] == "memory"), None)
            if rel is None or not v1_root.is_dir():
                return None
            d = v1_root / rel.lstrip("/") / name
            d.mkdir()
            (d / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):  # no swap accounting on many kernels
                (d / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
            return cls(d, 1)
        except (OSError, StopIteration, IndexError):
            return None

    def join(self) -> None:
        """Move the calling process into the cgroup (called in the child before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_killed(self) -> bool:
        try:
            if self.version == 2:
                events = (self.path / "memory.events").read_text()
                return any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0
                           for line in events.splitlines())
            ctl = (self.path / "memory.oom_control").read_text()
            killed = any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0
                         for line in ctl.splitlines())
            return killed or int((self.path / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError, IndexError):
            return False

    def remove(self) -> None:
        for _ in range(50):  # the last processes may take a moment to leave
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


# ----------------------------------------------------------------------------- running


def _read_reports(fd: int, sink: list[bytes]) -> None:
    total = 0
    with os.fdopen(fd, "rb", buffering=0) as f:
        while chunk := f.read(65536):
            if total < MAX_REPORT_BYTES:
                sink.append(chunk[:MAX_REPORT_BYTES - total])
            total += len(chunk)


def _parse_reports(data: bytes) -> list[Violation]:
    """The hook's reports as violations. A "missing" read (a path inside the sandbox's
    folders that is not there) counts as file access when the path is a file of this
    machine: the command reached for something it was not given."""
    out: list[Violation] = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            d = json.loads(line)
            kind = d["kind"]
            detail = str(d["detail"])[:300]
        except (ValueError, KeyError, TypeError):
            continue
        if kind == "missing":
            if not detail.startswith("/") or not os.path.lexists(detail):
                continue
            kind = "file_access"
        if kind in ("network", "file_access"):
            v = Violation(kind, detail)
            if v not in out:
                out.append(v)
    return out


def run_sandboxed(argv: list[str], work: Path, mounts: list[Mount], *,
                  limits: Limits | None = None, env: dict[str, str] | None = None,
                  pythonpath: list[str] | None = None, cwd: str = "/tmp") -> SandboxResult:
    """Run ``argv`` (a command inside the sandbox; the project's Python is at
    ``sys.executable``) with ``mounts`` shown and nothing else (see the module docstring).

    ``work`` is a private folder of this machine for the sandbox's own files (its root mount
    point and boot files). ``env``: extra environment variables. Everything returned is
    measured here: wall-clock and CPU seconds, the peak resident memory of the largest
    process (``ru_maxrss`` of the reaped process tree), violations reported by the hook.

    Raises:
        SandboxUnavailable: the namespaces could not be made (the message says why).
    """
    limits = limits or Limits()
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    root.mkdir(exist_ok=True)
    base, links, project_path = runtime_mounts()
    boot = _boot_folder(work)
    shown = [*base, Mount(boot, BOOT_DIR), *mounts]
    allowed = sorted({m.target for m in shown} | {"/proc", "/sys", "/dev", "/tmp"})
    read_fd, write_fd = os.pipe()
    child_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp/home",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PYTHONPATH": ":".join([BOOT_DIR, *project_path, *(pythonpath or [])]),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": str(limits.threads),
        "MKL_NUM_THREADS": str(limits.threads),
        "OPENBLAS_NUM_THREADS": str(limits.threads),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": "/tmp/home/huggingface",
        "XDG_CACHE_HOME": "/tmp/home/.cache",
        "MPLCONFIGDIR": "/tmp/home/matplotlib",
        "MARBENCH_REFERENCE_CACHE": "/tmp/home/marbench-reference-cache",
        "PIP_CONFIG_FILE": os.devnull,
        "MARBENCH_SANDBOX_REPORT_FD": str(write_fd),
        "MARBENCH_SANDBOX_ALLOWED": json.dumps(allowed),
        **(env or {}),
    }
    # Files the sandbox user must write: its own, nobody else's.
    for m in mounts:
        if m.writable:
            for p in [m.source, *m.source.rglob("*")]:
                os.lchown(p, SANDBOX_UID, SANDBOX_UID)
    token = uuid.uuid4().hex
    script = _script(root, shown, links, child_env, argv, cwd, limits, token)
    mem = limits.memory_mib * 2**20
    cgroup = _MemoryCgroup.create(mem)
    address_space = (limits.memory_mib + ADDRESS_SPACE_HEADROOM_MIB) * 2**20

    def preexec() -> None:  # in the child, before exec: limits that every process inherits
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mib * 2**20,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Processes and threads of the sandbox user (nobody) on this machine: no fork bomb.
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
        if cgroup is not None:
            cgroup.join()

    cmd = ["unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child",
           "--propagation", "private", "--", "sh", "-c", script]
    sink: list[bytes] = []
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(write_fd,), start_new_session=True,
                                preexec_fn=preexec)  # noqa: PLW1509 (no threads yet)
    except OSError as e:
        os.close(read_fd)
        os.close(write_fd)
        if cgroup is not None:
            cgroup.remove()
        raise SandboxUnavailable(f"cannot start `unshare`: {e}") from None
    os.close(write_fd)
    reader = threading.Thread(target=_read_reports, args=(read_fd, sink), daemon=True)
    reader.start()
    out_chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def drain(stream, key: str) -> None:  # type: ignore[no-untyped-def]
        keep = 0
        for chunk in iter(lambda: stream.read(65536), b""):
            out_chunks[key].append(chunk)
            keep += len(chunk)
            while keep > 4 * TAIL_CHARS and len(out_chunks[key]) > 1:
                keep -= len(out_chunks[key].pop(0))

    drains = [threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
              threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True)]
    for t in drains:
        t.start()
    status, rusage, timed_out = wait_or_kill(proc, t0 + limits.time_s)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in drains:
        t.join(timeout=10)
    reader.join(timeout=10)
    oom = cgroup.oom_killed() if cgroup is not None else False
    if cgroup is not None:
        cgroup.remove()
    stdout = b"".join(out_chunks["out"]).decode("utf-8", "replace")
    stderr = b"".join(out_chunks["err"]).decode("utf-8", "replace")
    if proc.returncode == 97 and f"{SETUP_FAILED}-{token}" in stderr:
        raise SandboxUnavailable(f"the sandbox could not be set up: "
                                 f"{_tail(stderr.replace(f'-{token}', ''), 600)}")
    return SandboxResult(
        returncode=proc.returncode, wall_s=wall,
        cpu_s=(rusage.ru_utime + rusage.ru_stime) if rusage else 0.0,
        peak_rss_mib=(rusage.ru_maxrss / 1024.0) if rusage else 0.0,
        timed_out=timed_out, oom_killed=oom, stdout=_tail(stdout), stderr=_tail(stderr),
        violations=_parse_reports(b"".join(sink)),
        memory_enforced_by=(f"cgroup v{cgroup.version} + rlimit" if cgroup else "rlimit"),
        limits=limits)
