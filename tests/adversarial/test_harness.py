"""The harness under hostile input: a method cannot change how it is scored, a hand-edited
results file is refused, every failure is named, and a failed run leaves no mixed outputs.

Data: a tiny dataset simulated and built by the library itself (``tiny_built``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

METHODS = '''
import sys
import torch
from benchmark.method import MARMethod, MAROutput


class InPlaceEditor(MARMethod):
    """Returns the ordinary image, after vandalising every input tensor in place."""
    name = "in_place_editor"

    def reduce(self, batch):
        out = batch.ordinary.clone()
        batch.ordinary.fill_(-1000.0)
        batch.metal_mask.fill_(True)          # a wider mask would hide streaks
        batch.pixel_spacing_mm.mul_(10.0)     # and move every mm-sized ROI
        if batch.neighbours is not None:
            batch.neighbours.zero_()
        return MAROutput(image=out)


class Exits(MARMethod):
    name = "exits"

    def reduce(self, batch):
        sys.exit(0)


class Raises(MARMethod):
    name = "raises"

    def reduce(self, batch):
        raise RuntimeError("kaboom")
'''


@pytest.fixture()
def methods_module(tmp_path, monkeypatch):
    (tmp_path / "adv_methods.py").write_text(METHODS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("adv_methods", None)
    return "adv_methods"


@pytest.fixture(scope="module")
def built(tiny_built, isolated_datasets_cache) -> Path:
    return Path(tiny_built.built)


@pytest.fixture(scope="module")
def identity_run(built, tmp_path_factory):
    from benchmark.run import run_benchmark

    out = tmp_path_factory.mktemp("adv") / "identity"
    return out, run_benchmark("identity", str(built), "test", out, lpips=None, verbose=False)


def _text(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _scores(results) -> str:
    """Every per-slice value, exactly (repr: NaN, an undefined metric, equals NaN)."""
    return repr([s.scores for s in results.per_slice])


# ----------------------------------------------------------------------------- class 3


def test_a_method_that_edits_its_inputs_cannot_change_its_score(built, identity_run, tmp_path,
                                                                methods_module):
    from benchmark.run import run_benchmark

    _, ref = identity_run
    res = run_benchmark(f"{methods_module}:InPlaceEditor", str(built), "test", tmp_path / "o",
                        lpips=None, verbose=False)
    # Same output as identity, so every metric (clinical ones use the mask and the spacing)
    # must be identical: nothing the method got aliases what the scorer used.
    assert _scores(res) == _scores(ref)
    assert [s.metal_pixels for s in res.per_slice] == [s.metal_pixels for s in ref.per_slice]


# ----------------------------------------------------------------------------- class 6


def test_system_exit_inside_reduce_is_a_named_failure(built, tmp_path, methods_module):
    from benchmark.cli import app

    r = CliRunner().invoke(app, ["run", "--method", f"{methods_module}:Exits", "--data",
                                 str(built), "--out", str(tmp_path / "o"), "--no-lpips"])
    assert r.exit_code == 2, r.output
    assert "reduce() raised SystemExit" in _text(r) and "slice" in _text(r)
    assert not (tmp_path / "o" / "results.json").exists()


# ----------------------------------------------------------------------------- class 13


def test_a_failed_run_leaves_the_earlier_outputs_whole(built, tmp_path, methods_module):
    from benchmark.results import Results, verify_results
    from benchmark.run import MethodRunError, run_benchmark

    out = tmp_path / "run"
    run_benchmark("identity", str(built), "test", out, lpips=None, clinical=False,
                  verbose=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(MethodRunError, match="kaboom"):
        run_benchmark(f"{methods_module}:Raises", str(built), "test", out, lpips=None,
                      clinical=False, verbose=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    # ... and they still agree with each other.
    assert verify_results(Results.load(out), out).verified
    # No staging folder is left beside it.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_successful_rerun_replaces_every_output(built, tmp_path):
    from benchmark.results import Results, verify_results
    from benchmark.run import run_benchmark

    out = tmp_path / "run"
    run_benchmark("identity", str(built), "test", out, lpips=None, clinical=False,
                  verbose=False)
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # the user's own file stays
    res = run_benchmark("li", str(built), "test", out, lpips=None, clinical=False,
                        verbose=False, figure=False)
    assert res.method.name == "li" and not (out / "figure.png").exists()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert verify_results(Results.load(out), out).verified


# ----------------------------------------------------------------------------- class 14, 15


def test_a_folder_without_manifest_needs_no_verify(built, tmp_path):
    from benchmark.cli import app

    copy = tmp_path / "nomanifest"
    shutil.copytree(built, copy)
    (copy / "manifest.json").unlink()
    r = CliRunner().invoke(app, ["run", "--method", "identity", "--data", str(copy), "--out",
                                 str(tmp_path / "o"), "--no-lpips", "--no-clinical"])
    assert r.exit_code == 2 and "no manifest.json" in _text(r) and "--no-verify" in _text(r)
    r = CliRunner().invoke(app, ["run", "--method", "identity", "--data", str(copy), "--out",
                                 str(tmp_path / "o"), "--no-lpips", "--no-clinical",
                                 "--no-verify"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "results.json").read_text())["dataset"][
        "manifest_sha256"] is None


def test_lpips_weights_that_do_not_exist_are_an_error(built, tmp_path):
    from benchmark.cli import app

    missing = tmp_path / "alexnet.safetensors"
    r = CliRunner().invoke(app, ["run", "--method", "identity", "--data", str(built), "--out",
                                 str(tmp_path / "o"), "--lpips-weights", str(missing)])
    assert r.exit_code == 2 and "no such file" in _text(r) and "alexnet" in _text(r)


# ----------------------------------------------------------------------------- class 4, 8, 16


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_compare_refuses_an_edited_summary(identity_run, tmp_path):
    from benchmark.cli import app

    run = _copy_run(identity_run[0], tmp_path / "edited")
    raw = json.loads((run / "results.json").read_text())
    raw["comparisons"]["method_vs_gsi"]["summary"]["psnr"]["mean"] = 99.0
    (run / "results.json").write_text(json.dumps(raw))
    r = CliRunner().invoke(app, ["compare", str(run)])
    assert r.exit_code == 2
    assert "summary['psnr'].mean is 99.0 but the per-slice values give" in _text(r)


def test_compare_refuses_predictions_that_are_not_the_scored_ones(identity_run, tmp_path):
    from benchmark.cli import app

    run = _copy_run(identity_run[0], tmp_path / "swapped")
    pred = next((run / "predictions").glob("*.parquet"))
    pred.write_bytes(pred.read_bytes()[:-8] + b"\0" * 8)
    r = CliRunner().invoke(app, ["compare", str(run)])
    assert r.exit_code == 2 and "sha256" in _text(r) and "not the ones scored" in _text(r)


def test_compare_marks_runs_without_predictions_unverified(identity_run, tmp_path):
    from benchmark.cli import app

    run = _copy_run(identity_run[0], tmp_path / "nopred")
    shutil.rmtree(run / "predictions")
    r = CliRunner().invoke(app, ["compare", "--markdown", str(run)])
    assert r.exit_code == 0, r.output
    assert "(unverified)" in r.stdout and "unverified:" in _text(r)


def test_compare_names_a_binary_file(tmp_path):
    from benchmark.cli import app

    f = tmp_path / "results.json"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    r = CliRunner().invoke(app, ["compare", str(f)])
    assert r.exit_code == 2 and "not UTF-8" in _text(r)
    assert str(f) in _text(r).replace(" ", "")


def test_compare_markdown_escapes_pipes_in_names(identity_run, tmp_path):
    from benchmark.cli import app

    run = _copy_run(identity_run[0], tmp_path / "pipe")
    raw = json.loads((run / "results.json").read_text())
    raw["method"]["name"] = "a|b"
    (run / "results.json").write_text(json.dumps(raw))
    r = CliRunner().invoke(app, ["compare", "--markdown", str(run)])
    assert r.exit_code == 0, r.output
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("| a"))
    assert row.startswith("| a\\|b v1 |")
    head = r.stdout.splitlines()[0]
    assert row.count(" | ") == head.count(" | ")  # the escaped pipe opens no column


# ----------------------------------------------------------------------------- class 5


def test_error_text_keeps_square_brackets(tmp_path):
    from benchmark.cli import app

    missing = tmp_path / "data[ab]"
    r = CliRunner().invoke(app, ["run", "--method", "identity", "--data", str(missing)])
    assert r.exit_code == 2 and "data[ab]" in _text(r).replace(" ", "")
