"""The CPU side of benchmarks/gpu_check.py: it fails fast and clearly without a GPU, writes
its table, times steps, and its training-step builders run the real models (tiny configs on
the CPU here; the paper configs on the GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" /
                                                  "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_fails_fast(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU"), r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - t0 < 120  # the import of torch, nothing else


def test_the_table_is_written_as_markdown_and_json(gc, tmp_path):
    rows = [gc.Row("LGA VAE stage training", "lga-paper", "4 x 5 x 512^2", "200 steps",
                   123.456, 32.4, 40.5),
            gc.Row("segmenter training", "seg-paper", ok=False, note="OOM | at step 3")]
    md, js = gc.write_table(rows, tmp_path / "t", {"gpu": "H200", "torch": "2.x"})
    text = md.read_text().splitlines()
    assert "- gpu: H200" in text
    table = [ln for ln in text if ln.startswith("|")]
    assert len(table) == 2 + len(rows)
    assert all(ln.count("|") == 9 for ln in table)  # the note's "|" does not add a column
    assert "| 123.5 | 32.40 | 40.50 | ok |" in table[2]
    assert table[3].endswith("FAILED: OOM / at step 3 |")
    data = json.loads(js.read_text())
    assert data["header"]["gpu"] == "H200" and data["rows"][1]["ok"] is False
    assert not list((tmp_path / "t").glob(".*tmp*"))


def test_step_timing_counts_steps_and_stops_at_its_time_limit(gc):
    model = torch.nn.Linear(8, 1)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    losses = []
    step = gc.optimiser_step(lambda: torch.nn.functional.mse_loss(model(x), y),
                             list(model.parameters()), lr=0.05, device_type="cpu")
    t = gc.time_steps(lambda: losses.append(step()), 20, warmup=3)
    assert t.steps == 20 and t.warmup == 3 and len(losses) == 23 and not t.stopped_early
    assert t.ms_per_step > 0 and losses[-1] < losses[0]  # it does optimise
    slow = gc.time_steps(lambda: time.sleep(0.05), 100, warmup=1, time_limit_s=0.2)
    assert slow.stopped_early and 1 <= slow.steps < 10
    assert 40 < slow.ms_per_step < 500
    with pytest.raises(ValueError, match="steps must be >= 1"):
        gc.time_steps(lambda: None, 0)


@pytest.mark.slow
def test_the_step_builders_train_the_real_models(gc):
    # The families' own tiny configs (LGA's: the model size of its tests) for two steps.
    lga = dict(image_size=32, vae_channels=[8, 16], vae_layers_per_block=1,
               vae_norm_groups=4, vae_mid_attention=False, inv_channels=[8, 16],
               inv_embed_dim=8, align_channels=[8, 16], align_layers_per_block=1,
               align_norm_groups=4, align_heads=2, align_attention_levels=[1],
               implant_tokens=2, batch_size=2, mixed_precision="no")
    jobs = (("lga", lga, gc.lga_jobs), ("oscnet", "oscnet-tiny", gc.oscnet_jobs),
            ("dudodp", "dudodp-tiny", gc.dudodp_jobs), ("segmenter", "seg-tiny", gc.seg_jobs))
    rows = gc.run_jobs(2, 600, torch.device("cpu"), jobs, log=lambda s: None, warmup=0)
    assert [r.check for r in rows] == ["LGA VAE stage training", "LGA alignment stage training",
                                       "oscnet training", "DuDoDp prior training",
                                       "segmenter training"]
    assert all(r.ok for r in rows), [r.note for r in rows if not r.ok]
    assert all(r.ms > 0 and r.result.startswith("2 steps") for r in rows)
