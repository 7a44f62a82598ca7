"""`marbench scanners`: the same patients on two scanner profiles, scored and tabulated."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from artifactgsi.build import build_dataset
from artifactgsi.simulate import SimConfig, simulate_dataset
from benchmark.apply.cross_scanner import load_scanner_runs, scanner_table
from benchmark.cli import app
from benchmark.errors import MARBenchError
from benchmark.run import run_benchmark

CFG = SimConfig(patients=1, slices=2, size=48, seed=1, clean_patients=0, supersample=1,
                split_hint="test")
SCANNERS = ("gsi-hd", "low-dose-100kv")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scanners")
    for s in SCANNERS:
        simulate_dataset(replace(CFG, scanner=s), root / s / "raw")
        build_dataset(root / s / "raw", root / s / "built", secret=b"k" * 32)
        for m in ("identity", "li"):
            run_benchmark(m, str(root / s / "built"), "test", root / s / "results" / m,
                          lpips=None, clinical=False, figure=False, verbose=False)
    return root


def _per_slice_mean(run: Path, column: str) -> float:
    with (run / "per_slice.csv").open() as f:
        return float(np.mean([float(r[column]) for r in csv.DictReader(f)]))


def test_table_means_and_gains_come_from_the_per_slice_values(root):
    sr = load_scanner_runs(root)
    assert sr.scanners == list(SCANNERS) and sr.methods == ["identity", "li"]
    headers, rows = scanner_table(sr, "psnr", "ideal")
    assert headers == ["gsi-hd", "gsi-hd gain", "low-dose-100kv", "low-dose-100kv gain"]
    cells = dict(rows)
    columns = next(csv.reader((root / "gsi-hd/results/li/per_slice.csv").open()))
    col = next(c for c in columns if "ideal" in c and c.endswith("psnr"))
    for j, s in enumerate(SCANNERS):
        li = _per_slice_mean(root / s / "results" / "li", col)
        ident = _per_slice_mean(root / s / "results" / "identity", col)
        assert cells["li"][2 * j] == pytest.approx(li, abs=1e-9)
        assert cells["li"][2 * j + 1] == pytest.approx(li - ident, abs=1e-9)
        assert cells["identity"][2 * j + 1] == pytest.approx(0.0, abs=1e-12)
    # The scanners differ (their ordinary images do), the same patients are scored.
    assert cells["identity"][0] != cells["identity"][2]


def test_cli_prints_and_writes_markdown(root, tmp_path):
    md = tmp_path / "table.md"
    res = CliRunner().invoke(app, ["scanners", str(root), "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    assert "low-dose-100kv" in res.output
    text = md.read_text()
    assert text.startswith("| method | gsi-hd | gsi-hd gain |") and "| li |" in text


def test_an_edited_run_is_refused_by_name(root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    f = copy / "low-dose-100kv/results/li/results.json"
    data = json.loads(f.read_text())
    data["comparisons"]["method_vs_ideal"]["summary"]["psnr"]["mean"] += 1.0
    f.write_text(json.dumps(data))
    with pytest.raises(MARBenchError, match="low-dose-100kv/results/li"):
        load_scanner_runs(copy)
    res = CliRunner().invoke(app, ["scanners", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such folder" in res.output
