"""The training kit's pieces against hand-computed cases: learning-rate schedules, the EMA,
per-step generators and epoch orders, the held-out-patient split, checkpoints (and the copy a
crash leaves), the run-folder rules and boolean options."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.learn.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from benchmark.learn.ema import ema
from benchmark.learn.errors import OptionValueError, TrainError
from benchmark.learn.method import parse_flag
from benchmark.learn.rng import EpochSampler, step_generator
from benchmark.learn.run import check_run_folder
from benchmark.learn.schedules import learning_rate
from benchmark.learn.split import evenly_spaced, patient_split


def test_schedules_by_hand():
    assert [learning_rate("constant", 0.1, s, 5) for s in range(5)] == [0.1] * 5
    assert [learning_rate("step", 1.0, s, 100, gamma=0.5, decay_every=10)
            for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    # cosine from lr to final_ratio * lr: lo + (hi - lo) (1 + cos(pi t)) / 2, t = s / (n - 1)
    got = [learning_rate("cosine", 1e-3, s, 5, final_ratio=0.1) for s in range(6)]
    want = [1e-3, 1e-4 + 9e-4 * (1 + math.sqrt(0.5)) / 2, 5.5e-4,
            1e-4 + 9e-4 * (1 - math.sqrt(0.5)) / 2, 1e-4, 1e-4]
    assert got == pytest.approx(want, rel=1e-12)
    assert learning_rate("cosine", 1e-3, 0, 1) == 1e-3
    with pytest.raises(ValueError, match="'linear': must be one of constant, cosine, step"):
        learning_rate("linear", 1.0, 0, 2)


def test_ema_follows_the_warm_up_formula():
    """One scalar weight set to w_s before update s: the EMA copies w_0, then
    e_s = d_s e_{s-1} + (1 - d_s) w_s with d_s = min(decay, 1 - (1 + s) ** (-2/3))."""
    model = nn.Linear(1, 1, bias=False)
    avg = ema(model, decay=0.6)
    weights = [0.5, -1.0, 2.0, 4.0, 0.25, 3.0]
    expect = 0.0
    for s, w in enumerate(weights):
        with torch.no_grad():
            model.weight.fill_(w)
        avg.update()
        d = 0.0 if s == 0 else min(0.6, 1 - (1 + s) ** (-2 / 3))
        expect = d * expect + (1 - d) * w
        assert float(avg.ema_model.weight) == pytest.approx(expect, rel=1e-6)
    const = ema(model, decay=0.6, warmup=False)
    for w in (1.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(w)
        const.update()
    assert float(const.ema_model.weight) == pytest.approx(0.6 * 1.0 + 0.4 * 3.0)
    # Its state holds the average and the step, not the online model.
    state = avg.state_dict()
    assert "ema_model.weight" in state and int(state["step"]) == len(weights)
    assert not any(k.startswith("online_model") for k in state)


def test_generators_and_epoch_orders_are_pure_functions():
    a = torch.rand(4, generator=step_generator("deep", 0, 7, 0))
    assert torch.equal(a, torch.rand(4, generator=step_generator("deep", 0, 7, 0)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator("deep", 0, 8, 0)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator("deep", 0, 7, 1)))
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(2)
    assert list(sampler) == np.random.default_rng([3, 2]).permutation(10).tolist()
    assert list(EpochSampler(4, 3, shuffle=False)) == [0, 1, 2, 3]


def test_patient_split_by_hand():
    ids = ["A", "A", "B", "B", "C", "D", "D", "E"]
    tr, va = patient_split(ids, 0.2)
    assert sorted(tr + va) == list(range(8)) and len({ids[i] for i in va}) == 1  # ceil(1.0)
    assert {ids[i] for i in tr}.isdisjoint({ids[i] for i in va})
    tr2, va2 = patient_split(ids, 0.5)
    assert len({ids[i] for i in va2}) == 3  # ceil(2.5)
    with pytest.warns(UserWarning, match="here: only 1 training patient"):
        assert patient_split(["A", "A"], 0.5, where="here") == ([0, 1], [0, 1])
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced([1, 2], 4) == [1, 2] and evenly_spaced([1, 2], None) == [1, 2]


def test_checkpoint_round_trip_and_the_copy_a_crash_leaves(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    avg = ema(model, decay=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    avg.update()
    save_checkpoint(tmp_path, {"step": 1, "best_metric": 2.5}, model=model, optimizer=opt,
                    ema=avg)
    save_checkpoint(tmp_path, {"step": 2, "best_metric": 3.5}, model=model, optimizer=opt,
                    ema=avg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    fresh = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    fresh_avg = ema(fresh, decay=0.9)
    state = load_checkpoint(find_checkpoint(tmp_path), model=fresh, optimizer=fresh_opt,
                            ema=fresh_avg)
    assert state == {"step": 2, "best_metric": 3.5}
    for (k, v), w in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"],
                       fresh_opt.state_dict()["state"][0]["exp_avg"])
    assert int(fresh_avg.state_dict()["step"]) == 1
    # A crash between the two renames leaves last.old: it is read instead.
    (tmp_path / "last").rename(tmp_path / "last.old")
    assert find_checkpoint(tmp_path) == tmp_path / "last.old"
    assert find_checkpoint(tmp_path / "nothing") is None


def test_run_folder_rules(tmp_path):
    cfg = {"lr": 1.0, "time_limit_s": None}
    check_run_folder(tmp_path / "new", cfg, resume=False)
    with pytest.raises(TrainError, match="nothing to resume"):
        check_run_folder(tmp_path / "new", cfg, resume=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TrainError, match="already holds a run"):
        check_run_folder(tmp_path / "run", cfg, resume=False)
    check_run_folder(tmp_path / "run", cfg, resume=True)
    with pytest.raises(TrainError, match=r"different config \(keys lr, time_limit_s\)"):
        check_run_folder(tmp_path / "run", {"lr": 2.0, "time_limit_s": 5.0}, resume=True)
    check_run_folder(tmp_path / "run", {"lr": 1.0, "time_limit_s": 5.0}, resume=True,
                     per_invocation=("time_limit_s",))


def test_boolean_options():
    assert [parse_flag(v, "x", "m") for v in (True, "true", "1", "Yes", " off ", "0")] == [
        True, True, True, True, False, False]
    with pytest.raises(OptionValueError, match="m: option x='maybe' is not a boolean"):
        parse_flag("maybe", "x", "m")


@pytest.mark.slow  # four processes importing torch
def test_saving_the_same_weights_gives_the_same_bytes(tmp_path):
    """The weights' sha256 is what results files record: two saves of one model, in two
    processes, must write the same file (safetensors orders a header of several metadata
    keys differently from one process to the next)."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from benchmark.learn.template import TemplateConfig, TemplateModel\n"
            "torch.manual_seed(0)\n"
            "TemplateModel(TemplateConfig(channels=2, blocks=1)).save_pretrained(sys.argv[1])\n")
    for i in range(4):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / str(i))], check=True)
    files = {(tmp_path / str(i) / "model.safetensors").read_bytes() for i in range(4)}
    assert len(files) == 1
