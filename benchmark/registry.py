"""Registries: methods, trainers and extra ``marbench`` subcommands, found by name.

Three entry-point groups, read lazily (listing names imports nothing):

- ``marbench.methods``: ``name = "pkg.module:Class"``, a :class:`~benchmark.method.MARMethod`;
  :func:`create_method` builds it with options checked against its constructor;
- ``marbench.trainers``: ``name = "pkg.module:function"``, a training function
  ``train(config, data, out, *, resume=False, overrides=None) -> Path`` that
  ``marbench train NAME`` calls (see :class:`TrainerInfo`);
- ``marbench.commands``: ``name = "pkg.module:obj"``, a ``typer.Typer`` (a command group,
  ``marbench NAME SUB ...``) or a plain function (one command, ``marbench NAME ...``).

A third-party package plugs in by declaring entry points in its own ``pyproject.toml``::

    [project.entry-points."marbench.methods"]
    mine = "my_package.my_module:MyMethod"

and ``get_method("my_package.my_module:MyMethod")`` works without any registration. The
harness itself never imports a method package: everything arrives through these groups.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import MARBenchError
from .method import MARMethod, _option_parameters
from .targets import import_target

__all__ = [
    "COMMAND_GROUP", "ENTRY_POINT_GROUP", "REGISTRY", "TRAINER_GROUP", "DuplicateMethodError",
    "MethodInfo", "MethodRegistry", "TrainerInfo", "UnknownMethodError", "UnknownOptionError",
    "UnknownTrainerError", "check_options", "create_method", "get_method", "get_trainer",
    "iter_commands", "list_methods", "list_trainers", "load_spec", "register_method",
]

#: Entry-point group that third-party packages use to register methods.
ENTRY_POINT_GROUP = "marbench.methods"
#: Entry-point group of training functions (``marbench train NAME``).
TRAINER_GROUP = "marbench.trainers"
#: Entry-point group of extra ``marbench`` subcommands.
COMMAND_GROUP = "marbench.commands"


def did_you_mean(name: str, known: list[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``known`` (also ignoring case and ``-``/``_``),
    or an empty string."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if not close:
        folded = {k.lower().replace("-", "_"): k for k in known}
        hit = folded.get(name.lower().replace("-", "_"))
        close = [hit] if hit else []
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""



class UnknownMethodError(MARBenchError, LookupError):
    """No method is registered under the requested name."""


class UnknownOptionError(MARBenchError, TypeError):
    """An option the method's constructor does not take."""


class OptionTypeError(UnknownOptionError):
    """An option whose value is of the wrong kind, e.g. ``true`` for a number."""


class DuplicateMethodError(MARBenchError, ValueError):
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
    obj = import_target(spec, f"method spec {spec!r}")
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
        hint = did_you_mean(name, known)
        listing = ", ".join(known) if known else "none"
        return (f"unknown MAR method {name!r}.{hint} Registered methods: {listing}. A method "
                f"from another package is found once that package is installed with an entry "
                f"point in the {self._group!r} group, or pass it as 'pkg.module:Class'.")

    def create(self, name_or_spec: str, **options: Any) -> MARMethod:
        """Instantiate the method ``name_or_spec`` with ``options`` (checked against its
        constructor, see :func:`check_options`); its ``name`` is set.

        Raises:
            UnknownOptionError: an option the constructor does not take ("did you mean").
        """
        cls = self.get(name_or_spec)
        check_options(cls, options, label=name_or_spec)
        method = cls(**options)
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


def create_method(name_or_spec: str, **options: Any) -> MARMethod:
    """An instance of the method ``name_or_spec`` built as ``cls(**options)``, the options
    checked against the constructor (see :meth:`MethodRegistry.create`)."""
    return REGISTRY.create(name_or_spec, **options)


def list_methods() -> list[MethodInfo]:
    """Every registered method with its one-line summary (imports each to read it)."""
    return REGISTRY.infos()


def check_options(cls: type[MARMethod], options: dict[str, Any], *, label: str = "") -> None:
    """Refuse ``options`` that ``cls.__init__`` does not take, or required ones missing.

    Raises:
        UnknownOptionError: naming the key, the closest accepted one and every accepted one.
    """
    label = label or getattr(cls, "name", "") or cls.__qualname__
    if cls.__init__ is not object.__init__ and any(
            p.kind is inspect.Parameter.VAR_KEYWORD
            for p in inspect.signature(cls.__init__).parameters.values()):
        return  # the method takes **kwargs and checks them itself
    params = _option_parameters(cls)
    accepted = [p.name for p in params]
    listing = ", ".join(accepted) if accepted else "none"
    for key in options:
        if key not in accepted:
            raise UnknownOptionError(
                f"method {label!r} has no option {key!r}.{did_you_mean(key, accepted)} "
                f"Its options: {listing}.")
    for p in params:
        if p.default is inspect.Parameter.empty and p.name not in options:
            raise UnknownOptionError(f"method {label!r} needs option {p.name!r} "
                                     f"(give it as -O {p.name}=VALUE)")
        value = options.get(p.name)
        if isinstance(value, bool) and _wants_number(p):
            # Python would take True as 1: `-O bone_hu=true` must not become 1 HU.
            raise OptionTypeError(f"method {label!r}: option {p.name!r} is a number, got "
                                  f"{str(value).lower()} (give a number, e.g. -O "
                                  f"{p.name}={p.default if p.default is not p.empty else 1})")


def _wants_number(p: inspect.Parameter) -> bool:
    """Whether a constructor parameter takes a number and not a bool (from its annotation,
    a type or, under postponed annotations, its text; else from its default)."""
    ann = p.annotation
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    if p.annotation is not inspect.Parameter.empty and text:
        words = set(re.findall(r"[A-Za-z_]+", str(text)))
        return "bool" not in words and bool(words & {"int", "float"})
    return isinstance(p.default, int | float) and not isinstance(p.default, bool)


# ----------------------------------------------------------------------------- trainers


class UnknownTrainerError(MARBenchError, LookupError):
    """No trainer is registered under the requested name."""


@dataclass(frozen=True)
class TrainerInfo:
    """A training function found in the ``marbench.trainers`` group.

    The function's contract::

        def train(config: str, data: str, out: Path, *, resume: bool = False,
                  overrides: dict[str, Any] | None = None) -> Path: ...
        train.configs = ["x-tiny", "x-cpu", "x-paper"]   # optional: shipped config names

    ``config`` is a shipped config name or a YAML file, ``data`` a built dataset folder or
    Hub repo id, ``out`` the run folder; ``overrides`` set config keys (unknown keys are an
    error in the trainer). It returns the saved model folder (``save_pretrained`` output).
    """

    name: str
    target: str
    source: str

    def load(self) -> Callable[..., Path]:
        obj = import_target(self.target, f"trainer {self.name!r} ({self.source})")
        if not callable(obj):
            raise TypeError(f"trainer {self.name!r}: {self.target!r} is not callable")
        return obj

    def configs(self) -> list[str]:
        """The shipped config names the trainer declares (may import its module)."""
        return list(getattr(self.load(), "configs", []) or [])


def _entry_points(group: str) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for ep in importlib.metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        out.setdefault(ep.name, (ep.value, f"entry point of "
                                           f"{dist.name if dist is not None else 'unknown'}"))
    return out


def list_trainers() -> list[TrainerInfo]:
    """Every registered trainer, sorted by name (imports nothing)."""
    return [TrainerInfo(n, t, s) for n, (t, s) in sorted(_entry_points(TRAINER_GROUP).items())]


def get_trainer(name: str) -> TrainerInfo:
    """The trainer registered as ``name``.

    Raises:
        UnknownTrainerError: with the closest names and every registered one.
    """
    found = {t.name: t for t in list_trainers()}
    if name in found:
        return found[name]
    listing = ", ".join(found) or "none"
    raise UnknownTrainerError(
        f"no trainer named {name!r}.{did_you_mean(name, list(found))} Registered trainers: "
        f"{listing}. A package adds one with an entry point in the {TRAINER_GROUP!r} group.")


# ----------------------------------------------------------------------------- commands


def iter_commands() -> list[tuple[str, str, str]]:
    """``(name, "pkg.module:obj", source)`` of every extra ``marbench`` subcommand."""
    return [(n, t, s) for n, (t, s) in sorted(_entry_points(COMMAND_GROUP).items())]
