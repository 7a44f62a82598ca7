"""What an entry cost, measured by the board: parameters from the weights' headers, time and
memory of the process tree from the kernel, and the measurement kept by `verify --reproduce`.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmark.results import Results
from leaderboard.board import Board
from leaderboard.efficiency import count_parameters, run_measured
from leaderboard.submit import add_to_folder, prepare
from leaderboard.verify import verify_entry
from leaderboard.view import build_view
from tests.helpers.board import board_config
from tests.helpers.hidden import write_smoothing_weights
from tests.helpers.hostile import FAKE_MARBENCH


def test_parameters_are_counted_from_the_weights_files(tmp_path):
    from safetensors.numpy import load_file, save_file

    (tmp_path / "w").mkdir()
    save_file({"a": np.zeros((3, 4, 5), np.float32), "b": np.zeros(7, np.float16)},
              str(tmp_path / "w" / "model.safetensors"))
    write_smoothing_weights(tmp_path / "w" / "sub" / "k.safetensors")
    independent = sum(v.size for f in (tmp_path / "w").rglob("*.safetensors")
                      for v in load_file(str(f)).values())
    assert count_parameters(tmp_path / "w") == independent == 3 * 4 * 5 + 7 + 9
    assert count_parameters(tmp_path / "w" / "sub" / "k.safetensors") == 9
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    assert count_parameters(tmp_path / "junk.safetensors") is None
    assert count_parameters(tmp_path / "nothing") is None


def test_cost_is_measured_by_the_kernel_not_reported(tmp_path):
    code = ("import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            "time.sleep(0.5); print('I took 0 s and 1 MB')")
    r = run_measured([sys.executable, "-c", code], timeout=60)
    assert r.returncode == 0 and "0 s and 1 MB" in r.stdout
    assert r.peak_rss_mib >= 300 and r.wall_s >= 0.5
    slow = run_measured([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert slow.timed_out and slow.wall_s < 20


#: A stand-in `marbench` that uses 200 MiB and 0.3 s before doing what the verification
#: tests' stand-in does (hostile.FAKE_MARBENCH).
HEAVY = """
import runpy, sys, time
b = bytearray(200 * 2**20)
b[::4096] = b"x" * len(b[::4096])
time.sleep(0.3)
runpy.run_path(sys.argv.pop(1), run_name="__main__")
"""


def test_reproduce_keeps_what_the_rerun_cost(make_run, board_dir, tmp_path, monkeypatch):
    weights = write_smoothing_weights(tmp_path / "weights" / "k.safetensors")
    run = make_run("good", offset=2)
    r = Results.load(run)
    r.method.options = {"weights": str(weights)}
    r.save(run / "results.json")
    add_to_folder(prepare(run, board_config()), board_dir)
    (tmp_path / "fake.py").write_text(FAKE_MARBENCH)
    (tmp_path / "heavy.py").write_text(HEAVY)
    fake = [sys.executable, str(tmp_path / "heavy.py"), str(tmp_path / "fake.py")]
    monkeypatch.setenv("FAKE_RERUN_FROM", str(board_dir / "submissions/good/1"))
    b = Board.open(board_dir)
    v = verify_entry(b.entry("good/1"), b.config, "data", marbench=fake, reproduce_method=True)
    assert v.status == "reproduced", v
    e = v.efficiency
    assert e is not None and e.measured_by == "leaderboard verify --reproduce"
    assert e.n_slices == 12 and e.parameters == 9
    assert e.peak_memory_mib >= 200 and e.wall_s >= 0.3
    assert e.seconds_per_slice == pytest.approx(e.wall_s / 12)
    [row] = build_view(Board.open(board_dir)).tabs[0].rows
    assert row.efficiency == e  # read back from verification.json, shown on the page
    # A verification without --reproduce measures nothing: the board did not run the method.
    v = verify_entry(b.entry("good/1"), b.config, "data", marbench=fake)
    assert v.status == "verified" and v.efficiency is None
