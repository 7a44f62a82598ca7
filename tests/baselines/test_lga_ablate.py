"""``marbench ablate``: the five Table 1 rows of LGA at a toy scale are built as the base
config plus each row's switches, trained, scored, printed in the paper's order and written
to ablation.json / ablation.md."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: A model small enough that a row trains in about a second on one core (as test_lga.py).
TINY = dict(image_size=32, vae_channels=[8, 16], vae_layers_per_block=1, vae_norm_groups=4,
            vae_mid_attention=False, inv_channels=[8, 16], inv_embed_dim=8,
            align_channels=[8, 16], align_layers_per_block=1, align_norm_groups=4,
            align_heads=2, align_attention_levels=[1], implant_tokens=2, batch_size=2,
            vae_epochs=1, invariance_epochs=1, align_epochs=1, num_workers=0, lr=1e-3,
            checkpoint_every=1, val_max_slices=4, mixed_precision="no")

LABELS = ["Baseline", "+ARVAE", "+ARVAE+Loss", "+ARVAE+AN", "Ours (full)"]
KEYS = ["baseline", "arvae", "arvae-loss", "arvae-an", "full"]


pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


@pytest.fixture(scope="module")
def data(tmp_path_factory, write_tiny_pairs) -> Path:
    return write_tiny_pairs(tmp_path_factory.mktemp("data") / "tiny", size=32, slices=4)


@pytest.fixture(scope="module")
def ablation(data, tmp_path_factory):
    """``marbench ablate`` on the tiny data with a tiny YAML config, 1 step per stage."""
    import yaml
    from typer.testing import CliRunner

    from benchmark.cli import app

    tmp = tmp_path_factory.mktemp("ablate")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"base": "lga-paper", **TINY}), encoding="utf-8")
    out = tmp / "out"
    with pytest.warns(UserWarning, match="only 1 training patient"):
        res = CliRunner().invoke(app, ["ablate", "--config", str(cfg), "--data", str(data),
                                       "--out", str(out), "--max-steps", "1", "--no-lpips"],
                                 terminal_width=250)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_rows_are_the_base_config_plus_the_table1_switches():
    from baselines.lga.ablate import TABLE1, row_config, select_rows
    from baselines.lga.config import load_config

    rows = [row_config("lga-cpu", r, max_steps=7) for r in TABLE1]
    cpu = load_config("lga-cpu")
    # Toy scale kept (128 px, f = 2, lga-cpu's widths and lr), steps capped.
    assert all((c.image_size, c.vae_channels, c.lr, c.max_steps) ==
               (cpu.image_size, cpu.vae_channels, cpu.lr, 7) for c in rows)
    # The switches of Table 1 (paper Sec. 4.3), written out by hand.
    assert [(c.neighbour_slices, c.augment, c.dual_decoder, c.align_mask,
             c.align_transformer, c.beta) for c in rows] == [
        (0, False, False, False, False, 0.0), (2, True, True, False, False, 0.0),
        (2, True, True, False, False, 0.001), (2, True, True, True, True, 0.0),
        (2, True, True, True, True, 0.001)]
    # With the paper's config as base the rows are exactly the shipped table1-* configs.
    assert [row_config("lga-paper", r) for r in TABLE1] == [load_config(r.config)
                                                             for r in TABLE1]
    assert [r.key for r in select_rows("full,baseline")] == ["baseline", "full"]
    assert [r.key for r in select_rows(["table1-arvae-an"])] == ["arvae-an"]
    with pytest.raises(ValueError, match="--rows: unknown row 'arvea'"):
        select_rows("arvea")


@pytest.mark.filterwarnings("ignore:.*only 1 training patient")
def test_five_rows_trained_scored_and_printed_in_order(ablation, data):
    out, output = ablation
    # Printed in the paper's order, each beside the paper's PSNR.
    at = [output.index(label) for label in LABELS]
    assert at == sorted(at), output
    for paper_psnr in ("32.81", "33.13", "33.38", "37.02", "37.91"):
        assert paper_psnr in output
    summary = json.loads((out / "ablation.json").read_text())
    assert [r["key"] for r in summary["rows"]] == KEYS
    assert summary["max_steps"] == 1
    md = (out / "ablation.md").read_text()
    assert [md.index(f"| {label} |") for label in LABELS] == \
        sorted(md.index(f"| {label} |") for label in LABELS)
    for row in summary["rows"]:
        # Trained: the invariance stage exists only where beta > 0 (L_inv on).
        meta = json.loads((out / row["key"] / "run" / "model" / "config.json").read_text())
        want = {"vae", "invariance", "align"} if row["config"]["beta"] > 0 else {"vae", "align"}
        assert set(meta["training"]["trained"]) == want
        assert meta["model"]["image_size"] == 32 and row["config"]["max_steps"] == 1
        # Scored on the 2 x 4 test slices; the mean PSNR equals the per-slice CSV's mean.
        with open(out / row["key"] / "results" / "per_slice.csv", newline="") as f:
            psnrs = [float(r["method_vs_gsi.psnr"]) for r in csv.DictReader(f)]
        assert len(psnrs) == 8
        mean = row["scores"]["vs_gsi"]["psnr"]["mean"]
        assert math.isclose(mean, sum(psnrs) / len(psnrs), rel_tol=1e-9)
        assert f"{mean:.2f}" in md
        # LPIPS was switched off, so it is reported missing, not invented.
        assert "lpips" not in row["scores"]["vs_gsi"] and "vs_gsi.lpips" in row["missing"]
    # P000 has an ideal image in the fixture: the vs-ideal columns are shown.
    assert "vs_ideal" in summary["rows"][0]["scores"] and "(vs ideal)" in md


def test_unknown_row_and_config_errors_name_the_problem(data, tmp_path):
    from typer.testing import CliRunner

    from benchmark.cli import app

    res = CliRunner().invoke(app, ["ablate", "--data", str(data), "--out", str(tmp_path),
                                   "--rows", "nope"])
    assert res.exit_code == 2 and "unknown row 'nope'" in res.output
    res = CliRunner().invoke(app, ["ablate", "--config", "no-such-config", "--data",
                                   str(data), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "no-such-config" in res.output
    assert not (tmp_path / "baseline").exists()  # failed before training anything
