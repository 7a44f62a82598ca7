"""The reference-side work of scoring, computed once per dataset revision and protocol.

Everything that depends only on the references (the LPIPS features of GSI and of the ideal
image, the clinical ROIs, GSI scored against the ideal image, the frozen segmenter's counts on
GSI and the ideal image) is the same for every method. :class:`ReferenceCache` keeps it on
disk, keyed by what it depends on, so the second method scored on a dataset (and ``rescore``,
which the board's verification runs) pays only for its own output.

Layout: ``ROOT/<key hash>/key.json`` says what the folder holds (dataset manifest sha256,
config, split, protocol settings, the source of the metric code); each state lives in
``<state>/<reference>/<patient>.safetensors``, one tensor per field holding the patient's
slices stacked (``"*/<field>"``, the slice indices in the header), or, for a field whose shape
differs from slice to slice, one per slice (``"<slice index>/<field>"``): a file is read in a
handful of lookups, not one per slice and field. safetensors because a state is read by mapping
the file, not by copying or decoding it: the LPIPS features of a slice at 512 px are 10.6 MB
per reference, and a warm run reads them for every slice. A file is written under a temporary
name and renamed, so a file under its final name is whole; one that is not (cut short by a full
disk or a copy, its header and its size disagreeing) or cannot be read is deleted and
recomputed, never read. Nothing is cached for a dataset without a manifest (its content is
unknown). At its size limit the cache deletes other keys' folders, least recently used first
(another dataset revision, an older version of the metric code); when this key alone fills it,
the cache stops growing and the run goes on, computing what it cannot store.

The cache is on by default under ``$XDG_CACHE_HOME/artifactgsi/reference`` (else
``~/.cache/...``); ``$MARBENCH_REFERENCE_CACHE`` (a folder, or ``off``) and
``marbench run --reference-cache`` change that; ``$MARBENCH_REFERENCE_CACHE_GB`` sets the size
limit (default 16).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from artifactgsi.fileio import temporary_sibling

__all__ = ["CACHE_ENV", "CACHE_FORMAT", "LIMIT_ENV", "ReferenceCache", "default_cache_root",
           "source_fingerprint"]

#: Environment variable: the cache folder, or ``off``.
CACHE_ENV = "MARBENCH_REFERENCE_CACHE"
#: Environment variable: the size limit in GB.
LIMIT_ENV = "MARBENCH_REFERENCE_CACHE_GB"
#: Bump when the layout or a state's meaning changes.
CACHE_FORMAT = "marbench-reference-cache/3"

State = dict[str, np.ndarray]
#: Header key prefix of a text field (safetensors tensors are numbers; text goes in the header).
_TEXT = "text:"
#: Header key prefix of a stacked field's slice indices (its tensor is ``"*/<field>"``).
_ROWS = "rows:"


def default_cache_root() -> Path | None:
    """The folder ``$MARBENCH_REFERENCE_CACHE`` names (``None`` for ``off``), else the user's
    cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env is not None and env.strip():
        return None if env.strip().lower() in ("off", "0", "none", "false") else Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "artifactgsi" / "reference"


def source_fingerprint(modules: Sequence[str]) -> str:
    """sha256 of the source files of ``modules`` (the code that computes cached states), so a
    change to that code never reads states an older version wrote."""
    import importlib.util

    h = hashlib.sha256()
    for name in sorted(set(modules)):
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None) if spec is not None else None
        h.update(name.encode())
        if origin and os.path.isfile(origin):
            h.update(Path(origin).read_bytes())
    return h.hexdigest()


def _safe(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
    return s[:80] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12] if len(s) > 80 or \
        s != text else s


class ReferenceCache:
    """Per-slice reference states of one dataset revision, split and protocol.

    Args:
        root: the cache folder (``None``: states live in memory for this run only).
        key: what the states depend on (JSON values); its hash names the folder.
        max_bytes: stop writing past this many bytes in ``root`` (all keys together).
    """

    def __init__(self, root: Path | None, key: dict[str, Any], *,
                 max_bytes: int | None = None) -> None:
        self.key = key
        text = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True)
        self.key_hash = hashlib.sha256(text.encode()).hexdigest()[:24]
        self.root = root
        self.folder = None if root is None else Path(root) / self.key_hash
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.rebuilt: list[str] = []    # files found cut short or corrupt and recomputed
        self.unwritten = 0              # states not stored (size limit, or no room)
        self.evicted: list[str] = []    # other keys' folders deleted to stay within the limit
        self.note: str | None = None
        self._mem: dict[tuple[str, str, str], dict[int, State]] = {}
        self._loaded: set[tuple[str, str, str]] = set()
        self._dirty: set[tuple[str, str, str]] = set()
        self._size: int | None = None
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                kj = self.folder / "key.json"
                if not kj.is_file():
                    tmp = temporary_sibling(kj)
                    tmp.write_text(json.dumps({"format": CACHE_FORMAT, **key}, indent=2,
                                              sort_keys=True) + "\n")
                    os.replace(tmp, kj)
                os.utime(kj)  # last used: the least recently used keys are evicted first
            except OSError as e:  # an unwritable cache folder must not stop scoring
                self.note = f"reference cache {self.folder} is not writable ({e}); not cached"
                self.folder = None

    # -- files
    def _path(self, k: tuple[str, str, str]) -> Path:
        assert self.folder is not None
        state, ref, patient = k
        return self.folder / _safe(state) / _safe(ref) / f"{_safe(patient)}.safetensors"

    def _load(self, k: tuple[str, str, str]) -> None:
        from safetensors import SafetensorError, safe_open

        self._loaded.add(k)
        if self.folder is None:
            return
        path = self._path(k)
        if not path.is_file():
            return
        try:
            # framework "pt" maps the file (torch.UntypedStorage.from_file, private mapping):
            # the arrays are views of the page cache, nothing is copied until it is used.
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != CACHE_FORMAT:
                    raise ValueError("not a reference-cache file of this format")
                slices: dict[int, State] = {}
                for name in f.keys():  # noqa: SIM118 (safe_open has keys(), no iteration)
                    idx, _, field = name.partition("/")
                    if idx == "*":  # stacked: one row per slice (views of the mapped file)
                        stack = f.get_tensor(name).numpy()
                        rows = json.loads(meta[_ROWS + field])
                        if len(rows) != len(stack):
                            raise ValueError(f"field {field!r}: {len(stack)} rows for "
                                             f"{len(rows)} slices")
                        for j, r in enumerate(rows):
                            slices.setdefault(int(r), {})[field] = stack[j]
                    else:
                        slices.setdefault(int(idx), {})[field] = f.get_tensor(name).numpy()
                for name, text in meta.items():
                    if name.startswith(_TEXT):
                        idx, _, field = name.removeprefix(_TEXT).partition("/")
                        t = json.loads(text)
                        slices.setdefault(int(idx), {})[field] = np.asarray(
                            t["values"], dtype=str).reshape(t["shape"])
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            # A file cut short or damaged is rebuilt, never read.
            self.rebuilt.append(f"{path} ({e})")
            path.unlink(missing_ok=True)
            return
        self._mem.setdefault(k, {}).update(slices)

    def _flush_one(self, k: tuple[str, str, str]) -> None:
        from safetensors.numpy import save

        self._dirty.discard(k)
        if self.folder is None:
            return
        slices = self._mem.get(k, {})
        arrays: dict[str, np.ndarray] = {}
        texts: dict[str, str] = {}
        numeric: dict[str, list[tuple[int, np.ndarray]]] = {}
        for idx, st in sorted(slices.items()):
            for f, v in st.items():
                # asarray(order="C"), not ascontiguousarray, which makes a 0-d array 1-d
                a = np.asarray(v, order="C")
                if a.dtype.kind in "US":  # text (safetensors holds numbers): in the header
                    texts[f"{_TEXT}{idx}/{f}"] = json.dumps(
                        {"shape": list(a.shape), "values": [str(x) for x in a.reshape(-1)]})
                else:
                    numeric.setdefault(f, []).append((idx, a))
        for f, rows in numeric.items():
            if len({(a.shape, a.dtype.str) for _, a in rows}) == 1:
                arrays[f"*/{f}"] = np.stack([a for _, a in rows])
                texts[_ROWS + f] = json.dumps([idx for idx, _ in rows])
            else:  # the shape differs from slice to slice: one tensor per slice
                arrays.update({f"{idx}/{f}": a for idx, a in rows})
        data = save(arrays, metadata={"format": CACHE_FORMAT, **texts})
        path = self._path(k)
        if self.max_bytes is not None and self._used() + len(data) > self.max_bytes:
            self._evict(self._used() + len(data) - self.max_bytes)
        if self.max_bytes is not None and self._used() + len(data) > self.max_bytes:
            self.unwritten += len(slices)
            self.note = (f"reference cache {self.root} reached its limit of "
                         f"{self.max_bytes / 1e9:.1f} GB (${LIMIT_ENV}); the rest is "
                         "computed each run")
            return
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_sibling(path)
            tmp.write_bytes(data)
            os.replace(tmp, path)
            tmp = None
            self._size = (self._size or 0) + len(data)
        except OSError as e:  # a full disk costs speed, never the run
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            self.unwritten += len(slices)
            self.note = f"reference cache {self.folder}: could not write ({e}); not cached"

    def _evict(self, need: int) -> None:
        """Delete other keys' folders, least recently used first, until ``need`` bytes are
        free or none is left (states of an older code version or dataset revision, which
        this key never reads, must not keep it from being stored)."""
        import shutil

        if self.root is None or self.folder is None:
            return
        others = []
        for d in Path(self.root).iterdir():
            kj = d / "key.json"
            if d.is_dir() and d != self.folder and kj.is_file():
                others.append((kj.stat().st_mtime, d))
        for _, d in sorted(others):
            if need <= 0:
                break
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            shutil.rmtree(d, ignore_errors=True)
            self.evicted.append(d.name)
            need -= size
            self._size = None  # measured again on next use

    def _used(self) -> int:
        if self._size is None:
            total = 0
            if self.root is not None and Path(self.root).is_dir():
                for dirpath, _, files in os.walk(self.root):
                    for f in files:
                        try:
                            total += os.path.getsize(os.path.join(dirpath, f))
                        except OSError:
                            pass
            self._size = total
        return self._size

    # -- the ReferenceStates protocol (benchmark.metrics.compute)
    def get_many(self, key: str, reference: str, slice_ids: Sequence[tuple[str, int]]
                 ) -> list[State | None]:
        out: list[State | None] = []
        for patient, idx in slice_ids:
            k = (key, reference, str(patient))
            if k not in self._loaded:
                self._load(k)
            st = self._mem.get(k, {}).get(int(idx))
            out.append(st)
            if st is None:
                self.misses += 1
            else:
                self.hits += 1
        return out

    def put_many(self, key: str, reference: str, slice_ids: Sequence[tuple[str, int]],
                 states: Sequence[State]) -> None:
        for (patient, idx), st in zip(slice_ids, states, strict=True):
            k = (key, reference, str(patient))
            if k not in self._loaded:
                self._load(k)
            self._mem.setdefault(k, {})[int(idx)] = {f: np.asarray(v) for f, v in st.items()}
            self._dirty.add(k)

    def release(self, keep_patients: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Write what changed and drop from memory every patient not in ``keep_patients``
        (the runner calls this as it moves on, so memory holds one patient's states)."""
        for k in sorted(set(self._mem) | self._dirty):
            if k[2] in keep_patients:
                continue
            if k in self._dirty:
                self._flush_one(k)
            self._mem.pop(k, None)
            self._loaded.discard(k)

    def close(self) -> None:
        """Write everything that changed."""
        self.release(set())

    def describe(self) -> str:
        where = "memory only" if self.folder is None else str(self.folder)
        return (f"reference cache {where}: {self.hits} states reused, {self.misses} computed"
                + (f", {len(self.rebuilt)} files cut short and rebuilt" if self.rebuilt else ""))
