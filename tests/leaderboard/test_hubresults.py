"""The Hub's evaluation results: the board's eval.yaml and each model's .eval_results files,
made from a board and read back through the fake Hub with huggingface_hub's own parser."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from leaderboard.board import Board, Verification, write_json
from leaderboard.hubresults import EVAL_RESULTS_DIR, build, task_id
from leaderboard.submit import add_to_folder, prepare
from leaderboard.view import build_view
from tests.helpers.board import board_config
from tests.helpers.hidden import evaluation, file_hidden, season_card
from tests.helpers.hubcli import client, run_cli

HIDDEN_CARD = ("name: {n}\nauthors: [T]\ncode: https://x.org\nlicence: MIT\ntrack: classic\n"
               "no_test_patients: true\ntraining_data: []\nhub_model: {m}\n")


def _board(board_dir: Path, make_run) -> Path:  # type: ignore[no-untyped-def]
    """Public entries good (verified, on the Hub as org/good-mar), mid (on the Hub, but not
    verified), bad (verified, no model repo); a hidden season with a scored entry of
    org/good-mar and a failed one of org/mid-mar."""
    cfg = board_config()
    for name, off, seed, model in (("good", 2, 0, "org/good-mar"), ("mid", 0, 1, "org/mid-mar"),
                                   ("bad", -2, 2, None)):
        run = make_run(name, offset=off, seed=seed)
        if model:
            with open(run / "card.yaml", "a") as f:
                f.write(f"hub_model: {model}\n")
        dest = add_to_folder(prepare(run, cfg), board_dir)
        if name != "mid":  # the maintainers' check, as `leaderboard verify` writes it
            sha = json.loads((dest / "results.json").read_text())["predictions"]["sha256"]
            write_json(dest / "verification.json", Verification(
                status="verified", predictions_sha256=sha,
                checked_utc=datetime(2026, 2, 3, 4, 5, 6, tzinfo=timezone.utc),  # noqa: UP017
            ).model_dump(mode="json"))
    season = board_dir / "hidden" / "s1"
    season.mkdir(parents=True)
    season_card().save(season / "season.json")
    file_hidden(board_dir, evaluation("hgood", 1),
                 HIDDEN_CARD.format(n="Good (hidden)", m="org/good-mar"))
    file_hidden(board_dir, evaluation("hfail", 0, "failed", "network", "tried"),
                 HIDDEN_CARD.format(n="Failing", m="org/mid-mar"))
    return board_dir


def _expected(board: Board) -> dict[str, dict[str, float]]:
    """model file stem -> task id -> the mean the board's page shows."""
    view = build_view(board)
    out: dict[str, dict[str, float]] = {}
    for tab in [view.tabs[0], *view.hidden]:
        for r in tab.rows:
            out[f"{tab.season or 'public'}:{r.key}"] = {
                task_id(m, tab.season): c.mean for m, c in zip(view.metrics, r.cells,
                                                              strict=True)}
    return out


def test_results_are_made_for_vouched_entries_with_a_model(board_dir, make_run):
    b = Board.open(_board(board_dir, make_run))
    pub = build(b, "org/board", endpoint="https://hub.example")
    assert pub.eval_yaml["evaluation_framework"] == "marbench"
    assert [t["id"] for t in pub.eval_yaml["tasks"]] == [
        "psnr-vs-gsi", "ssim-vs-gsi", "hidden-s1-psnr-vs-gsi", "hidden-s1-ssim-vs-gsi"]
    assert all((t["config"], t["split"]) == ("pairs", "test") for t in pub.eval_yaml["tasks"])
    # mid is not verified, bad has no model repo, hfail failed: only good's two results.
    assert [(m.model, m.entry) for m in pub.models] == [
        ("org/good-mar", "submissions/good/1"), ("org/good-mar", "hidden/s1/hgood/1")]
    exp = _expected(b)
    for m, key in zip(pub.models, ("public:good/1", "s1:hgood/1"), strict=True):
        assert m.path.startswith(f"{EVAL_RESULTS_DIR}/org-board-")
        assert {i["dataset"]["task_id"]: i["value"] for i in m.items} == pytest.approx(
            exp[key], abs=1e-6)
        assert all(i["dataset"]["id"] == "org/board" for i in m.items)
        assert all(i["source"]["url"] == f"https://hub.example/datasets/org/board/tree/main/"
                   f"{m.entry}" for i in m.items)


@pytest.mark.slow
def test_published_results_read_back_through_the_hub(board_dir, make_run, hub_env):
    hub, env = hub_env
    _board(board_dir, make_run)
    sha = hub.add_folder("org/board", board_dir, message="The board")
    hub.create_repo("org/good-mar", "model")
    out = run_cli(env, "publish", "org/board", "--push")
    assert f"org/good-mar: {hub.endpoint}/org/good-mar/discussions/1" in out, out
    assert "org/mid-mar" not in out
    got = client(env, """
        import yaml
        from huggingface_hub import hf_hub_download, parse_eval_result_entries
        decl = yaml.safe_load(open(hf_hub_download("org/board", "eval.yaml",
                                                   repo_type="dataset")))
        [pr] = api.get_repo_discussions("org/good-mar")
        rev = f"refs/pr/{pr.num}"
        files = {}
        for f in api.list_repo_files("org/good-mar", revision=rev):
            if f.startswith(".eval_results/"):
                items = yaml.safe_load(open(hf_hub_download("org/good-mar", f, revision=rev)))
                files[f] = [e.__dict__ for e in parse_eval_result_entries(items)]
        print(json.dumps({"decl": decl, "pr": [pr.is_pull_request, pr.status],
                          "files": files}))""")
    assert got["pr"] == [True, "open"]  # shown as "community" until the author merges it
    tasks = {t["id"] for t in got["decl"]["tasks"]}
    b = Board.open(board_dir)
    exp = _expected(b)
    assert len(got["files"]) == 2
    for path, entries in got["files"].items():
        key = "s1:hgood/1" if "hidden-s1" in path else "public:good/1"
        assert {e["task_id"]: e["value"] for e in entries} == pytest.approx(exp[key], abs=1e-6)
        for e in entries:
            assert e["dataset_id"] == "org/board" and e["task_id"] in tasks
            assert e["dataset_revision"] == sha      # the board commit the values come from
            folder = "hidden/s1/hgood/1" if key.startswith("s1") else "submissions/good/1"
            assert e["source_url"] == f"{hub.endpoint}/datasets/org/board/tree/{sha}/{folder}"
    # The link leads to the verified entry: its folder at that commit holds the maintainers'
    # verification (public) or the board's evaluation (hidden).
    files = client(env, f"""
        print(json.dumps(api.list_repo_files("org/board", repo_type="dataset",
                                             revision={sha!r})))""")
    assert "submissions/good/1/verification.json" in files
    assert "hidden/s1/hgood/1/evaluation.json" in files
    # The declaration is the board's: its tasks are the ranked columns of both tracks.
    assert got["decl"] == build(b, "org/board").eval_yaml
