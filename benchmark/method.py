"""The MAR method interface: :class:`MARMethod`, its input and output, and output checks.

A method is a class with one abstract method::

    class MyMethod(MARMethod):
        \"\"\"One line that ``marbench methods`` shows.\"\"\"
        name = "mine"
        def reduce(self, batch: MARInput) -> MAROutput:
            return MAROutput(image=...)            # (B, 1, H, W) float32 HU, same grid

Every option is a keyword argument of the constructor, stored on the instance under the same
name; :func:`benchmark.registry.create_method` checks options against the signature and
:meth:`MARMethod.effective_options` reads back what the instance uses, for results files.
Methods are found by name through :mod:`benchmark.registry` (entry-point group
``marbench.methods``). ``benchmark.testing.check_method`` is the contract test for authors.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any, ClassVar

import torch

from .errors import MARBenchError

# ----------------------------------------------------------------------------- data classes


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


@dataclass
class MARInput:
    """One batch of B axial slices given to :meth:`MARMethod.reduce`.

    Attributes:
        ordinary: (B, 1, H, W) float32, the ordinary (single-energy) image in HU.
        metal_mask: (B, 1, H, W) bool, metal pixels of ``ordinary`` (paper Eq. 8).
        pixel_spacing_mm: (B,) float, in-plane pixel size in mm (square pixels).
        implant_type: B strings (``none``, ``hip_prosthesis``, ``fracture_fixation``,
            ``spinal_fixation``).
        patient_id: B pseudonymous patient ids.
        slice_index: B slice indices (ascending in z within a patient).
        neighbours: optional (B, 2k+1, H, W) float32 HU stack of the slices around each one
            (centre slice at channel k, edge slices repeated), for volumetric methods.
    """

    ordinary: torch.Tensor
    metal_mask: torch.Tensor
    pixel_spacing_mm: torch.Tensor
    implant_type: list[str]
    patient_id: list[str]
    slice_index: list[int]
    neighbours: torch.Tensor | None = None

    def __post_init__(self) -> None:
        o = self.ordinary
        if not isinstance(o, torch.Tensor) or o.ndim != 4 or o.shape[1] != 1:
            got = _shape(o) if isinstance(o, torch.Tensor) else type(o).__name__
            raise ValueError(f"MARInput.ordinary must be a (B, 1, H, W) tensor, got {got}")
        if o.dtype != torch.float32:
            raise ValueError(f"MARInput.ordinary must be float32 HU, got {o.dtype}")
        b = o.shape[0]
        m = self.metal_mask
        if not isinstance(m, torch.Tensor) or m.shape != o.shape or m.dtype != torch.bool:
            got = f"{_shape(m)} {m.dtype}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"MARInput.metal_mask must be a bool tensor of shape {_shape(o)} "
                             f"like ordinary, got {got}")
        s = self.pixel_spacing_mm
        if not isinstance(s, torch.Tensor):
            s = self.pixel_spacing_mm = torch.as_tensor(s, dtype=torch.float32)
        if s.shape != (b,):
            raise ValueError(f"MARInput.pixel_spacing_mm must have shape ({b},), got {_shape(s)}")
        for name in ("implant_type", "patient_id", "slice_index"):
            value = list(getattr(self, name))
            setattr(self, name, value)
            if len(value) != b:
                raise ValueError(f"MARInput.{name} must have one entry per slice ({b}), "
                                 f"got {len(value)}")
        n = self.neighbours
        if n is not None:
            ok = (isinstance(n, torch.Tensor) and n.ndim == 4 and n.shape[0] == b
                  and n.shape[1] % 2 == 1 and n.shape[2:] == o.shape[2:])
            if not ok:
                got = _shape(n) if isinstance(n, torch.Tensor) else type(n).__name__
                raise ValueError(f"MARInput.neighbours must be (B, 2k+1, H, W) = ({b}, odd, "
                                 f"{o.shape[2]}, {o.shape[3]}), got {got}")
            if n.dtype != torch.float32:
                raise ValueError(f"MARInput.neighbours must be float32 HU, got {n.dtype}")

    @property
    def batch_size(self) -> int:
        return int(self.ordinary.shape[0])

    def describe_slice(self, i: int) -> str:
        """``"patient 'P001' slice 42"``: how errors name slice ``i`` of the batch."""
        return f"patient {self.patient_id[i]!r} slice {self.slice_index[i]}"

    def to(self, device: torch.device | str) -> MARInput:
        """A deep copy with every tensor on ``device``.

        Always a copy (``Tensor.to`` alone returns the same tensor when it is already on
        ``device``), so a method that edits its input in place cannot touch what the runner
        scores with.
        """
        def cp(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, copy=True)

        nb = None if self.neighbours is None else cp(self.neighbours)
        return replace(self, ordinary=cp(self.ordinary), metal_mask=cp(self.metal_mask),
                       pixel_spacing_mm=cp(self.pixel_spacing_mm),
                       implant_type=list(self.implant_type), patient_id=list(self.patient_id),
                       slice_index=list(self.slice_index), neighbours=nb)


@dataclass
class MAROutput:
    """What :meth:`MARMethod.reduce` returns.

    Attributes:
        image: (B, 1, H, W) float32, the corrected image in HU on the input grid.
    """

    image: torch.Tensor


@dataclass
class PrepareContext:
    """What :meth:`MARMethod.prepare` may use.

    Attributes:
        device: where ``reduce`` will be called.
        train_data: the training split as a ``benchmark.data.PairsSplit`` for methods that
            fit something before scoring; ``None`` when the runner has none.
        cache_dir: a folder the method may use for weights and intermediate files.
        seed: seed for anything random in preparation.

    Method settings are not here: they are constructor arguments (see :class:`MARMethod`).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    train_data: Any = None
    cache_dir: Path | None = None
    seed: int = 0


class MARMethod(abc.ABC):
    """Base class of every metal artifact reduction method.

    Subclasses set ``name`` (the registry key) and ``version`` (bump it when outputs change;
    results files record it), implement :meth:`reduce`, and may override :meth:`prepare`.
    ``weights_sha256`` is recorded in results files; set it once weights are loaded.
    ``neighbour_slices`` = k asks the runner for ``MARInput.neighbours``, the (B, 2k+1, H, W)
    stack of adjacent slices (edge slices repeated); 0 means none.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    neighbour_slices: ClassVar[int] = 0
    weights_sha256: str | None = None

    def effective_options(self) -> dict[str, Any]:
        """The value of every constructor option as this instance uses it, for results files.

        Each keyword of ``__init__`` is read back from the attribute of the same name (the
        convention every method follows), so what is recorded is what runs, not what was
        asked for. A parameter with no such attribute is recorded with its default. Paths
        become strings; values that are not JSON numbers, strings, bools, lists or dicts
        are recorded by ``repr``.
        """
        out: dict[str, Any] = {}
        for p in _option_parameters(type(self)):
            if hasattr(self, p.name):
                value = getattr(self, p.name)
            elif p.default is not inspect.Parameter.empty:
                value = p.default
            else:
                continue
            out[p.name] = _json_value(value)
        return out

    def prepare(self, ctx: PrepareContext) -> None:  # noqa: B027 (optional hook, no-op default)
        """Load weights, move to ``ctx.device`` or train; called once before :meth:`reduce`."""

    @abc.abstractmethod
    def reduce(self, batch: MARInput) -> MAROutput:
        """Map the ordinary image (HU) to a corrected image (HU) on the same grid."""


def _option_parameters(cls: type) -> list[inspect.Parameter]:
    """The named keyword parameters of ``cls.__init__`` (``self``, ``*args``, ``**kw`` left
    out)."""
    if cls.__init__ is object.__init__:
        return []
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            inspect.Parameter.KEYWORD_ONLY)]


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, torch.device):
        return str(value)
    return repr(value)


class MethodOutputError(MARBenchError, ValueError):
    """A method returned something the harness cannot score."""


def validate_output(method_name: str, batch: MARInput, out: object) -> torch.Tensor:
    """Check ``out`` from ``method_name`` on ``batch``; return its (B, 1, H, W) image.

    Raises:
        MethodOutputError: naming the method and the slice(s) when ``out`` is not a
            :class:`MAROutput`, its image has the wrong shape or dtype, or has NaN / inf.
    """

    def where(idx: Sequence[int]) -> str:
        names = [batch.describe_slice(i) for i in idx[:5]]
        more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
        return ", ".join(names) + more

    everything = where(range(batch.batch_size))
    if not isinstance(out, MAROutput):
        raise MethodOutputError(
            f"method {method_name!r}: reduce() returned {type(out).__name__} for {everything}; "
            "return MAROutput(image=<(B, 1, H, W) float32 HU tensor>)")
    img = out.image
    if not isinstance(img, torch.Tensor):
        raise MethodOutputError(
            f"method {method_name!r}: MAROutput.image is {type(img).__name__} for {everything}; "
            "it must be a torch.Tensor")
    if img.shape != batch.ordinary.shape:
        raise MethodOutputError(
            f"method {method_name!r}: output image has shape {_shape(img)} but the input "
            f"batch is {_shape(batch.ordinary)} (B, 1, H, W) for {everything}; return one "
            "image per slice on the input grid")
    if img.dtype != torch.float32:
        raise MethodOutputError(
            f"method {method_name!r}: output image is {img.dtype} for {everything}; "
            "MAROutput.image must be float32 HU (use .float())")
    bad = ~torch.isfinite(img)
    if bool(bad.any()):
        per_slice = bad.flatten(1).sum(1).tolist()
        idx = [i for i, n in enumerate(per_slice) if n]
        n_nan = int(torch.isnan(img).sum())
        n_inf = int(bad.sum()) - n_nan
        raise MethodOutputError(
            f"method {method_name!r}: output has {n_nan} NaN and {n_inf} inf pixel(s) in "
            f"{where(idx)}")
    return img
