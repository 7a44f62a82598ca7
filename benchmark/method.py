"""The MAR method interface and the method registry (DESIGN 5).

A method is a class with one abstract method::

    class MyMethod(MARMethod):
        \"\"\"One line that ``marbench methods`` shows.\"\"\"
        name = "mine"
        def reduce(self, batch: MARInput) -> MAROutput:
            return MAROutput(image=...)            # (B, 1, H, W) float32 HU, same grid

It is found by name through the registry. Third-party packages plug in without touching this
repository by declaring an entry point in the ``marbench.methods`` group of their own
``pyproject.toml``::

    [project.entry-points."marbench.methods"]
    mine = "my_package.my_module:MyMethod"

and ``get_method("my_package.my_module:MyMethod")`` works without any registration. Entry
points are read lazily: listing names imports nothing; a method's module (and its heavy
imports) is imported only when that method is chosen, or when ``list_methods()`` reads its
docstring.
"""

from __future__ import annotations

import abc
import difflib
import importlib
import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

#: Entry-point group that third-party packages use to register methods.
ENTRY_POINT_GROUP = "marbench.methods"


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
        """A copy with every tensor on ``device``."""
        nb = None if self.neighbours is None else self.neighbours.to(device)
        return replace(self, ordinary=self.ordinary.to(device),
                       metal_mask=self.metal_mask.to(device),
                       pixel_spacing_mm=self.pixel_spacing_mm.to(device), neighbours=nb)


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
        options: method-specific settings given by the user (CLI or config file).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    train_data: Any = None
    cache_dir: Path | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


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

    def prepare(self, ctx: PrepareContext) -> None:  # noqa: B027 (optional hook, no-op default)
        """Load weights, move to ``ctx.device`` or train; called once before :meth:`reduce`."""

    @abc.abstractmethod
    def reduce(self, batch: MARInput) -> MAROutput:
        """Map the ordinary image (HU) to a corrected image (HU) on the same grid."""


class MethodOutputError(ValueError):
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


# ----------------------------------------------------------------------------- registry


class UnknownMethodError(LookupError):
    """No method is registered under the requested name."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0])


class DuplicateMethodError(ValueError):
    """Two different classes claim the same method name."""


@dataclass(frozen=True)
class MethodInfo:
    """One row of :func:`list_methods`: name, one-line summary and where it comes from."""

    name: str
    summary: str
    target: str
    source: str


@dataclass
class _Entry:
    target: type[MARMethod] | str  # a class, or a lazy "module:Class" string
    source: str                     # "code" or "entry point of <distribution>"


M = TypeVar("M", bound=type[MARMethod])


def _spec_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def load_spec(spec: str) -> type[MARMethod]:
    """Import ``"pkg.module:Class"`` (``Class`` may be dotted) and check it is a MARMethod."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"method spec {spec!r} must look like 'pkg.module:Class'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ImportError(f"method spec {spec!r}: cannot import module {module_name!r} ({e}); "
                          "is its package installed in this environment?") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ImportError(f"method spec {spec!r}: module {module_name!r} has no "
                              f"attribute {attr!r}") from e
    if not (isinstance(obj, type) and issubclass(obj, MARMethod)):
        raise TypeError(f"method spec {spec!r} names {obj!r}, which is not a subclass of "
                        "benchmark.method.MARMethod")
    if getattr(obj, "__abstractmethods__", None):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise TypeError(f"method spec {spec!r}: class does not implement {missing}")
    return obj


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else "(no docstring)"


class MethodRegistry:
    """Maps method names to classes or lazy ``"module:Class"`` strings.

    Code registrations (:meth:`register`) and entry points of ``group`` share one namespace;
    a name claimed by two different targets is a :class:`DuplicateMethodError`. Entry points
    are read on first use (names only, nothing imported).
    """

    def __init__(self, group: str | None = ENTRY_POINT_GROUP) -> None:
        self._group = group
        self._entries: dict[str, _Entry] = {}
        self._conflicts: dict[str, list[_Entry]] = {}
        self._discovered = group is None

    # -- registration
    def register(self, name: str, target: type[MARMethod] | str, *, source: str = "code") -> None:
        """Register ``target`` (a MARMethod subclass or a ``"module:Class"`` string) as ``name``.

        Raises:
            DuplicateMethodError: ``name`` is already registered to a different target.
        """
        self._discover()
        self._add(name, _Entry(target, source), strict=True)

    def _add(self, name: str, entry: _Entry, *, strict: bool) -> None:
        if not name or ":" in name or name != name.strip():
            raise ValueError(f"method name {name!r} ({entry.source}) must be non-empty, without "
                             "':' or surrounding spaces")
        if isinstance(entry.target, type) and not issubclass(entry.target, MARMethod):
            raise TypeError(f"method {name!r}: {entry.target!r} is not a MARMethod subclass")
        old = self._entries.get(name)
        if old is None or self._same(old.target, entry.target):
            if old is None:
                self._entries[name] = entry
            return
        message = (f"method name {name!r} is claimed twice: by {self._describe(old)} and by "
                   f"{self._describe(entry)}; uninstall one package or rename one method")
        if strict:
            raise DuplicateMethodError(message)
        # An installed plugin clashing with another must not break unrelated methods: the
        # clash is reported when (and only when) the ambiguous name is asked for.
        self._conflicts.setdefault(name, [old]).append(entry)

    @staticmethod
    def _same(a: type | str, b: type | str) -> bool:
        sa = a if isinstance(a, str) else _spec_of(a)
        sb = b if isinstance(b, str) else _spec_of(b)
        return sa == sb

    @staticmethod
    def _describe(e: _Entry) -> str:
        t = e.target if isinstance(e.target, str) else _spec_of(e.target)
        return f"{t} ({e.source})"

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for ep in importlib.metadata.entry_points(group=self._group):
            dist = getattr(ep, "dist", None)
            source = f"entry point of {dist.name if dist is not None else 'unknown distribution'}"
            self._add(ep.name, _Entry(ep.value, source), strict=False)

    # -- lookup
    def names(self) -> list[str]:
        """Every registered name, sorted; imports nothing."""
        self._discover()
        return sorted(self._entries)

    def get(self, name_or_spec: str) -> type[MARMethod]:
        """The class registered as ``name_or_spec``, or the class a ``"module:Class"`` names.

        Raises:
            UnknownMethodError: with the closest registered names ("did you mean ...").
            DuplicateMethodError: two installed packages claim this name.
        """
        if ":" in name_or_spec:
            return load_spec(name_or_spec)
        self._discover()
        if name_or_spec in self._conflicts:
            who = " and ".join(self._describe(e) for e in self._conflicts[name_or_spec])
            raise DuplicateMethodError(f"method name {name_or_spec!r} is claimed by {who}; "
                                       "uninstall one, or pass the class as 'pkg.module:Class'")
        entry = self._entries.get(name_or_spec)
        if entry is None:
            raise UnknownMethodError(self._unknown_message(name_or_spec))
        if isinstance(entry.target, str):
            try:
                entry.target = load_spec(entry.target)
            except (ImportError, TypeError, ValueError) as e:
                raise type(e)(f"method {name_or_spec!r} ({entry.source}): {e}") from e
        return entry.target

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if not close:  # also match ignoring case and separators: "Identity", "dudo-dp"
            folded = {k.lower().replace("-", "_"): k for k in known}
            hit = folded.get(name.lower().replace("-", "_"))
            close = [hit] if hit else []
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if known else "none"
        return (f"unknown MAR method {name!r}.{hint} Registered methods: {listing}. A method "
                f"from another package is found once that package is installed with an entry "
                f"point in the {self._group!r} group, or pass it as 'pkg.module:Class'.")

    def create(self, name_or_spec: str, **kwargs: Any) -> MARMethod:
        """Instantiate the method ``name_or_spec`` with ``kwargs``; its ``name`` is set."""
        cls = self.get(name_or_spec)
        method = cls(**kwargs)
        if not getattr(method, "name", ""):
            method.name = name_or_spec  # type: ignore[misc]  (instance attribute on purpose)
        return method

    def infos(self) -> list[MethodInfo]:
        """Name, one-line summary (the class docstring's first line) and origin of each method.

        This imports each method's module to read the docstring; a method whose import fails
        is listed with the reason instead of a summary.
        """
        rows = []
        for name in self.names():
            entry = self._entries[name]
            target = entry.target if isinstance(entry.target, str) else _spec_of(entry.target)
            if name in self._conflicts:
                summary = "(name claimed twice: " + ", ".join(
                    self._describe(e) for e in self._conflicts[name]) + ")"
            else:
                try:
                    summary = _summary(self.get(name))
                except Exception as e:  # a broken plugin must not break the listing
                    summary = f"(cannot load: {type(e).__name__}: {e})"
            rows.append(MethodInfo(name=name, summary=summary, target=target,
                                   source=entry.source))
        return rows


#: The process-wide registry: entry points of ``marbench.methods`` plus code registrations.
REGISTRY = MethodRegistry()


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: ``@register_method("mine")`` registers the class in :data:`REGISTRY`."""

    def deco(cls: M) -> M:
        REGISTRY.register(name, cls)
        return cls

    return deco


def get_method(name_or_spec: str) -> type[MARMethod]:
    """The method class for a registered name or a ``"pkg.module:Class"`` string."""
    return REGISTRY.get(name_or_spec)


def create_method(name_or_spec: str, **kwargs: Any) -> MARMethod:
    """An instance of the method ``name_or_spec`` (see :meth:`MethodRegistry.create`)."""
    return REGISTRY.create(name_or_spec, **kwargs)


def list_methods() -> list[MethodInfo]:
    """Every registered method with its one-line summary (imports each to read it)."""
    return REGISTRY.infos()
