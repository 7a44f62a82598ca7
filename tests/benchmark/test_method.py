"""The method interface, output validation, the identity baseline and the registry."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from baselines.identity import Identity
from benchmark.method import MARInput, MARMethod, MAROutput, MethodOutputError, validate_output
from benchmark.registry import (
    ENTRY_POINT_GROUP,
    DuplicateMethodError,
    MethodRegistry,
    UnknownMethodError,
    create_method,
    get_method,
)

PLUGIN_SRC = Path(__file__).parent / "plugin_pkg" / "marbench_demo_plugin"


def make_batch(b: int = 2, h: int = 16, w: int = 12) -> MARInput:
    g = torch.Generator().manual_seed(0)
    ordinary = torch.randn(b, 1, h, w, generator=g) * 300.0
    return MARInput(ordinary=ordinary, metal_mask=ordinary > 600.0,
                    pixel_spacing_mm=torch.full((b,), 0.8), implant_type=["hip_prosthesis"] * b,
                    patient_id=[f"P{i:03d}" for i in range(b)],
                    slice_index=[10 + i for i in range(b)])


# ----------------------------------------------------------------------------- MARInput


def test_marinput_rejects_wrong_shapes_naming_the_field():
    batch = make_batch()
    with pytest.raises(ValueError, match="ordinary must be a \\(B, 1, H, W\\)"):
        MARInput(ordinary=batch.ordinary[:, 0], metal_mask=batch.metal_mask,
                 pixel_spacing_mm=batch.pixel_spacing_mm, implant_type=batch.implant_type,
                 patient_id=batch.patient_id, slice_index=batch.slice_index)
    with pytest.raises(ValueError, match="metal_mask must be a bool"):
        MARInput(ordinary=batch.ordinary, metal_mask=batch.metal_mask.float(),
                 pixel_spacing_mm=batch.pixel_spacing_mm, implant_type=batch.implant_type,
                 patient_id=batch.patient_id, slice_index=batch.slice_index)
    with pytest.raises(ValueError, match="patient_id must have one entry per slice"):
        MARInput(ordinary=batch.ordinary, metal_mask=batch.metal_mask,
                 pixel_spacing_mm=batch.pixel_spacing_mm, implant_type=batch.implant_type,
                 patient_id=["P000"], slice_index=batch.slice_index)
    with pytest.raises(ValueError, match="neighbours must be \\(B, 2k\\+1, H, W\\)"):
        MARInput(ordinary=batch.ordinary, metal_mask=batch.metal_mask,
                 pixel_spacing_mm=batch.pixel_spacing_mm, implant_type=batch.implant_type,
                 patient_id=batch.patient_id, slice_index=batch.slice_index,
                 neighbours=torch.zeros(2, 2, 16, 12))


# ----------------------------------------------------------------------------- validation


def test_validate_output_names_method_and_slice_for_nan_and_inf():
    batch = make_batch(b=3)
    img = batch.ordinary.clone()
    img[1, 0, 3, 4] = float("nan")
    img[1, 0, 5, 5] = float("inf")
    with pytest.raises(MethodOutputError) as e:
        validate_output("my-mar", batch, MAROutput(image=img))
    msg = str(e.value)
    assert "'my-mar'" in msg and "patient 'P001' slice 11" in msg
    assert "1 NaN and 1 inf" in msg
    assert "P000" not in msg and "P002" not in msg  # only the bad slice is named


def test_validate_output_wrong_shape_dtype_and_type():
    batch = make_batch()
    with pytest.raises(MethodOutputError, match=r"'m'.*shape \(2, 1, 16, 11\).*P000' slice 10"):
        validate_output("m", batch, MAROutput(image=batch.ordinary[..., :11]))
    with pytest.raises(MethodOutputError, match=r"'m'.*torch.float64.*P001' slice 11"):
        validate_output("m", batch, MAROutput(image=batch.ordinary.double()))
    with pytest.raises(MethodOutputError, match=r"'m': reduce\(\) returned Tensor"):
        validate_output("m", batch, batch.ordinary)
    assert validate_output("m", batch, MAROutput(image=batch.ordinary)) is batch.ordinary


def test_identity_returns_its_input_as_a_copy():
    batch = make_batch()
    out = Identity().reduce(batch)
    img = validate_output("identity", batch, out)
    assert torch.equal(img, batch.ordinary)
    img.add_(1.0)
    assert not torch.equal(img, batch.ordinary)  # the input is untouched


# ----------------------------------------------------------------------------- registry


class _Other(MARMethod):
    """Another method used to provoke a name clash."""

    def reduce(self, batch: MARInput) -> MAROutput:
        return MAROutput(image=batch.ordinary)


def test_registry_register_duplicate_and_did_you_mean():
    reg = MethodRegistry(group=None)  # code registrations only
    reg.register("identity", Identity)
    reg.register("identity", "baselines.identity:Identity")  # same class: accepted
    with pytest.raises(DuplicateMethodError, match="'identity' is claimed twice"):
        reg.register("identity", _Other)
    reg.register("dudodp", _Other)
    with pytest.raises(UnknownMethodError) as e:
        reg.get("identiy")
    msg = str(e.value)
    assert "Did you mean 'identity'?" in msg and "Registered methods: dudodp, identity" in msg
    with pytest.raises(UnknownMethodError, match="Did you mean 'identity'"):
        reg.get("Identity")
    assert reg.get("identity") is Identity


def test_module_class_spec_and_its_errors():
    reg = MethodRegistry(group=None)
    assert reg.get("baselines.identity:Identity") is Identity
    assert get_method("baselines.identity:Identity") is Identity
    method = create_method("baselines.identity:Identity")
    assert isinstance(method, Identity) and method.name == "identity"
    with pytest.raises(TypeError, match="not a subclass of benchmark.method.MARMethod"):
        reg.get("benchmark.method:MAROutput")
    with pytest.raises(ImportError, match=r"'no_such_pkg.mod' \(No module named 'no_such_pkg'"):
        reg.get("no_such_pkg.mod:Thing")
    with pytest.raises(ImportError, match="has no attribute 'Nope'"):
        reg.get("baselines.identity:Nope")


def _install_dist(site: Path, dist: str, entry_points: dict[str, str],
                  with_plugin_source: bool) -> None:
    """What pip writes for an installed wheel: the package and a .dist-info folder."""
    if with_plugin_source:
        shutil.copytree(PLUGIN_SRC, site / PLUGIN_SRC.name)
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    info.joinpath("entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("marbench_demo_plugin", None)


def test_third_party_entry_point_is_found_lazily(plugin_site: Path):
    _install_dist(plugin_site, "marbench-demo-plugin",
                  {"demo-window": "marbench_demo_plugin:WindowClamp"}, with_plugin_source=True)
    sys.modules.pop("marbench_demo_plugin", None)
    reg = MethodRegistry()
    assert "demo-window" in reg.names()
    assert "marbench_demo_plugin" not in sys.modules  # listing names imports nothing
    cls = reg.get("demo-window")
    assert "marbench_demo_plugin" in sys.modules
    assert cls.__name__ == "WindowClamp" and issubclass(cls, MARMethod)
    method = reg.create("demo-window", hi_hu=1000.0)
    batch = make_batch()
    out = validate_output(method.name, batch, method.reduce(batch))
    assert torch.equal(out, batch.ordinary.clamp(-1024.0, 1000.0))
    info = {i.name: i for i in reg.infos()}["demo-window"]
    assert info.summary == "Clamps the ordinary image to the 12-bit CT range [-1024, 3071] HU."
    assert info.source == "entry point of marbench-demo-plugin"
    with pytest.raises(UnknownMethodError, match="Did you mean 'demo-window'"):
        reg.get("demo_windw")


def test_entry_point_clash_is_reported_only_for_that_name(plugin_site: Path):
    _install_dist(plugin_site, "marbench-demo-plugin",
                  {"demo-window": "marbench_demo_plugin:WindowClamp"}, with_plugin_source=True)
    _install_dist(plugin_site, "another-plugin",
                  {"demo-window": "baselines.identity:Identity",
                   "demo-identity": "baselines.identity:Identity"}, with_plugin_source=False)
    reg = MethodRegistry()
    with pytest.raises(DuplicateMethodError) as e:
        reg.get("demo-window")
    assert "marbench-demo-plugin" in str(e.value) and "another-plugin" in str(e.value)
    assert reg.get("demo-identity") is Identity  # unrelated names still work
    summary = {i.name: i.summary for i in reg.infos()}["demo-window"]
    assert summary.startswith("(name claimed twice")


def test_broken_entry_point_is_listed_with_its_reason(plugin_site: Path):
    _install_dist(plugin_site, "broken-plugin", {"broken": "no_such_module_xyz:Method"},
                  with_plugin_source=False)
    reg = MethodRegistry()
    summary = {i.name: i.summary for i in reg.infos()}["broken"]
    assert summary.startswith("(cannot load: ImportError") and "no_such_module_xyz" in summary
    with pytest.raises(ImportError, match="method 'broken' \\(entry point of broken-plugin\\)"):
        reg.get("broken")


def test_identity_is_registered_through_this_projects_entry_point():
    import importlib.metadata as md

    from benchmark.registry import list_methods

    eps = md.distribution("artifactgsi").entry_points.select(group=ENTRY_POINT_GROUP)
    if "identity" not in eps.names:
        pytest.skip("pyproject.toml's marbench.methods entry points are not installed yet "
                    "(add them, then `pip install -e .`)")
    assert get_method("identity") is Identity
    rows = {i.name: i for i in list_methods()}
    assert rows["identity"].summary == Identity.__doc__.splitlines()[0]
    assert rows["identity"].target == "baselines.identity:Identity"
