"""Metrics and learned methods that plug in: a metric declared by another package's
``marbench.metrics`` entry point, and a learned method with its trainer (``marbench.methods``,
``marbench.trainers``), are trained, computed and scored by the project's own commands and
reach results.json, ``marbench compare`` and the board without any other file changing; a
declared metric that cannot be computed is a named error."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from benchmark.metrics import registry as reg
from benchmark.metrics.registry import (
    METRIC_ENTRY_POINTS,
    MetricComputationError,
    MetricSpec,
    UnknownMetricError,
)

PLUGIN = Path(__file__).parent / "plugin_pkg" / "marbench_demo_plugin"


@pytest.fixture
def clean_registry():
    """Restore the global registry after a test registers plug-ins."""
    saved = dict(reg.METRICS)
    yield reg
    reg.METRICS.clear()
    reg.METRICS.update(saved)
    reg._plugins_loaded = False
    sys.modules.pop("marbench_demo_plugin", None)
    sys.modules.pop("marbench_demo_plugin.metrics", None)
    sys.modules.pop("marbench_demo_plugin.learned", None)
    import benchmark.registry as methods

    methods.REGISTRY.__init__()  # forget entry points read while the plug-in was installed


def install(site: Path, entry_points: dict[str, dict[str, str]]) -> None:
    """What pip writes for the demo plug-in's wheel: the package and its .dist-info."""
    shutil.copytree(PLUGIN, site / PLUGIN.name, dirs_exist_ok=True)
    info = site / "marbench_demo_plugin-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    info.joinpath("METADATA").write_text("Metadata-Version: 2.1\nName: marbench-demo-plugin\n"
                                         "Version: 0.1.0\n")
    lines = []
    for group, eps in entry_points.items():
        lines += [f"[{group}]"] + [f"{k} = {v}" for k, v in eps.items()] + [""]
    info.joinpath("entry_points.txt").write_text("\n".join(lines))


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def sobel_rmse(a: np.ndarray, b: np.ndarray) -> float:
    ga = np.hypot(ndimage.sobel(a, 0), ndimage.sobel(a, 1))
    gb = np.hypot(ndimage.sobel(b, 0), ndimage.sobel(b, 1))
    return float(np.sqrt(np.mean((ga - gb) ** 2)))


@pytest.mark.slow
def test_plugin_metric_reaches_results_compare_and_board(plugin_site, tiny_built, tmp_path):
    install(plugin_site, {METRIC_ENTRY_POINTS: {
        "gradient_rmse": "marbench_demo_plugin.metrics:GRADIENT_RMSE"}})
    assert "gradient_rmse" in reg.load_metric_plugins(reload=True)
    from benchmark.cli import app
    from benchmark.metrics.protocol import MARBENCH_V1, hu_to_unit, resample_hu
    from benchmark.results import Results
    from benchmark.run import run_benchmark

    runs = {}
    for m in ("identity", "li"):
        runs[m] = run_benchmark(m, tiny_built.built, out=tmp_path / m, lpips=None,
                                verbose=False, reference_cache=None)
    r = runs["identity"]
    assert r.metrics["gradient_rmse"].label == "grad RMSE"
    assert r.metrics["gradient_rmse"].higher_is_better is False
    summary = r.comparisons["method_vs_gsi"].summary["gradient_rmse"]
    assert summary.n == len(r.per_slice)

    # The value is the plug-in's maths: recompute one slice independently from the dataset.
    import datasets

    ds = datasets.load_dataset(str(tiny_built.built), "pairs", split="test").with_format(
        "numpy", dtype=None)
    row = ds[0]

    def unit(a: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(a.astype(np.float32))[None, None]
        p = MARBENCH_V1
        return hu_to_unit(resample_hu(t, p.eval_size), p.hu_min, p.hu_max)[0, 0].double().numpy()

    want = sobel_rmse(unit(row["ordinary"]), unit(row["gsi"]))
    got = r.per_slice[0].scores["method_vs_gsi"]["gradient_rmse"]
    assert r.per_slice[0].patient_id == row["patient_id"]
    assert got == pytest.approx(want, rel=1e-6)

    # compare: a column, with the best row flagged, read from the results' declarations.
    res = CliRunner().invoke(app, ["compare", "--markdown", str(tmp_path / "identity"),
                                   str(tmp_path / "li")])
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0]
    assert "grad RMSE ↓ (vs GSI)" in header

    # the board: a default column of a board made from these results, shown on its page.
    from leaderboard.board import config_from_results

    cfg = config_from_results(Results.load(tmp_path / "identity"), "T")
    assert "method_vs_gsi.gradient_rmse" in [m.key for m in cfg.metrics]


def test_unknown_metric_name_suggests(clean_registry):
    with pytest.raises(UnknownMetricError, match="did you mean psnr"):
        reg.get_metric("psrn")


def test_declared_metric_that_cannot_be_computed_is_a_named_error(clean_registry):
    import torch

    from benchmark.metrics import Scorer

    reg.register_metric(MetricSpec("broken_metric", True, "", "no such code",
                                   compute="no_such_module_xyz:fn"))
    sc = Scorer(lpips=None, clinical=False)
    assert "broken_metric" in sc.metrics
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(MetricComputationError, match="broken_metric.*does not import"):
        sc.update(x, x)


def test_computation_that_omits_a_declared_metric_is_a_named_error(clean_registry):
    import torch

    from benchmark.metrics import Scorer

    # The image computation returns psnr / ssim, never "psnr_twin".
    reg.register_metric(MetricSpec("psnr_twin", True, "dB", "declared but never returned",
                                   compute="benchmark.metrics.image:score_image"))
    sc = Scorer(lpips=None, clinical=False)
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(MetricComputationError, match="psnr_twin.*did not return it"):
        sc.update(x, x + 1.0)


def test_broken_plugin_entry_point_is_named(plugin_site):
    install(plugin_site, {METRIC_ENTRY_POINTS: {"bad": "marbench_demo_plugin:WindowClamp"}})
    with pytest.raises(MetricComputationError, match="'bad'.*not a .*MetricSpec"):
        reg.load_metric_plugins(reload=True)


def test_a_need_the_run_cannot_meet_is_missing_with_its_reason(clean_registry):
    import torch

    from benchmark.metrics import Scorer

    reg.register_metric(MetricSpec("needs_labels", True, "", "x", needs=("labels",),
                                   compute="benchmark.metrics.image:score_image"))
    sc = Scorer(lpips=None, clinical=False)
    assert "needs_labels" not in sc.metrics
    assert "labels" in sc.missing["needs_labels"]
    x = torch.zeros(1, 1, 16, 16)
    assert set(sc.update(x, x + 1)[0]) == {"slice", "psnr", "ssim"}


@pytest.mark.slow
def test_a_plugin_learned_method_and_metric_reach_results_compare_and_the_board(
        plugin_site, tiny_built, tmp_path):
    """Train the plug-in's learned method with `marbench train`, score it with `marbench run`
    (the plug-in metric computed), compare it, and put it on a board beside identity."""
    import json

    from benchmark.cli import app

    install(plugin_site, {
        METRIC_ENTRY_POINTS: {"gradient_rmse": "marbench_demo_plugin.metrics:GRADIENT_RMSE"},
        "marbench.methods": {"demo-learned": "marbench_demo_plugin.learned:DemoLearned"},
        "marbench.trainers": {"demo-learned": "marbench_demo_plugin.learned:train"}})
    reg.load_metric_plugins(reload=True)
    import benchmark.registry as methods

    methods.REGISTRY.__init__()  # a fresh method registry sees the new entry points
    runner = CliRunner()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("channels: 4\nblocks: 1\npatch_size: 16\nbatch_size: 2\nmax_steps: 4\n"
                   "val_every: 2\ncheckpoint_every: 2\n")
    res = runner.invoke(app, ["train", "demo-learned", "--config", str(cfg), "--data",
                              str(tiny_built.built), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    model = tmp_path / "run" / "model"
    assert (model / "model.safetensors").is_file()
    for name, opts in (("identity", []), ("demo-learned", ["-O", f"weights={model}"])):
        res = runner.invoke(app, ["run", "--method", name, *opts, "--data",
                                  str(tiny_built.built), "--out", str(tmp_path / name),
                                  "--no-lpips", "--reference-cache", "off"])
        assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "demo-learned" / "results.json").read_text())
    assert r["method"]["name"] == "demo-learned" and r["method"]["weights_sha256"]
    assert "gradient_rmse" in r["comparisons"]["method_vs_gsi"]["summary"]
    res = runner.invoke(app, ["compare", "--markdown", str(tmp_path / "identity"),
                              str(tmp_path / "demo-learned"), "--stats", "none"])
    assert res.exit_code == 0, res.output
    assert "grad RMSE" in res.stdout.splitlines()[0]
    assert any(ln.startswith("| demo-learned") for ln in res.stdout.splitlines())

    from leaderboard.cli import app as board_app

    board = tmp_path / "board"
    res = runner.invoke(board_app, ["init", str(board), "--reference",
                                    str(tmp_path / "identity"), "--title", "T"])
    assert res.exit_code == 0, res.output
    card = tmp_path / "card.yaml"
    card.write_text("name: demo-learned\nauthors: [Plug-in Author]\ncode: https://example.org\n"
                    "licence: MIT\ntrack: paired-supervised\nno_test_patients: true\n")
    res = runner.invoke(board_app, ["submit", str(tmp_path / "demo-learned"), "--board",
                                    str(board), "--card", str(card)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(board_app, ["render", str(board), "--out", str(tmp_path / "site")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "site" / "index.html").read_text()
    assert "demo-learned" in page and "grad RMSE" in page
