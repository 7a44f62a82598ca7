"""What a metric's computation receives, and the loop that calls every computation once.

A computation (the ``compute`` of a :class:`~benchmark.metrics.registry.MetricSpec`) is a
callable ``f(view: ScoreView) -> {metric name: (B,) values}``. The view holds one batch of one
comparison (an image scored against a reference) on the native grid and, computed once and
shared, on the protocol's evaluation grid. Work that depends on the reference only (LPIPS
features of GSI, the clinical ROIs) goes through :meth:`ScoreView.reference_state`, which a
:class:`benchmark.refcache.ReferenceCache` serves from disk when the same dataset revision was
scored before under the same protocol; work on the scored image that several comparisons
share (its LPIPS features) goes through :meth:`ScoreView.scored_state`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
import torch

from .protocol import Protocol, hu_to_unit, resample_hu, resample_mask
from .registry import MetricComputationError, MetricSpec, resolve_compute

__all__ = ["BatchMemo", "ReferenceStates", "ScoreView", "compute_metrics"]

#: A per-slice state: named arrays (what the reference cache can store exactly).
State = dict[str, np.ndarray]


class ReferenceStates(TypingProtocol):
    """Where reference-side states live (:class:`benchmark.refcache.ReferenceCache`)."""

    def get_many(self, key: str, reference: str, slice_ids: Sequence[tuple[str, int]]
                 ) -> list[State | None]: ...

    def put_many(self, key: str, reference: str, slice_ids: Sequence[tuple[str, int]],
                 states: Sequence[State]) -> None: ...


class BatchMemo:
    """Per-batch memo of the scored image's derived quantities, shared by the comparisons of
    one batch (keyed by name; values are per-row lists over the whole batch)."""

    def __init__(self) -> None:
        self._store: dict[str, list[Any]] = {}

    def get_or_make(self, key: str, rows: Sequence[int], n: int,
                    make: Callable[[], list[Any]]) -> list[Any]:
        """Values for ``rows`` (indices into the batch of ``n``); ``make`` computes them for
        every row of the batch the first time (so a subset comparison reuses them)."""
        if key not in self._store:
            vals = make()
            if len(vals) != n:
                raise MetricComputationError(f"scored-image state {key!r}: made {len(vals)} "
                                             f"values for a batch of {n}")
            self._store[key] = vals
        return [self._store[key][i] for i in rows]

    def whole(self, key: str, make: Callable[[], Any]) -> Any:
        """A value for the whole batch (a (B, ...) tensor or array), made once."""
        if key not in self._store:
            self._store[key] = make()
        return self._store[key]


@dataclass
class ScoreView:
    """One batch of one comparison.

    Attributes:
        pred_hu: (B, 1, H, W) float32 HU, the scored image (a method's output, or GSI).
        reference_hu: (B, 1, H, W) float32 HU on the same grid.
        metal_mask: (B, 1, H, W) bool, or ``None``.
        pixel_spacing_mm: (B,) float64 native pixel size in mm, or ``None``.
        protocol: the scoring protocol.
        reference: the reference's kind (``"gsi"``, ``"ideal"``), the key of cached states.
        slice_ids: (patient_id, slice_index) of each row.
        resources: shared objects a computation may use (``"lpips"``: the LPIPS network).
        device: where tensor work runs.
    """

    pred_hu: torch.Tensor
    reference_hu: torch.Tensor
    metal_mask: torch.Tensor | None
    pixel_spacing_mm: torch.Tensor | None
    protocol: Protocol
    reference: str
    slice_ids: list[tuple[str, int]]
    resources: Mapping[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rows: list[int] | None = None        # indices of these rows in the scored batch
    batch_size: int | None = None        # size of that batch
    memo: BatchMemo | None = None
    states: ReferenceStates | None = None
    _grid: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.pred_hu.shape[0])

    # -- the evaluation grid, computed once per view
    def _eval(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._grid:
            self._grid[key] = make()
        return self._grid[key]

    def _scored_whole(self, key: str, make: Callable[[], Any]) -> Any:
        """A (B, ...) value of the scored image, made once per batch when a memo is attached
        (the comparisons of a batch score the same image) and indexed to this view's rows."""
        if self.memo is None or self.rows is None or self.batch_size is None:
            return make()
        value = self.memo.whole(key, make)  # the first comparison of a batch has every row
        if list(self.rows) == list(range(self.batch_size)):
            return value
        return value[self.rows]

    def _scored_grid(self, key: str, make: Callable[[], Any]) -> Any:
        """A value of the scored image: made once per view, and once per batch across its
        comparisons (:meth:`_scored_whole`)."""
        return self._eval(key, lambda: self._scored_whole(f"grid:{key}", make))

    @property
    def pred_eval_hu(self) -> torch.Tensor:
        """(B, 1, N, N) the scored image resampled to the protocol's grid, HU."""
        p = self.protocol
        return self._scored_grid("pred_eval_hu", lambda: resample_hu(
            self.pred_hu.float(), p.eval_size, p.resample_mode))

    @property
    def pred_eval_np(self) -> np.ndarray:
        """(B, 1, N, N) float64 numpy :attr:`pred_eval_hu` (what the clinical metrics use)."""
        return self._scored_grid("pred_eval_np", lambda: _float64(self.pred_eval_hu))

    @property
    def reference_eval_np(self) -> np.ndarray:
        """(B, 1, N, N) float64 numpy :attr:`reference_eval_hu`."""
        return self._eval("ref_np", lambda: _float64(self.reference_eval_hu))

    @property
    def pred_unit_np(self) -> np.ndarray:
        """(B, 1, N, N) float64 numpy :attr:`pred_unit` (what SSIM uses)."""
        return self._scored_grid("pred_unit_np", lambda: _float64(self.pred_unit))

    @property
    def reference_unit_np(self) -> np.ndarray:
        """(B, 1, N, N) float64 numpy :attr:`reference_unit`."""
        return self._eval("ref_unit_np", lambda: _float64(self.reference_unit))

    @property
    def reference_eval_hu(self) -> torch.Tensor:
        """(B, 1, N, N) the reference on the protocol's grid, HU (a reference state when it
        had to be resampled: the same for every method)."""
        p = self.protocol

        def make() -> torch.Tensor:
            ref = self.reference_hu.float()
            if self.states is None or tuple(ref.shape[-2:]) == (p.eval_size, p.eval_size):
                return resample_hu(ref, p.eval_size, p.resample_mode)

            def resampled(rows: list[int]) -> list[State]:
                grid = resample_hu(ref[rows], p.eval_size, p.resample_mode)
                return [{"hu": g[0].cpu().numpy()} for g in grid]

            got = self.reference_state(f"grid:{p.eval_size}:{p.resample_mode}", resampled)
            return torch.stack([torch.from_numpy(np.asarray(g["hu"])) for g in got])[:, None]

        return self._eval("ref", make)

    @property
    def pred_unit(self) -> torch.Tensor:
        """(B, 1, N, N) the scored image on the grid, window-clipped and scaled to [0, 1]."""
        p = self.protocol
        return self._scored_grid("pred_unit", lambda: hu_to_unit(self.pred_eval_hu, p.hu_min,
                                                                 p.hu_max))

    @property
    def reference_unit(self) -> torch.Tensor:
        """(B, 1, N, N) the reference on the grid in [0, 1]."""
        p = self.protocol
        return self._eval("ref_unit", lambda: hu_to_unit(self.reference_eval_hu, p.hu_min,
                                                         p.hu_max))

    @property
    def metal_eval(self) -> torch.Tensor:
        """(B, 1, N, N) bool metal mask on the grid (needs ``metal_mask``)."""
        if self.metal_mask is None:
            raise MetricComputationError("this computation needs the metal mask")
        return self._eval("metal", lambda: resample_mask(self.metal_mask.bool(),
                                                         self.protocol.eval_size))

    def spacing_eval_mm(self, i: int) -> tuple[float, float]:
        """(row, col) pixel size in mm of row ``i`` on the evaluation grid."""
        if self.pixel_spacing_mm is None:
            raise MetricComputationError("this computation needs the pixel spacing")
        h, w = self.pred_hu.shape[-2:]
        n = self.protocol.eval_size
        s = float(self.pixel_spacing_mm[i])
        return s * h / n, s * w / n

    # -- shared states
    def reference_state(self, key: str, make: Callable[[list[int]], list[State]]
                        ) -> list[State]:
        """Per-row states that depend on the reference only, from the cache where present.

        ``make(rows)`` computes the states of the given row indices (of this view) that the
        cache does not hold; they are stored for the next run. ``key`` names the state and
        everything it depends on beyond the dataset and protocol (the cache key has those).
        """
        if self.states is None:
            return make(list(range(self.n)))
        got = self.states.get_many(key, self.reference, self.slice_ids)
        todo = [i for i, s in enumerate(got) if s is None]
        if todo:
            fresh = make(todo)
            if len(fresh) != len(todo):
                raise MetricComputationError(f"reference state {key!r}: made {len(fresh)} "
                                             f"states for {len(todo)} slices")
            self.states.put_many(key, self.reference, [self.slice_ids[i] for i in todo], fresh)
            for i, s in zip(todo, fresh, strict=True):
                got[i] = s
        return got  # type: ignore[return-value]

    def scored_state(self, key: str, make: Callable[[], list[Any]]) -> list[Any]:
        """Per-row values derived from the scored image alone, made once per batch and shared
        by the comparisons of the batch. ``make()`` computes them for this view's rows when no
        memo is attached, else for the whole batch."""
        if self.memo is None or self.rows is None or self.batch_size is None:
            return make()
        return self.memo.get_or_make(key, self.rows, self.batch_size, make)


def _float64(t: torch.Tensor) -> np.ndarray:
    return t.double().cpu().numpy()


def compute_metrics(specs: Sequence[MetricSpec], view: ScoreView) -> dict[str, np.ndarray]:
    """Run each distinct computation of ``specs`` once on ``view``; return
    ``{name: (B,) float64}`` for exactly the declared names.

    Raises:
        MetricComputationError: a computation raises, or does not return a declared metric,
            or returns the wrong number of values (named).
    """
    by_target: dict[str, list[MetricSpec]] = {}
    for s in specs:
        by_target.setdefault(str(s.compute), []).append(s)
    out: dict[str, np.ndarray] = {}
    for target, group in by_target.items():
        fn = resolve_compute(group[0])
        names = [s.name for s in group]
        try:
            values = fn(view)
        except MetricComputationError:
            raise
        except Exception as e:
            raise MetricComputationError(
                f"metrics {names}: computation {target!r} raised {type(e).__name__} on "
                f"{_where(view)}: {e}") from e
        if not isinstance(values, Mapping):
            raise MetricComputationError(f"metrics {names}: computation {target!r} returned "
                                         f"{type(values).__name__}, not {{name: values}}")
        for name in names:
            if name not in values:
                raise MetricComputationError(
                    f"metric {name!r} is declared with computation {target!r}, which did not "
                    f"return it (it returned {sorted(values)})")
            v = values[name]
            arr = (v.detach().double().cpu().numpy() if isinstance(v, torch.Tensor)
                   else np.asarray(v, dtype=np.float64)).reshape(-1)
            if arr.shape[0] != view.n:
                raise MetricComputationError(f"metric {name!r}: computation {target!r} "
                                             f"returned {arr.shape[0]} values for "
                                             f"{view.n} slices")
            out[name] = arr
    return out


def _where(view: ScoreView) -> str:
    ids = view.slice_ids
    if not ids:
        return "an empty batch"
    first = f"patient {ids[0][0]!r} slice {ids[0][1]}"
    return first if len(ids) == 1 else f"{first} and {len(ids) - 1} more slices"
