"""The training kit's configs (:mod:`benchmark.learn.config`): the YAML reader (``base:``
chains, unknown keys, value coercion) and :class:`ConfigBase` (shipped names, files, dicts,
overrides, refusals naming the file and key, JSON round trip)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from benchmark.learn.config import (
    ConfigBase,
    check_keys,
    coerce_value,
    dataclass_kwargs,
    find_config_file,
    plain_dict,
    read_yaml_chain,
)
from benchmark.learn.errors import ConfigError


class Bad(ValueError):
    """The error class the helpers are told to raise."""


@dataclass
class Toy:
    size: int = 8
    rate: float = 0.5
    name: str = "toy"
    flag: bool = True
    widths: tuple[int, ...] = (4, 8)
    window: tuple[float, float] = (0.0, 1.0)
    cap: int | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "name": self.name}


def _finder(config_dir: Path):
    return lambda name, relative_to: find_config_file(name, config_dir, Bad,
                                                      relative_to=relative_to)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- files


def test_base_chain_merges_with_the_nearer_file_winning(tmp_path):
    shipped = tmp_path / "shipped"
    _write(shipped / "root.yaml", "size: 1\nrate: 0.1\nname: root\n")
    _write(tmp_path / "mine" / "mid.yaml", "base: root\nrate: 0.2\nname: mid\n")
    child = _write(tmp_path / "mine" / "child.yaml", "base: mid\nname: child\n")
    values = read_yaml_chain(child.resolve(), _finder(shipped), Bad)
    # child overrides mid (found next to child), mid overrides root (found in shipped)
    assert values == {"size": 1, "rate": 0.2, "name": "child"}


def test_a_base_next_to_the_file_shadows_the_shipped_one(tmp_path):
    shipped = tmp_path / "shipped"
    _write(shipped / "common.yaml", "size: 1\n")
    _write(tmp_path / "mine" / "common.yaml", "size: 2\n")
    child = _write(tmp_path / "mine" / "child.yaml", "base: common\n")
    assert read_yaml_chain(child.resolve(), _finder(shipped), Bad) == {"size": 2}


def test_base_loop_is_an_error_naming_the_chain(tmp_path):
    a = _write(tmp_path / "a.yaml", "base: b\nsize: 1\n").resolve()
    b = _write(tmp_path / "b.yaml", "base: a\nsize: 2\n").resolve()
    with pytest.raises(Bad, match="'base' chain loops") as info:
        read_yaml_chain(a, _finder(tmp_path), Bad)
    assert f"{a} -> {b}" in str(info.value)


def test_bad_yaml_and_non_mapping_files_are_errors_naming_the_file(tmp_path):
    broken = _write(tmp_path / "broken.yaml", "size: [1, 2\n")
    with pytest.raises(Bad, match=r"broken\.yaml: not valid YAML"):
        read_yaml_chain(broken, _finder(tmp_path), Bad)
    listed = _write(tmp_path / "listed.yaml", "- 1\n- 2\n")
    with pytest.raises(Bad, match=r"listed\.yaml: must be a mapping of Toy keys, got list"):
        read_yaml_chain(listed, _finder(tmp_path), Bad, keys_of="Toy")
    empty = _write(tmp_path / "empty.yaml", "")
    assert read_yaml_chain(empty, _finder(tmp_path), Bad) == {}


def test_missing_config_names_the_shipped_ones(tmp_path):
    _write(tmp_path / "b-cfg.yaml", "{}")
    _write(tmp_path / "a-cfg.yaml", "{}")
    with pytest.raises(Bad, match=r"^config 'nope': no such file; .* one of: a-cfg, b-cfg$"):
        find_config_file("nope", tmp_path, Bad)
    with pytest.raises(Bad, match=r"^toy config 'nope': .* one of: x, y$"):
        find_config_file("nope", tmp_path, Bad, what="toy config", shipped=("x", "y"))
    assert find_config_file("a-cfg", tmp_path, Bad) == (tmp_path / "a-cfg.yaml").resolve()
    assert find_config_file(str(tmp_path / "b-cfg.yaml"), tmp_path / "elsewhere", Bad) == \
        (tmp_path / "b-cfg.yaml").resolve()


@dataclass
class Shipped(ConfigBase):
    """A family's config as the kit expects it (the defaults are ``shipped-paper``)."""

    config_dir: ClassVar[Path | None] = None
    default_name: ClassVar[str] = "shipped-paper"

    size: int = 8                     # px
    rate: float = 0.5
    widths: tuple[int, ...] = (4, 8)
    cap: int | None = None

    def validate(self, where: str = "config") -> Shipped:
        if self.size < 1:
            raise self.bad(where, "size", "must be >= 1")
        return self


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    _write(folder / "shipped-cpu.yaml", "size: 4\nwidths: [2, 4]\n")
    _write(folder / "shipped-tiny.yaml", "base: shipped-cpu\nsize: 2\n")
    monkeypatch.setattr(Shipped, "config_dir", folder)
    return folder


def test_config_base_loads_each_form_and_names_it(shipped, tmp_path):
    tiny, name = Shipped.load_named("shipped-tiny")
    assert (tiny, name) == (Shipped(size=2, widths=(2, 4)), "shipped-tiny")
    assert Shipped.load_named(None) == (Shipped(), "shipped-paper")
    assert Shipped.load_named({"rate": 1}) == (Shipped(rate=1.0), "custom")
    assert Shipped.load_named(Shipped(size=3)) == (Shipped(size=3), "custom")
    mine = _write(tmp_path / "mine.yaml", "base: shipped-cpu\ncap: 7\n")
    assert Shipped.load(mine, {"size": 5}) == Shipped(size=5, widths=(2, 4), cap=7)
    assert Shipped.shipped() == ["shipped-cpu", "shipped-tiny"]


def test_config_base_refuses_by_name_and_says_where(shipped, tmp_path):
    with pytest.raises(ConfigError, match=r"shipped-tiny\.yaml \(with overrides rtae\): unknown "
                                          r"key\(s\) 'rtae' \(did you mean 'rate'\?\); the keys "
                                          r"are the fields of .*Shipped: cap, rate, size, widths"):
        Shipped.load("shipped-tiny", {"rtae": 1.0})
    with pytest.raises(ConfigError, match="config dict: size: must be >= 1"):
        Shipped.load({"size": 0})
    with pytest.raises(ConfigError, match="widths: expected a list of int"):
        Shipped.load({"widths": [1.5]})
    with pytest.raises(ConfigError, match="config 'nope': no such file; .* shipped-cpu, "
                                          "shipped-tiny"):
        Shipped.load("nope")
    # A ConfigError is a ValueError and a MARBenchError.
    from benchmark.errors import MARBenchError

    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, MARBenchError)


def test_the_loader_is_importable_from_config_files_too():
    import benchmark.config_files as cf

    assert cf.check_keys is check_keys and cf.read_yaml_chain is read_yaml_chain
    with pytest.raises(AttributeError):
        cf.nothing_here  # noqa: B018


def test_config_base_json_round_trip(shipped, tmp_path):
    cfg = Shipped.load("shipped-tiny", {"cap": 3})
    cfg.save(tmp_path / "c.json")
    values = json.loads((tmp_path / "c.json").read_text())
    assert values == {"size": 2, "rate": 0.5, "widths": [2, 4], "cap": 3}
    assert Shipped.from_dict(values) == cfg


# ----------------------------------------------------------------------------- keys


def test_unknown_keys_get_a_did_you_mean_and_the_known_list():
    with pytest.raises(Bad, match=r"^f\.yaml: unknown key\(s\) 'rtae' \(did you mean 'rate'\?\), "
                                  r"'zzz'; known keys: size, rate$"):
        check_keys({"rtae": 1, "zzz": 2, "size": 3}, ["size", "rate"], "f.yaml", Bad)
    with pytest.raises(Bad, match=r"'sise' \(did you mean 'size'\?\); see Toy$"):
        check_keys(["sise"], ["size"], "w", Bad, known_hint="see Toy")
    check_keys({"size": 1}, ["size", "rate"], "w", Bad)  # all known: no error


def test_dataclass_kwargs_lists_fields_in_order_or_sorted():
    with pytest.raises(Bad, match="known keys: size, rate, name, flag,"):
        dataclass_kwargs(Toy, {"nmae": "x"}, "w", Bad)
    with pytest.raises(Bad, match="known keys: cap, flag, name, note, rate, size,"):
        dataclass_kwargs(Toy, {"nmae": "x"}, "w", Bad, sort_known=True)
    kw = dataclass_kwargs(Toy, {"rate": 1, "widths": [1, 2]}, "w", Bad)
    assert kw == {"rate": 1.0, "widths": (1, 2)} and isinstance(kw["rate"], float)
    assert Toy(**kw).widths == (1, 2)


def test_plain_dict_holds_lists_and_reads_back_to_the_same_config():
    toy = Toy(size=3, widths=(1, 2, 3), cap=7)
    d = plain_dict(toy)
    assert d["widths"] == [1, 2, 3] and d["window"] == [0.0, 1.0]
    assert Toy(**dataclass_kwargs(Toy, d, "w", Bad)) == toy


# ----------------------------------------------------------------------------- values


def _coerce(key: str, value: Any, **kw: Any) -> Any:
    fields = Toy.__dataclass_fields__
    return coerce_value(key, value, getattr(Toy(), key), fields[key].type, "w", Bad, **kw)


def test_bools_and_ints_are_never_each_other():
    with pytest.raises(Bad, match="w: size: expected an integer, got True"):
        _coerce("size", True)
    with pytest.raises(Bad, match="w: flag: expected true/false, got 1"):
        _coerce("flag", 1)
    with pytest.raises(Bad, match="w: rate: expected a number, got False"):
        _coerce("rate", False)
    assert _coerce("size", 3) == 3 and _coerce("flag", False) is False


def test_lists_become_tuples_and_ints_floats():
    assert _coerce("widths", [16, 32]) == (16, 32)
    assert isinstance(_coerce("widths", [16, 32]), tuple)
    with pytest.raises(Bad, match="w: widths: expected a list, got 16"):
        _coerce("widths", 16)
    rate = _coerce("rate", 2)
    assert rate == 2.0 and isinstance(rate, float)
    with pytest.raises(Bad, match="w: name: expected a string, got 3"):
        _coerce("name", 3)


def test_null_only_where_the_annotation_allows_it():
    assert _coerce("cap", None) is None and _coerce("note", None) is None
    with pytest.raises(Bad, match="w: size: may not be null"):
        _coerce("size", None)
    # the annotation, not the None default, says what a value must be
    with pytest.raises(Bad, match="w: cap: expected an integer, got 1.5"):
        _coerce("cap", 1.5)
    with pytest.raises(Bad, match="w: note: expected a string, got 2"):
        _coerce("note", 2)


def test_list_items_are_checked_unless_told_not_to():
    assert _coerce("widths", ["a", 1], check_items=False) == ("a", 1)
    with pytest.raises(Bad, match=r"w: widths: expected a list of int, got \['a', 1\]"):
        _coerce("widths", ["a", 1])
    with pytest.raises(Bad, match="expected a list of int"):
        _coerce("widths", [True])
    window = _coerce("window", [0, 2])
    assert window == (0.0, 2.0) and all(isinstance(v, float) for v in window)
    with pytest.raises(Bad, match="w: window: expected numbers"):
        _coerce("window", [0, "x"])


def test_annotations_as_types_and_unknown_annotations_fall_back_to_the_default():
    assert coerce_value("k", 3, 0.5, float, "w", Bad) == 3.0
    with pytest.raises(Bad, match="expected an integer"):
        coerce_value("k", "x", None, int | None, "w", Bad)
    with pytest.raises(Bad, match="expected true/false"):
        coerce_value("k", 0, True, "Any", "w", Bad)
    assert coerce_value("k", {"a": 1}, None, "Any", "w", Bad) == {"a": 1}
