"""Submissions as Hub pull requests (fake Hub, real huggingface_hub client) and verification
by re-scoring, on a real tiny dataset and a real `marbench run`.

The clients run in subprocesses, since huggingface_hub reads HF_ENDPOINT at import.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from benchmark.results import Results
from leaderboard.board import Board, config_from_results
from tests.helpers.board import summary_np
from tests.helpers.hubcli import client, marbench_env, run_cli

HERE = Path(__file__).resolve().parent
CARD = """\
name: Identity
authors: [MARBench maintainers]
code: https://example.org/marbench
licence: Apache-2.0
track: classic
no_test_patients: true
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, write_tiny_pairs, isolated_datasets_cache):
    """A tiny built dataset and the identity method's run on it (6 slices, 32 px)."""
    import torch

    from benchmark.run import run_benchmark

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("hubverify")
    data = write_tiny_pairs(base / "data", size=32, slices=3)
    run = base / "runs" / "identity"
    run_benchmark("identity", data, split="test", out=run, lpips=None, clinical=False,
                  figure=False, verbose=False)
    (run / "card.yaml").write_text(CARD)
    return data, run


def cheat_copy(run: Path, dest: Path, version: str = "2") -> Path:
    """The same predictions with PSNR raised by 0.5 dB on every slice and the summaries
    recomputed: passes every static check, only re-scoring can catch it."""
    shutil.copytree(run, dest)
    r = Results.load(dest)
    r.method.version = version
    for s in r.per_slice:
        s.scores["method_vs_gsi"]["psnr"] += 0.5
    comp = r.comparisons["method_vs_gsi"]
    comp.summary["psnr"] = summary_np([s.scores["method_vs_gsi"]["psnr"] for s in r.per_slice],
                                      True)
    r.save(dest / "results.json")
    return dest


def entries_in_repo(env: dict[str, str], revision: str) -> list[str]:
    """Entry keys from the repo's file list at a revision (independent of the board code)."""
    files = client(env, f"""
        print(json.dumps(api.list_repo_files("org/board", repo_type="dataset",
                                             revision={revision!r})))""")
    return sorted({"/".join(f.split("/")[1:3]) for f in files
                   if f.startswith("submissions/") and f.count("/") >= 3})


def listed(env: dict[str, str], revision: str) -> list[str]:
    return [e["key"] for e in json.loads(run_cli(env, "list", "org/board", "--revision",
                                                 revision))["entries"]]


@pytest.mark.slow
def test_pull_requests_verify_and_pinned_listing(tiny_run, hub_env, tmp_path):
    data, run = tiny_run
    hub, env = hub_env
    board_src = tmp_path / "board_src"
    board_src.mkdir()
    config_from_results(Results.load(run), "Tiny board").save(board_src / "board.json")
    empty_sha = hub.add_folder("org/board", board_src, message="Create the board")

    # 1. Submit through a pull request with the real client; the URL is printed.
    out = run_cli(env, "submit", run, "--board", "org/board")
    url = re.search(r"opened pull request: (\S+)", out).group(1)
    assert url == f"{hub.endpoint}/datasets/org/board/discussions/1"
    assert hub.head("org/board") == empty_sha  # main is untouched until a merge

    # 2. The maintainer lists it and reads its files at refs/pr/1.
    got = client(env, """
        prs = [(d.num, d.is_pull_request, d.status, d.title) for d in
               api.get_repo_discussions("org/board", repo_type="dataset")]
        det = api.get_discussion_details("org/board", 1, repo_type="dataset")
        files = api.list_repo_files("org/board", repo_type="dataset", revision="refs/pr/1")
        print(json.dumps({"prs": prs, "target": det.target_branch, "files": files}))""")
    assert got["prs"] == [[1, True, "open", "Submit identity v1"]]
    assert got["target"] == "refs/heads/main"
    assert {"submissions/identity/1/results.json", "submissions/identity/1/card.yaml",
            "submissions/identity/1/predictions/test-00000-of-00001.parquet"} <= set(
        got["files"])

    # 3. Verified from the pull request's files, by re-scoring against the data.
    out = run_cli(env, "verify", "org/board", "--revision", "refs/pr/1", "--data", data)
    assert "identity/1: verified" in out, out

    # 4. A cheater's PR passes the static checks (summaries consistent) ...
    cheat = cheat_copy(run, tmp_path / "cheat")
    out = run_cli(env, "submit", cheat, "--board", "org/board")
    assert "discussions/2" in out
    # ... but re-scoring rejects it, naming the metric and a slice.
    out = run_cli(env, "verify", "org/board", "--revision", "refs/pr/2", "--data", data)
    assert "identity/2: rejected" in out
    assert re.search(r"method_vs_gsi\.psnr differs on 6 slice\(s\), e\.g\. P00\d slice \d: "
                     r"submitted [\d.]+, re-scored [\d.]+", out), out

    # 5. Each revision lists exactly the entries present there; merges lose none.
    assert listed(env, empty_sha) == entries_in_repo(env, empty_sha) == []
    assert listed(env, "refs/pr/1") == entries_in_repo(env, "refs/pr/1") == ["identity/1"]
    assert listed(env, "refs/pr/2") == entries_in_repo(env, "refs/pr/2") == ["identity/2"]
    client(env, """
        api.merge_pull_request("org/board", 1, repo_type="dataset")
        api.merge_pull_request("org/board", 2, repo_type="dataset")
        print(json.dumps(0))""")
    snapshot = json.loads((HERE / "snapshots" / "hub_board.json").read_text())
    assert listed(env, "main") == entries_in_repo(env, "main") == snapshot["main_after_merges"]
    # The board read at the old pinned commit still shows what was there then.
    assert listed(env, empty_sha) == snapshot["pinned_before"]


@pytest.mark.slow
def test_local_verify_marks_verified_and_rejected(tiny_run, tmp_path):
    """Maintainer side on a local board: verification.json is written; a stale verification
    (predictions replaced after the check) no longer counts."""
    from leaderboard.submit import add_to_folder, prepare
    from leaderboard.verify import verify_entry

    data, run = tiny_run
    board = tmp_path / "board"
    board.mkdir()
    cfg = config_from_results(Results.load(run), "Tiny board")
    cfg.save(board / "board.json")
    add_to_folder(prepare(run, cfg), board)
    add_to_folder(prepare(cheat_copy(run, tmp_path / "cheat"), cfg), board)
    b = Board.open(board)
    mb = marbench_env().split()
    # identity/2 carries identity/1's predictions: the maintainers name the original.
    v1 = verify_entry(b.entry("identity/1"), cfg, str(data), marbench=mb, chosen=True)
    v2 = verify_entry(b.entry("identity/2"), cfg, str(data), marbench=mb)
    assert (v1.status, v2.status) == ("verified", "rejected")
    assert v1.max_abs_score_diff is not None and v1.max_abs_score_diff <= 1e-9
    # The cheat's predictions are identity/1's: once identity/1 is verified, the cheat is
    # refused as its copy before any re-scoring (re-scoring catching the inflated values is
    # step 4 of the pull-request test above, where no verified original is on the board).
    assert v2.max_abs_score_diff is None
    assert any(r.startswith("[copy]") and "identity/1" in r for r in v2.reasons), v2.reasons
    b = Board.open(board)
    assert [(e.key, e.status) for e in b.entries] == [("identity/1", "verified"),
                                                      ("identity/2", "rejected")]
    # The page ranks the verified entry; vs-ideal columns are n/a where no slice has an
    # ideal image (the tiny data's fracture-fixation patient is "real").
    from leaderboard.render import render_board

    html = render_board(b, tmp_path / "site").read_text()
    panel = html.split('id="panel-implant-fracture_fixation"')[1].split("</table>")[0]
    assert panel.count(">n/a</td>") == 2 and "badge verified" in panel
    assert "identity/2" in html.split("Not ranked")[1]
    # A verification applies to the predictions it checked, by sha256.
    v = json.loads((board / "submissions/identity/1/verification.json").read_text())
    v["predictions_sha256"] = "0" * 64
    (board / "submissions/identity/1/verification.json").write_text(json.dumps(v))
    assert Board.open(board).entry("identity/1").status == "submitted"


@pytest.mark.slow
def test_a_pull_request_never_brings_its_own_verification(tiny_run, hub_env, tmp_path):
    """`submit` never sends a verification.json (not even named as the figure), and `verify`
    at a pull request refuses one the pull request adds by hand."""
    data, run = tiny_run
    hub, env = hub_env
    board_src = tmp_path / "board_src"
    board_src.mkdir()
    config_from_results(Results.load(run), "Tiny board").save(board_src / "board.json")
    hub.add_folder("org/board", board_src, message="Create the board")
    forged = tmp_path / "forged"
    shutil.copytree(run, forged)
    r = Results.load(forged)
    (forged / "verification.json").write_text(json.dumps({
        "status": "reproduced", "reasons": [], "notes": ["trust me"],
        "predictions_sha256": r.predictions.sha256, "checked_utc": "2025-01-01T00:00:00Z"}))
    r.figure = "verification.json"
    r.save(forged / "results.json")
    out = run_cli(env, "submit", forged, "--board", "org/board", ok=False)
    assert "[figure_path]" in out and "discussions" not in out
    # A pull request made by hand, carrying the entry and a verification of its own.
    files = ["results.json", "card.yaml", "verification.json", r.predictions.path]
    client(env, f"""
        from huggingface_hub import CommitOperationAdd
        ops = [CommitOperationAdd(path_in_repo="submissions/identity/1/" + f,
                                  path_or_fileobj={str(forged)!r} + "/" + f) for f in {files!r}]
        api.create_commit("org/board", repo_type="dataset", operations=ops, create_pr=True,
                          commit_message="Submit identity v1")
        print(json.dumps(0))""")
    out = run_cli(env, "verify", "org/board", "--revision", "refs/pr/1", "--data", data)
    assert "identity/1: rejected" in out, out
    assert "the pull request adds verification.json" in out, out


def _write_predictions_from(data: Path, column: str, out: Path, step: int = 1) -> Path:
    """A predictions file whose images are the data's ``column`` (gsi, ordinary), every
    ``step``-th pixel: what a submitter copying the references would send."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(data / "pairs" / "test-00000-of-00001.parquet",
                      columns=["patient_id", "slice_index", column])
    images = [np.asarray(a, dtype=np.int16)[::step, ::step].tolist()
              for a in t.column(column).to_pylist()]
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"patient_id": t.column("patient_id"),
                             "slice_index": t.column("slice_index").cast(pa.int32()),
                             "prediction": pa.array(images, pa.list_(pa.list_(pa.int16())))}),
                   out)
    return out


@pytest.mark.slow
def test_real_reference_copies_replays_and_unscorable_predictions(tiny_run, tmp_path):
    """On real data and a real `marbench`: GSI copies are refused, an import path as method
    name is never re-run, predictions of the wrong shape are rejected before scoring."""
    from typer.testing import CliRunner

    from benchmark.results import sha256_file
    from benchmark.run import run_benchmark
    from leaderboard.board import BoardConfig
    from leaderboard.cli import app
    from leaderboard.submit import prepare
    from leaderboard.verify import verify_entry

    data, run = tiny_run
    board = tmp_path / "board"
    res = CliRunner().invoke(app, ["init", str(board), "--reference", str(run)])
    assert res.exit_code == 0, res.output
    cfg = BoardConfig.load(board)
    # 1. The GSI images replayed through the harness: a genuine run of copies.
    gsi = _write_predictions_from(data, "gsi", tmp_path / "gsi.parquet")
    copy_run = tmp_path / "gsi-copy"
    run_benchmark("benchmark.rescore:ReplayPredictions", data, split="test", out=copy_run,
                  lpips=None, clinical=False, figure=False, verbose=False,
                  options={"predictions": str(gsi)})
    (copy_run / "card.yaml").write_text(CARD)
    codes = {p.code for p in prepare(copy_run, cfg).problems}
    assert "reference_copy" in codes, codes

    # 2. The identity run renamed to the replaying class, to earn "reproduced".
    key = "benchmark.rescore_ReplayPredictions/1"
    entry = board / "submissions" / key
    only_named = shutil.ignore_patterns("per_slice.csv")  # what an entry holds, no more
    shutil.copytree(run, entry, ignore=only_named)
    r = Results.load(entry)
    r.method.name = "benchmark.rescore:ReplayPredictions"
    r.method.version = "1"
    r.method.options = {"predictions": str(entry / r.predictions.path)}
    r.save(entry / "results.json")
    # 3. 16 x 16 predictions on the 32 x 32 board, sha256 updated.
    small = board / "submissions/small/1"
    shutil.copytree(run, small, ignore=only_named)
    r = Results.load(small)
    r.method.name = "small"
    p = _write_predictions_from(data, "ordinary", small / r.predictions.path, step=2)
    r.predictions = r.predictions.model_copy(update={"sha256": sha256_file(p),
                                                     "bytes": p.stat().st_size})
    r.save(small / "results.json")

    b = Board.open(board)
    mb = marbench_env().split()
    v = verify_entry(b.entry(key), cfg, str(data), marbench=mb, reproduce_method=True)
    assert v.status == "verified", v
    assert any("by name only" in n for n in v.notes), v.notes
    v = verify_entry(b.entry("small/1"), cfg, str(data), marbench=mb)
    assert v.status == "rejected"
    assert any("[predictions_shape]" in x and "16 x 16" in x for x in v.reasons), v.reasons
    assert cfg.dataset.image_shape == (32, 32)  # `init` read it from the reference run
