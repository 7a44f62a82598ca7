"""The hidden track: seasons, what a method is given, entries on the board, and a whole
season at tiny size (methods installed from throwaway packages, run in the sandbox, scored).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from leaderboard.board import Board, RankedMetric, board_summary
from leaderboard.card import CardError, HiddenCard, MethodCard, training_label
from leaderboard.hidden import EVALUATION_FILE, Evaluation
from leaderboard.render import render_board
from leaderboard.season import INPUT_COLUMNS, method_inputs
from leaderboard.validate import card_problems
from leaderboard.view import build_view
from tests.helpers.board import board_config
from tests.helpers.hidden import (
    CLASSES,
    evaluation,
    file_hidden,
    require_sandbox,
    season_card,
    write_card,
    write_package,
    write_smoothing_weights,
)
from tests.helpers.hubcli import run_cli

# ----------------------------------------------------------------------------- inputs


def test_method_inputs_hold_no_reference(write_tiny_pairs, tmp_path, isolated_datasets_cache):
    """What a hidden-track method is given: its input columns, and a gsi column that is the
    ordinary image again; the harness reads it like any split."""
    from benchmark.data import open_split

    data = write_tiny_pairs(tmp_path / "data", size=16, slices=2)
    inputs = method_inputs(data, tmp_path / "inputs")
    src = pq.read_table(data / "pairs/test-00000-of-00001.parquet")
    got = pq.read_table(inputs / "pairs/test-00000-of-00001.parquet")
    assert set(got.column_names) == {*INPUT_COLUMNS, "gsi"}
    assert got.column("gsi").to_pylist() == src.column("ordinary").to_pylist()
    assert got.column("gsi").to_pylist() != src.column("gsi").to_pylist()
    meta = json.loads(got.schema.metadata[b"huggingface"])["info"]["features"]
    assert set(meta) == {*INPUT_COLUMNS, "gsi"}
    split = open_split(inputs, "test", require_manifest=False)
    assert len(split) == src.num_rows and not split.has_ideal
    batch = next(split.iter_batches(len(split)))
    order = sorted(range(src.num_rows), key=lambda i: (src.column("patient_id")[i].as_py(),
                                                       src.column("slice_index")[i].as_py()))
    want = np.stack([np.asarray(src.column("ordinary")[i].as_py(), np.float32) for i in order])
    np.testing.assert_array_equal(batch.input.ordinary[:, 0].numpy(), want)
    np.testing.assert_array_equal(batch.gsi_hu[:, 0].numpy(), want)  # no reference in it


# ----------------------------------------------------------------------------- cards

TRAINED = """training_data:
  - dataset: org/data
    splits: [train]
  - dataset: other/ct
    splits: [train, validation]
hub_model: me/my-mar
"""


def test_cards_declare_their_training_data(tmp_path):
    cfg = board_config()
    own = cfg.benchmark_datasets
    assert own == {"org/data"}
    none = MethodCard.load(write_card(tmp_path / "a.yaml", "A"))
    assert training_label(none, own) == ("undeclared", "not declared")
    classic = MethodCard.load(write_card(tmp_path / "b.yaml", "B", extra="training_data: []\n"))
    assert training_label(classic, own)[0] == "zero-shot"
    other = MethodCard.load(write_card(tmp_path / "c.yaml", "C", extra=(
        "training_data: [{dataset: other/ct, splits: [train]}]\n")))
    assert training_label(other, own) == ("zero-shot", "other/ct: train")
    mine = MethodCard.load(write_card(tmp_path / "d.yaml", "D", extra=TRAINED))
    assert training_label(mine, own) == ("in-domain",
                                         "org/data: train; other/ct: train, validation")
    assert mine.hub_model == "me/my-mar"
    assert MethodCard.model_validate(__import__("yaml").safe_load(mine.to_yaml())) == mine
    # The public track: a card may not list the board's test split while it says no test
    # patient was used ...
    cheat = MethodCard.load(write_card(tmp_path / "e.yaml", "E", extra=(
        "training_data: [{dataset: org/data, splits: [train, test]}]\n")))
    assert [p.code for p in card_problems(cheat, cfg)] == ["card"]
    assert card_problems(mine, cfg) == []
    with pytest.raises(CardError, match="no_test_patients"):
        MethodCard.load(write_card(tmp_path / "f.yaml", "F", no_test=False))
    # ... the hidden track may take it (its test set is new), and shows it.
    saw = HiddenCard.load(write_card(tmp_path / "g.yaml", "G", no_test=False, extra=(
        "training_data: [{dataset: org/data, splits: [train, test]}]\n")))
    assert training_label(saw, own)[0] == "saw-test"
    with pytest.raises(CardError, match="hub_model"):
        MethodCard.load(write_card(tmp_path / "h.yaml", "H", extra="hub_model: not a repo\n"))


# ----------------------------------------------------------------------------- the board

def test_hidden_entries_on_the_board(board_dir, make_run, tmp_path):
    from leaderboard.submit import add_to_folder, prepare

    add_to_folder(prepare(make_run("pub", offset=1), board_config()), board_dir)
    season = board_dir / "hidden" / "s1"
    season.mkdir(parents=True)
    season_card().save(season / "season.json")
    card = "name: {n}\nauthors: [T]\ncode: https://x.org\nlicence: MIT\ntrack: classic\n" \
           "no_test_patients: {t}\ntraining_data: {d}\n"
    file_hidden(board_dir, evaluation("good", 2), card.format(n="Good", t="false", d=(
        "[{dataset: org/data, splits: [test]}]")))
    file_hidden(board_dir, evaluation("fair", 0), card.format(n="Fair", t="true", d="[]"))
    file_hidden(board_dir, evaluation("nosy", 0, "failed", "file_access",
                                        "nosy tried to open a file outside its inputs "
                                        "(/srv/season/built/pairs/test.parquet)"),
                 card.format(n="Nosy", t="true", d="[]"))
    wrong = evaluation("short", 1)
    wrong.per_slice = wrong.per_slice[:-1]           # not the season's slices
    file_hidden(board_dir, wrong, card.format(n="Short", t="true", d="[]"))
    extra = file_hidden(board_dir, evaluation("extra", 1), card.format(n="X", t="true",
                                                                        d="[]"))
    (extra / "predictions.parquet").write_bytes(b"")  # only the scores are kept
    linked = file_hidden(board_dir, evaluation("linked", 1), card.format(n="L", t="true",
                                                                           d="[]"))
    secret = tmp_path / "secret.json"
    secret.write_text((linked / EVALUATION_FILE).read_text())
    (linked / EVALUATION_FILE).unlink()
    (linked / EVALUATION_FILE).symlink_to(secret)    # out of the board: refused
    b = Board.open(board_dir)
    status = {e.key: e.status for e in b.seasons[0].entries}
    assert status == {"good/1": "evaluated", "fair/1": "evaluated", "nosy/1": "failed",
                      "short/1": "invalid", "extra/1": "invalid", "linked/1": "invalid"}
    hidden = board_summary(b)["hidden"]["s1"]
    reasons = {h["key"]: " ".join(h["reasons"]) for h in hidden}
    assert "[file_access] nosy tried to open a file outside its inputs" in reasons["nosy/1"]
    assert "not the season's hidden slices" in reasons["short/1"]
    assert "predictions.parquet" in reasons["extra/1"]
    assert "leads outside" in reasons["linked/1"]
    view = build_view(b)
    [tab] = view.hidden
    assert [r.key for r in tab.rows] == ["good/1", "fair/1"]
    good = tab.rows[0]
    assert good.cells[0].mean == pytest.approx(np.mean([32 + 0.1 * i for i in range(5)]))
    assert good.training[0] == "saw-test" and tab.rows[1].training[0] == "zero-shot"
    assert good.efficiency is not None and good.efficiency.parameters == 1234
    assert [r.key for r in view.tabs[0].rows] == ["pub/1"]
    assert view.tabs[0].rows[0].efficiency is None  # the board never ran it
    html = render_board(b, tmp_path / "site").read_text()
    assert "Hidden · s1" in html and "Training data" in html and "s / slice" in html
    assert "hidden/s1/nosy/1" in html.split("Not ranked")[1]
    assert "tried to open a file outside its inputs" in html
    assert (tmp_path / "site/entries/hidden/s1/good/1/card.yaml").is_file()


# ----------------------------------------------------------------------------- a season


def _direct_scores(module: str, pkg: Path, built: Path, out: Path,
                   options: dict) -> dict[tuple[str, int], dict]:
    """The method run directly on the hidden set (no sandbox, no install): per-slice scores
    of method_vs_* comparisons. One torch thread, as the board's runs use: the sums inside
    SSIM then add in the same order, so the scores agree to the last bit."""
    import torch

    from benchmark.run import run_benchmark

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sys.path.insert(0, str(pkg))
    try:
        r = run_benchmark(f"{module}:{CLASSES[module]}", built, split="test", out=out,
                          lpips=None, clinical=False, figure=False, verbose=False,
                          options=options, reference_cache=None)
    finally:
        sys.path.remove(str(pkg))
        torch.set_num_threads(threads)
    return {(s.patient_id, s.slice_index): {c: v for c, v in s.scores.items()
                                            if c.startswith("method_")}
            for s in r.per_slice}


@pytest.mark.slow
def test_a_hidden_season(tmp_path, isolated_datasets_cache, hub_env):
    """A season at tiny size: three methods from throwaway packages installed, run in the
    sandbox and scored, ranked, with the scores of a direct run; a method that reads the
    hidden set, one that opens a connection and one that never ends are stopped and named."""
    require_sandbox()
    hub, env = hub_env
    from leaderboard.hidden import evaluate_method
    from leaderboard.sandbox import Limits
    from leaderboard.season import new_season, open_season

    season = new_season(tmp_path / "season", "t1", patients=3, slices=2, size=32, seed=4242)
    card_, built = open_season(tmp_path / "season")
    assert card_ == season and "seed" not in json.loads(
        (tmp_path / "season/season.json").read_text())
    assert (tmp_path / "season/secret/seed").read_text().strip() == "4242"
    board = tmp_path / "board"
    board.mkdir()
    cfg = board_config()
    cfg.metrics.append(RankedMetric(comparison="method_vs_ideal", metric="psnr",
                                    label="PSNR vs ideal", higher_is_better=True, unit="dB"))
    cfg.save(board / "board.json")
    pkgs = tmp_path / "pkgs"
    weights = write_smoothing_weights(tmp_path / "weights" / "smooth.safetensors")
    # One package as a wheel (built here, as its author would), the others as folders.
    smooth_src = write_package(pkgs, "mar_smooth", "2.0")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp_path / "dist"), str(smooth_src)],
                   check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    runs = {"mar_scale": (write_package(pkgs, "mar_scale"), {"factor": 0.95}, None),
            "mar_smooth": (wheel, {}, str(weights)),
            "mar_inpaint": (write_package(pkgs, "mar_inpaint"), {"fill_hu": 0.0}, None)}
    evaluated = {}
    for module, (pkg, opts, w) in runs.items():
        card = write_card(tmp_path / f"{module}.yaml", module, extra="training_data: []\n")
        if module == "mar_smooth":
            # The weights by Hub id: the board downloads them (here from the fake Hub) before
            # the run; the command line, since huggingface_hub reads HF_ENDPOINT at import.
            hub.add_folder("org/smooth-weights", weights.parent, repo_type="model")
            out = run_cli(env, "evaluate", board, "--season", tmp_path / "season",
                          "--package", pkg, "--card", card, "--weights", "org/smooth-weights",
                          "--time-limit", "900")
            assert "smooth 2.0: scored" in out, out
            dest = board / "hidden/t1/smooth/2.0"
            ev = Evaluation.model_validate_json((dest / EVALUATION_FILE).read_text())
        else:
            ev, dest = evaluate_method(board, tmp_path / "season", pkg, card, options=opts,
                                       weights=w, limits=Limits(time_s=900))
        assert ev.status == "scored", (ev.reason, ev.message)
        assert sorted(p.name for p in dest.iterdir()) == ["card.yaml", "evaluation.json"]
        evaluated[module] = ev
    assert evaluated["mar_smooth"].weights.parameters == 9
    assert evaluated["mar_smooth"].weights.repo_id == "org/smooth-weights"
    assert evaluated["mar_smooth"].options == {"weights": "/sandbox/weights/org--smooth-weights"}
    assert evaluated["mar_smooth"].package.version == "2.0"
    for ev in evaluated.values():
        e = ev.efficiency
        assert e.n_slices == len(season.slices) and e.seconds_per_slice > 0
        assert e.peak_memory_mib > 100  # python + torch: the kernel's count, not the method's
    assert evaluated["mar_smooth"].efficiency.parameters == 9
    # The same scores as the methods run directly on the same hidden set.
    for module, (pkg, opts, w) in runs.items():
        src = smooth_src if module == "mar_smooth" else pkg
        direct = _direct_scores(module, src, built, tmp_path / "direct" / module,
                                {**opts, **({"weights": w} if w else {})})  # the local file
        assert evaluated[module].values() == direct, module
    # Ranked by PSNR vs GSI, in the order of the direct runs' means.
    means = {m: np.mean([s.scores["method_vs_gsi"]["psnr"] for s in ev.per_slice])
             for m, ev in evaluated.items()}
    b = Board.open(board)
    [tab] = build_view(b).hidden
    entry_of = {"mar_scale": "scale/1.0", "mar_smooth": "smooth/2.0",
                "mar_inpaint": "inpaint/1.0"}
    assert [r.key for r in tab.rows] == [entry_of[m] for m in sorted(means, key=means.get,
                                                                      reverse=True)]
    for r in tab.rows:
        assert r.cells[0].mean == pytest.approx(means[next(
            m for m, k in entry_of.items() if k == r.key)])
    # Hostile methods: stopped and named.
    target = next((built / "pairs").glob("test-*.parquet"))
    hostile = {"mar_reader": ({"target": str(target)}, 900, "file_access", str(target)),
               "mar_caller": ({}, 900, "network", "203.0.113.7"),
               "mar_sleeper": ({}, 20, "time_limit", "20 s")}
    for module, (opts, limit, reason, named) in hostile.items():
        ev, _ = evaluate_method(board, tmp_path / "season", write_package(pkgs, module),
                                write_card(tmp_path / f"{module}.yaml", module),
                                options=opts, limits=Limits(time_s=limit))
        assert (ev.status, ev.reason) == ("failed", reason), (module, ev.message)
        assert named in ev.message and ev.method in ev.message
        assert ev.per_slice == []
    listed = {h["key"]: h for h in board_summary(Board.open(board))["hidden"]["t1"]}
    assert listed["reader/1.0"]["status"] == "failed"
    assert "[file_access]" in listed["reader/1.0"]["reasons"][0]
    assert "[time_limit]" in listed["sleeper/1.0"]["reasons"][0]
