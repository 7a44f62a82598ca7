"""The training kit end to end, through its template method (benchmark.learn.template): a run
folder that refuses, resumes exactly and keeps its config; the weights folder and its card;
``from_pretrained`` from a folder and from a Hub model repo at a revision (fake Hub); the
weights lookup of methods (option, environment variable, cache); the method contract."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from artifactgsi.fileio import sha256_file
from benchmark.learn.errors import NormalisationMismatchError, TrainError, WeightsError
from benchmark.learn.template import TemplateMethod, TemplateModel, train
from benchmark.method import PrepareContext
from benchmark.testing import check_method
from tests.helpers.files import edited_weights

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")

TINY = {"channels": 4, "blocks": 1, "patch_size": 16, "batch_size": 2, "max_steps": 6,
        "val_every": 3, "checkpoint_every": 2}


def _train(data: Path, out: Path, **kw) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one training patient in the tiny build
        return train(dict(TINY), data, out, **kw)


@pytest.fixture(scope="module")
def data(tiny_pairs) -> Path:
    return tiny_pairs


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    return _train(data, tmp_path_factory.mktemp("run") / "run")


def test_weights_folder_records_what_a_reader_needs(trained, data):
    meta = json.loads((trained / "config.json").read_text())
    model = TemplateModel.from_pretrained(trained)
    assert meta["format"] == "marbench-weights/1" and meta["family"] == "template"
    assert meta["config"] == {**TemplateModel.config_class().to_dict(), **TINY}
    manifest = sha256_file(Path(data) / "manifest.json")
    assert meta["training"]["dataset_manifest_sha256"] == manifest
    assert meta["model"] == {"parameters": model.parameter_count(), "image_size": 32,
                             "normalisation": {"kind": "hu_window", "hu_min": -1024.0,
                                               "hu_max": 3071.0, "range": [0.0, 1.0]},
                             "target": "gsi"}
    # 4 + 4 * 9 (input conv), 4 * 4 * 9 + 4 (one block), 4 * 9 + 1 (output conv)
    assert model.parameter_count() == 40 + 148 + 37
    card = (trained / "README.md").read_text()
    assert sha256_file(trained / "model.safetensors") in card and manifest in card
    assert "| parameters | 225 |" in card and "| image size | 32 px |" in card
    assert card.startswith("---\nlibrary_name: marbench\n")
    # The loaded tensors are the file's, and the weights' hash is the file's.
    state = load_file(str(trained / "model.safetensors"))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.weights_sha256 == sha256_file(trained / "model.safetensors")


def test_run_folder_refuses_resumes_exactly_and_keeps_its_config(data, trained, tmp_path):
    run = trained.parent
    with pytest.raises(TrainError, match="already holds a run"):
        _train(data, run)
    with pytest.raises(TrainError, match="nothing to resume"):
        _train(data, tmp_path / "none", resume=True)
    with pytest.raises(TrainError, match=r"different config \(keys lr\)"):
        train(dict(TINY, lr=0.5), data, run, resume=True)
    # Stopped by the time limit after its first step, then resumed: the same checkpoint,
    # log and weights as the uninterrupted run (a time limit may differ between invocations).
    _train(data, tmp_path / "cut", overrides={"time_limit_s": 0.0})
    state = json.loads((tmp_path / "cut/checkpoints/last/state.json").read_text())
    assert state["step"] == 1
    _train(data, tmp_path / "cut", resume=True)
    for name in ("checkpoints/last/model.safetensors", "model/model.safetensors"):
        a, b = load_file(str(run / name)), load_file(str(tmp_path / "cut" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    log_a = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "cut/log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log_a] == [3, 6] and [e["step"] for e in log_b] == [1, 3, 6]
    assert [e["val_psnr"] for e in log_a] == [e["val_psnr"] for e in log_b[1:]]


def test_edited_normalisation_and_other_families_are_refused(trained, tmp_path):
    def norm(**values):
        return lambda meta: meta["model"]["normalisation"].update(values)

    with pytest.raises(NormalisationMismatchError, match="'attenuation'"):
        TemplateModel.from_pretrained(edited_weights(trained, tmp_path / "a",
                                                     norm(kind="attenuation")))
    with pytest.raises(NormalisationMismatchError, match="was edited"):
        TemplateModel.from_pretrained(edited_weights(trained, tmp_path / "b",
                                                     norm(hu_max=2000.0)))
    with pytest.raises(WeightsError, match="these are 'unet' weights, not 'template' ones"):
        TemplateModel.from_pretrained(edited_weights(trained, tmp_path / "c",
                                                     lambda meta: meta.update(family="unet")))


def test_method_finds_weights_by_option_environment_then_cache(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("MARBENCH_TEMPLATE_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="no weights location given.*marbench train "
                                           "template .*MARBENCH_TEMPLATE_WEIGHTS"):
        TemplateMethod().prepare(PrepareContext())
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match="never runs with random weights"):
        TemplateMethod().prepare(PrepareContext(cache_dir=cache))
    (cache / "weights").parent.mkdir(parents=True)
    (cache / "weights").symlink_to(trained, target_is_directory=True)
    m = TemplateMethod()
    m.prepare(PrepareContext(cache_dir=cache))
    assert m.weights == str(cache / "weights")
    monkeypatch.setenv("MARBENCH_TEMPLATE_WEIGHTS", str(trained))
    m = TemplateMethod()
    m.prepare(PrepareContext(cache_dir=tmp_path / "elsewhere"))
    assert m.weights == str(trained) and m.weights_sha256 == sha256_file(
        trained / "model.safetensors")
    m = TemplateMethod(weights=str(tmp_path / "nowhere"))
    with pytest.raises(WeightsError, match="nowhere.*no such folder"):
        m.prepare(PrepareContext())


def test_method_keeps_the_marbench_contract(trained):
    check_method(TemplateMethod, size=32, weights=str(trained))


@pytest.mark.slow  # Hub clients in subprocesses (a few seconds each)
def test_from_pretrained_reads_a_hub_repo_at_a_revision(trained, fake_hub, hub_client,
                                                        tmp_path):
    first = fake_hub.add_folder("lab/template", trained, repo_type="model")
    changed = tmp_path / "changed"
    model = TemplateModel.from_pretrained(trained)
    with torch.no_grad():
        model.net[0].bias.add_(1.0)
    model.save_pretrained(changed)
    fake_hub.add_folder("lab/template", changed, repo_type="model")
    code = f"""
        from benchmark.learn.template import TemplateMethod, TemplateModel
        from benchmark.method import PrepareContext
        latest = TemplateModel.from_pretrained("lab/template")
        pinned = TemplateModel.from_pretrained("lab/template", revision={first!r})
        m = TemplateMethod(weights="lab/template", revision={first!r})
        m.prepare(PrepareContext())
        emit({{"latest": latest.weights_sha256, "pinned": pinned.weights_sha256,
              "method": m.weights_sha256, "weights": m.weights}})
    """
    got = hub_client(code)
    assert got["pinned"] == got["method"] == sha256_file(trained / "model.safetensors")
    assert got["latest"] == sha256_file(changed / "model.safetensors") != got["pinned"]
    assert got["weights"] == "lab/template"
    missing = hub_client("""
        from benchmark.learn.template import TemplateModel
        TemplateModel.from_pretrained("lab/none")
    """, expect_error=True)
    assert "lab/none" in missing["stderr"] and "downloading it as a Hub model repo failed" in \
        missing["stderr"]
