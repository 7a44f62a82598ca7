"""One config base class for every trainable family, and the YAML loader it uses.

A family's config is a dataclass with commented defaults that also derives from
:class:`ConfigBase`::

    @dataclass
    class MyConfig(ConfigBase):
        config_dir: ClassVar[Path] = Path(__file__).parent / "configs"   # shipped YAML files

        image_size: int = 128        # px
        lr: float = 1e-3

    cfg = MyConfig.load("my-cpu", overrides={"lr": 2e-3})

A config file is a YAML mapping of field names to values. It may name another config with
``base: NAME`` (a shipped name or a path); its own values override the base's, and bases may
chain. Unknown keys are errors with a "did you mean", and every value is checked against its
field's annotation: lists become tuples (their items checked too), ints are accepted as floats,
bools are never ints nor ints bools, ``null`` only where the annotation allows ``None``.
Errors are :class:`~benchmark.learn.errors.ConfigError` (a ``ValueError``) naming the file or
source and the key.

Imports only the standard library (and PyYAML when a file is read).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

#: ``find(name, relative_to)``: the resolved YAML file of a config name or path; a ``base:``
#: is looked up relative to the folder of the file naming it (``relative_to``) first.
Finder = Callable[[str, Path | None], Path]

_SCALARS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}
# "int | None", "Optional[int]", "tuple[float, float]" -> ("int", None) ... ("tuple", "float")
_ANNOTATION = re.compile(r"(?:None\s*\|\s*)?(?:typing\.)?(?:Optional\[)?(\w+)(?:\[\s*(\w+))?")

C = TypeVar("C", bound="ConfigBase")


# ----------------------------------------------------------------------------- YAML files


def find_config_file(name: str, config_dir: Path | None, error: type[Exception] = ConfigError,
                     *, relative_to: Path | None = None, what: str = "config",
                     shipped: Iterable[str] | None = None) -> Path:
    """The resolved YAML file of ``name``: a ``.yaml`` / ``.yml`` path, else ``NAME.yaml``
    (or ``name`` itself when it has a suffix) in ``relative_to`` then ``config_dir``.

    Raises ``error`` ("{what} 'NAME': no such file; ...") listing ``shipped`` (default: the
    stems of ``config_dir/*.yaml``).
    """
    p = Path(name).expanduser()
    candidates = [p] if p.suffix in (".yaml", ".yml") else []
    file_name = name if p.suffix else f"{name}.yaml"
    candidates += [folder / file_name for folder in (relative_to, config_dir)
                   if folder is not None]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    if shipped is None:
        shipped = sorted(q.stem for q in config_dir.glob("*.yaml")) if config_dir else []
    raise error(f"{what} {name!r}: no such file; give a YAML path or one of: "
                f"{', '.join(shipped) or 'none shipped'}")


def read_yaml_chain(path: Path, find: Finder, error: type[Exception] = ConfigError, *,
                    keys_of: str = "config", seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The values of YAML file ``path`` merged over those of its ``base:`` chain.

    ``find(name, folder_of_the_file)`` locates a base; ``keys_of`` names the dataclass in the
    "must be a mapping of ... keys" message. Raises ``error`` naming the file when it is not
    valid YAML, not a mapping, or its ``base:`` chain loops.
    """
    import yaml

    if path in seen:
        raise error(f"{path}: 'base' chain loops: {' -> '.join(map(str, seen))}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise error(f"{path}: must be a mapping of {keys_of} keys, got "
                    f"{type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    merged = read_yaml_chain(find(str(base), path.parent), find, error, keys_of=keys_of,
                             seen=(*seen, path))
    merged.update(values)
    return merged


# ----------------------------------------------------------------------------- values


def plain_dict(config: Any) -> dict[str, Any]:
    """The fields of dataclass instance ``config`` as a dict, tuples as lists (the form a
    YAML or JSON file holds, which :func:`dataclass_kwargs` reads back)."""
    d = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def check_keys(values: Iterable[str], known: Sequence[str], where: str,
               error: type[Exception] = ConfigError, *, known_hint: str | None = None) -> None:
    """Raise ``error`` naming every key of ``values`` not in ``known``, each with its closest
    known key ("did you mean"), then ``known_hint`` (default: "known keys: " and ``known`` in
    its order)."""
    unknown = sorted(set(values) - set(known))
    if not unknown:
        return
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(k, list(known), n=1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    hint = known_hint if known_hint is not None else f"known keys: {', '.join(known)}"
    raise error(f"{where}: unknown key(s) {', '.join(hints)}; {hint}")


def _annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _kinds(ann: str, default: Any) -> tuple[str | None, str | None]:
    """(value kind, tuple item kind) from the annotation, else from the default's type."""
    m = _ANNOTATION.match(ann.strip())
    kind, item = (m.group(1), m.group(2)) if m else (None, None)
    if kind != "tuple" and kind not in _SCALARS:  # bool before int: a bool is an int
        types = {"tuple": tuple, **_SCALARS}
        kind = next((k for k, t in types.items() if isinstance(default, t)), None)
        item = None
    if kind == "tuple" and item not in _SCALARS and isinstance(default, tuple) and default:
        item = type(default[0]).__name__
    return kind, item if item in _SCALARS else None


def coerce_value(key: str, value: Any, default: Any, annotation: Any, where: str,
                 error: type[Exception] = ConfigError, *, check_items: bool = True) -> Any:
    """``value`` checked against field ``key``'s ``annotation`` (a type or, under postponed
    annotations, its text), falling back to the type of ``default`` where the annotation
    names no plain type.

    Lists become tuples (with ``check_items``, their items are checked too: numbers become
    floats, ints and strings must be exactly that), ints are accepted as floats, bools are
    never ints nor ints bools, ``None`` only where the annotation allows it. Anything else
    raises ``error`` ("{where}: {key}: expected ...").
    """
    ann = _annotation_text(annotation)
    if value is None:
        if "None" in ann or "Optional[" in ann:
            return None
        raise error(f"{where}: {key}: may not be null")
    kind, item = _kinds(ann, default)
    if kind == "tuple":
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: {key}: expected a list, got {value!r}")
        if check_items and item == "float":
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                raise error(f"{where}: {key}: expected numbers, got {value!r}")
            return tuple(float(v) for v in value)
        if check_items and item is not None and not all(
                isinstance(v, _SCALARS[item]) and (item == "bool") == isinstance(v, bool)
                for v in value):
            raise error(f"{where}: {key}: expected a list of {item}, got {value!r}")
        return tuple(value)
    if kind == "bool" and not isinstance(value, bool):
        raise error(f"{where}: {key}: expected true/false, got {value!r}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise error(f"{where}: {key}: expected an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{where}: {key}: expected a number, got {value!r}")
        return float(value)
    if kind == "str" and not isinstance(value, str):
        raise error(f"{where}: {key}: expected a string, got {value!r}")
    return value


def dataclass_kwargs(cls: type, values: dict[str, Any], where: str,
                     error: type[Exception] = ConfigError, *, known_hint: str | None = None,
                     sort_known: bool = False, check_items: bool = True) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from ``values``: every key checked
    (:func:`check_keys`, listing the fields in declaration order or, with ``sort_known``,
    sorted) and every value coerced (:func:`coerce_value`) against the field and the
    default of ``cls()``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(values, sorted(fields) if sort_known else list(fields), where, error,
               known_hint=known_hint)
    defaults = cls()
    return {k: coerce_value(k, v, getattr(defaults, k), fields[k].type, where, error,
                            check_items=check_items)
            for k, v in values.items()}


# ----------------------------------------------------------------------------- the base class


class ConfigBase:
    """Base of every trainable family's config dataclass: loading, checking, saving.

    Class attributes a family sets:
        config_dir: the folder of its shipped ``*.yaml`` configs.
        config_what: the word its messages use ("segmenter config").
        error: the :class:`ConfigError` subclass it raises.
        default_name: the config name the dataclass defaults stand for (``"unet-paper"``).
    """

    config_dir: ClassVar[Path | None] = None
    config_what: ClassVar[str] = "config"
    error: ClassVar[type[ConfigError]] = ConfigError
    default_name: ClassVar[str] = "defaults"

    def validate(self: C, where: str = "config") -> C:
        """Check values across fields; raise :attr:`error` naming ``where`` and the key.
        Subclasses extend it (and call ``super().validate(where)``)."""
        return self

    def bad(self, where: str, key: str, why: str) -> ConfigError:
        """The error for ``key`` of the config read from ``where``."""
        return self.error(f"{where}: {key}: {why}")

    # -------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists)."""
        return plain_dict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
        """Defaults overridden by ``values``; unknown keys and wrong types are errors."""
        kw = dataclass_kwargs(cls, values, where, cls.error, sort_known=True, known_hint=(
            f"the keys are the fields of {cls.__module__}.{cls.__qualname__}: "
            f"{', '.join(sorted(f.name for f in dataclasses.fields(cls)))}"))
        return cls(**kw).validate(where)

    def save(self, path: Path) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        from artifactgsi.fileio import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=1))

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def shipped(cls) -> list[str]:
        """The names of the shipped configs (stems of ``config_dir/*.yaml``)."""
        d = cls.config_dir
        return sorted(p.stem for p in d.glob("*.yaml")) if d is not None else []

    @classmethod
    def find(cls, name: str, relative_to: Path | None = None) -> Path:
        """The YAML file of a shipped config name or a path (a ``base:`` is looked up next
        to the file naming it first)."""
        return find_config_file(name, cls.config_dir, cls.error, relative_to=relative_to,
                                what=cls.config_what, shipped=cls.shipped())

    @classmethod
    def load_named(cls: type[C], config: str | Path | dict[str, Any] | C | None = None,
                   overrides: dict[str, Any] | None = None) -> tuple[C, str]:
        """(config, its name) from a shipped name (``"unet-cpu"``), a YAML path, a dict, an
        instance or ``None`` (the defaults, named :attr:`default_name`), with ``overrides``
        (e.g. from the command line) applied last. The name is the YAML file's stem,
        ``"custom"`` for a dict or an instance."""
        name = "custom"
        if isinstance(config, cls):
            values, where = config.to_dict(), "config"
        elif config is None:
            values, where, name = {}, "defaults", cls.default_name
        elif isinstance(config, dict):
            values, where = dict(config), "config dict"
        else:
            path = cls.find(str(config))
            values = read_yaml_chain(path, cls.find, cls.error, keys_of=cls.__name__)
            where, name = str(path), path.stem
        if overrides:
            values.update(overrides)
            where += f" (with overrides {', '.join(sorted(overrides))})"
        return cls.from_dict(values, where), name

    @classmethod
    def load(cls: type[C], config: str | Path | dict[str, Any] | C | None = None,
             overrides: dict[str, Any] | None = None) -> C:
        """:meth:`load_named` without the name."""
        return cls.load_named(config, overrides)[0]
