"""Local boards through the CLI: init, submit (also as `marbench submit`), listing, render."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from benchmark.results import Results
from leaderboard.board import Board, BoardConfig
from leaderboard.cli import app, submit
from leaderboard.render import render_board
from tests.helpers.board import SLICES

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def test_init_takes_data_slices_and_metrics_from_a_reference_run(make_run, tmp_path):
    ref = make_run("identity")
    res = invoke("init", tmp_path / "b", "--reference", ref, "--title", "T")
    assert res.exit_code == 0, res.output
    cfg = BoardConfig.load(tmp_path / "b")
    r = Results.load(ref)
    assert cfg.dataset.manifest_sha256 == r.dataset.manifest_sha256
    assert cfg.dataset.revision == r.dataset.revision
    assert [(s.patient_id, s.slice_index, s.implant_type) for s in cfg.slices] == SLICES
    assert [m.key for m in cfg.metrics] == ["method_vs_gsi.psnr", "method_vs_gsi.ssim"]
    assert invoke("init", tmp_path / "b", "--reference", ref).exit_code == 2  # no overwrite


def test_submit_dry_run_then_add_then_refuse_duplicate(make_run, board_dir):
    run = make_run("good", offset=2)
    res = invoke("submit", run, "--board", board_dir, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "would add submissions/good/1/" in res.output
    assert not (board_dir / "submissions").exists()
    res = invoke("submit", run, "--board", board_dir)
    assert res.exit_code == 0, res.output
    entry = board_dir / "submissions/good/1"
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()) == [
        "card.yaml", "predictions/test-00000-of-00001.parquet", "results.json"]
    assert (entry / "results.json").read_bytes() == (run / "results.json").read_bytes()
    res = invoke("submit", run, "--board", board_dir)
    assert res.exit_code == 2 and "--replace" in res.output
    assert invoke("submit", run, "--board", board_dir, "--replace").exit_code == 0


def test_invalid_submission_lists_named_reasons_and_sends_nothing(make_run, board_dir):
    run = make_run("bad")
    r = Results.load(run)
    r.protocol.version = "marbench-v0"
    r.dataset.revision = "f" * 40
    r.save(run / "results.json")
    res = invoke("submit", run, "--board", board_dir)
    assert res.exit_code == 2
    assert "[protocol]" in res.output and "[dataset_revision]" in res.output
    assert not (board_dir / "submissions").exists()


def test_marbench_submit_is_the_same_function(make_run, board_dir, tmp_path):
    """`marbench` registers the plain function as one command; a one-command app does too."""
    mb = typer.Typer()
    mb.command("submit")(submit)
    mb.command("other")(lambda: None)
    card = tmp_path / "my-card.json"
    card.write_text(json.dumps({"name": "Good method", "authors": ["X"], "code": "https://x",
                                "licence": "MIT", "track": "unsupervised",
                                "no_test_patients": True}))
    res = runner.invoke(mb, ["submit", str(make_run("good")), "--board", str(board_dir),
                             "--card", str(card)])
    assert res.exit_code == 0, res.output
    text = (board_dir / "submissions/good/1/card.yaml").read_text()
    assert "track: unsupervised" in text and "name: Good method" in text


def test_board_lists_broken_entries_instead_of_dropping_them(make_run, board_dir):
    for name, off in (("good", 2), ("mid", 0)):
        assert invoke("submit", make_run(name, offset=off), "--board", board_dir).exit_code == 0
    (board_dir / "submissions/mid/1/results.json").write_text("{broken")
    board = Board.open(board_dir)
    assert [(e.key, e.status) for e in board.entries] == [("good/1", "submitted"),
                                                          ("mid/1", "invalid")]
    res = invoke("list", board_dir)
    assert res.exit_code == 0
    listing = json.loads(res.output)
    assert [e["key"] for e in listing["entries"]] == ["good/1", "mid/1"]


def test_render_ranks_shows_cis_tabs_badges_and_footer(make_run, board_dir, tmp_path):
    for name, off, seed in (("good", 2, 0), ("mid", 0, 1), ("bad", -2, 2)):
        assert invoke("submit", make_run(name, offset=off, seed=seed),
                      "--board", board_dir).exit_code == 0
    run = make_run("cheat", offset=5, seed=3)
    assert invoke("submit", run, "--board", board_dir).exit_code == 0
    # Tampered after acceptance: the page must list it as not ranked, with the reason.
    r = Results.load(board_dir / "submissions/cheat/1")
    r.comparisons["method_vs_gsi"].summary["psnr"].mean += 1
    r.save(board_dir / "submissions/cheat/1/results.json")
    out = tmp_path / "site"
    res = invoke("render", board_dir, "--out", out)
    assert res.exit_code == 0, res.output
    html = (out / "index.html").read_text()
    body = html.split('id="panel-all"')[1].split("</table>")[0]
    order = re.findall(r'data-key="([^"]+)"', body)
    assert order == ["good/1", "mid/1", "bad/1"]
    assert html.count("<svg class=\"whisker\"") == 3 * 2 * 3  # 3 entries x 2 metrics x 3 tabs
    assert 'id="panel-implant-hip_prosthesis"' in html
    assert 'id="panel-implant-spinal_fixation"' in html
    assert "cheat/1" in html.split("Not ranked")[1] and "summary_mismatch" in html
    assert "0123456789abcdef0123456789abcdef01234567" in html  # dataset revision
    assert "marbench-v1" in html.split("<footer>")[1]
    assert re.search(r"built \d{4}-\d\d-\d\d \d\d:\d\d UTC", html)
    assert (out / "entries/good/1/card.yaml").is_file()
    assert (out / "cd-all-method_vs_gsi-psnr.svg").read_text().lstrip().startswith("<?xml")


def test_render_with_one_entry_and_no_entry(make_run, board_dir, tmp_path):
    render_board(Board.open(board_dir), tmp_path / "empty")
    assert "No valid entry yet" in (tmp_path / "empty/index.html").read_text()
    assert invoke("submit", make_run("only"), "--board", board_dir).exit_code == 0
    render_board(Board.open(board_dir), tmp_path / "one")
    html = (tmp_path / "one/index.html").read_text()
    assert "Friedman test needs at least 3 entries" in html and "only/1" in html


def test_paths_look_like_folders_or_repo_ids():
    from leaderboard.board import is_local_board

    assert not is_local_board("org/board")
    assert is_local_board("./board") and is_local_board("/abs/board")
    assert is_local_board("data/board/") and is_local_board("a/b/c")


def test_card_and_results_of_entry_are_readable(make_run, board_dir):
    assert invoke("submit", make_run("good"), "--board", board_dir).exit_code == 0
    e = Board.open(board_dir).entry("good/1")
    assert e.card is not None and e.card.track == "classic"
    assert e.results is not None and e.results.method.name == "good"
    assert Path(e.folder).name == "1"
