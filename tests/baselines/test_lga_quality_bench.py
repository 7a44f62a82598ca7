"""benchmarks/bench_lga_quality.py spread mode: the statistics and leads against hand-computed
numbers, and a tiny ``--repeats 2`` run (two builds with their own keys, two seeds, reuse)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from tests.helpers.files import load_script

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_lga_quality")


def test_spread_matches_hand_computed_statistics(bench):
    s = bench.spread([38.0, 39.0, 40.5])
    # mean 117.5 / 3; deviations -7/6, -1/6, 8/6 -> SD = sqrt((49 + 1 + 64) / 36 / 2)
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(117.5 / 3)
    assert s["sd"] == pytest.approx(math.sqrt(57) / 6)
    assert s["sd"] == pytest.approx(statistics.stdev([38.0, 39.0, 40.5]))
    assert (s["min"], s["max"]) == (38.0, 40.5)
    one = bench.spread([0.9])
    assert one["sd"] is None and one["mean"] == one["min"] == one["max"] == 0.9
    assert math.isnan(bench.spread([1.0, math.inf])["sd"])
    with pytest.raises(ValueError, match="no values"):
        bench.spread([])


def test_leads_gaps_and_rows_from_per_run_values(bench):
    from benchmark.results import METHOD_VS_GSI, METHOD_VS_IDEAL

    gsi, ideal = METHOD_VS_GSI, METHOD_VS_IDEAL
    run1 = {f"lga/{gsi}/psnr": 39.63, f"li/{gsi}/psnr": 36.45, f"nmar/{gsi}/psnr": 36.74,
            f"lga/{ideal}/psnr": 38.67, f"li/{ideal}/psnr": 37.53,
            "latent/lga": 37.81, "latent/vae_ceiling": 41.68,
            "latent/lga_v1": 39.63, "latent/vae_ceiling_v1": 43.11}
    d = bench.derived(run1)
    assert d == pytest.approx({
        f"lead/li/{gsi}/psnr": 3.18, f"lead/nmar/{gsi}/psnr": 2.89,
        f"lead/li/{ideal}/psnr": 1.14,  # no NMAR vs ideal in run1: no lead over it
        "gap/lga": -3.87, "gap/lga_v1": -3.48})
    run2 = {f"lga/{gsi}/psnr": 38.91, f"li/{gsi}/psnr": 36.45, f"lga/{gsi}/lpips": 0.03}
    rows = {r["key"]: r for r in bench.spread_rows([{**run1, **d}, run2], image_size=32)}
    lga = rows[f"lga/{gsi}/psnr"]
    assert lga["values"] == [39.63, 38.91] and lga["n"] == 2
    assert lga["mean"] == pytest.approx(39.27)
    assert lga["sd"] == pytest.approx(statistics.stdev([39.63, 38.91]))
    assert (lga["label"], lga["unit"], lga["higher_is_better"]) == ("LGA PSNR vs GSI", "dB",
                                                                     True)
    assert rows[f"li/{gsi}/psnr"]["sd"] == 0.0
    lp = rows[f"lga/{gsi}/lpips"]
    assert lp["values"] == [None, 0.03] and lp["n"] == 1 and lp["sd"] is None
    assert lp["higher_is_better"] is False
    assert f"lead/nmar/{ideal}/psnr" not in rows
    assert rows[f"lead/li/{ideal}/psnr"]["label"] == "LGA − LI: PSNR vs ideal"
    assert rows["gap/lga"]["label"] == "LGA − VAE ceiling, 32 px"
    md = bench.spread_markdown("t", list(rows.values()), ["a note"])
    assert md.count("\n| ") == len(rows) + 1  # header + one line per row
    assert "| LGA PSNR vs GSI (dB) | 39.27 | 0.51 | 38.91 | 39.63 | 39.63 / 38.91 |" in md
    assert "| LGA LPIPS vs GSI ↓ | 0.0300 |  | 0.0300 | 0.0300 | – / 0.0300 |" in md


def test_spread_options_are_checked(bench, capsys):
    a = bench.parse_args([])
    assert (a.repeats, a.raw, a.seeds) == (1, None, None)  # today's single run
    a = bench.parse_args(["--raw", "r", "--seeds", "3", "7"])
    assert (a.repeats, a.seeds) == (2, [3, 7])
    for argv, msg in ((["--repeats", "2"], "need --raw"),
                      (["--raw", "r", "--repeats", "3", "--seeds", "1", "2"], "lists 2 seeds"),
                      (["--raw", "r", "--seeds", "1", "1"], "must differ"),
                      (["--raw", "r", "--weights", "w"], "exclude each other")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert msg in capsys.readouterr().err


def _model_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in sorted(out.glob("rep*/lga-run/model/*"))}


@pytest.mark.slow
def test_repeats_build_with_own_keys_train_with_own_seeds_and_resume(
        bench, tiny_built, tmp_path, capsys):
    from benchmark.results import METHOD_VS_GSI, Results

    out = tmp_path / "spread"
    argv = ["--raw", str(tiny_built.raw), "--repeats", "2", "--config", "lga-tiny",
            "--out", str(out), "--no-lpips"]
    threads = torch.get_num_threads()
    try:
        bench.main(argv)
    finally:
        torch.set_num_threads(threads)

    keys = [(out / f"rep{i}" / "key.bin").read_bytes() for i in range(2)]
    assert keys[0] != keys[1] and all(len(k) == 32 for k in keys)
    seeds = [json.loads((out / f"rep{i}" / "lga-run" / "config.json").read_text())["seed"]
             for i in range(2)]
    assert seeds == [0, 1]
    # Other keys: other pseudonyms for the same test patients.
    pids = [{s.patient_id for s in Results.load(out / f"rep{i}" / "lga").per_slice}
            for i in range(2)]
    assert pids[0].isdisjoint(pids[1])
    # The baselines' test split had the same content in both builds: scored once.
    assert len(list((out / "baselines").iterdir())) == 1

    spread = json.loads((out / "spread.json").read_text())
    assert spread["n"] == 2 and spread["seeds"] == [0, 1]
    assert spread["runs"][0]["build_manifest_sha256"] != spread["runs"][1]["build_manifest_sha256"]
    rows = {r["key"]: r for r in spread["rows"]}
    for r in rows.values():
        assert len(r["values"]) == 2 and r["n"] == 2, r["key"]
    for key in (f"lga/{METHOD_VS_GSI}/psnr", f"lead/li/{METHOD_VS_GSI}/psnr",
                f"lead/nmar/{METHOD_VS_GSI}/psnr", "latent/vae_ceiling", "gap/lga_v1",
                "lga/method_vs_ideal/ssim"):
        assert key in rows
    assert not any(k.endswith("/lpips") for k in rows)
    assert rows[f"li/{METHOD_VS_GSI}/psnr"]["sd"] == 0.0
    lga = rows[f"lga/{METHOD_VS_GSI}/psnr"]
    assert lga["mean"] == pytest.approx(statistics.fmean(lga["values"]))
    assert lga["sd"] == pytest.approx(statistics.stdev(lga["values"]))
    assert (out / "spread.md").read_text().startswith("# LGA spread over 2 runs")

    # A second invocation reuses both finished runs: no build, no training.
    before = _model_mtimes(out)
    assert len(before) >= 4
    capsys.readouterr()
    try:
        bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    said = capsys.readouterr().out
    assert said.count("reusing") == 2
    assert _model_mtimes(out) == before
    assert json.loads((out / "spread.json").read_text())["rows"] == spread["rows"]
