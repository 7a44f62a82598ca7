"""A hostile submitter, a careless one and a full disk against the board, grouped by class.

Each hostile submission is written from an honest run of the fixtures by ``hostile.py``.
Classes: a submission is data, never paths; verification rejects what it cannot score, runs
registered methods by name only and refuses copies; one bad entry is one invalid row; every
failure is a named error; what held before (escaping, doctored files, YAML bombs) still holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.results import Results
from leaderboard.board import Board
from leaderboard.cli import app
from leaderboard.render import render_board
from leaderboard.submit import add_to_folder, prepare
from leaderboard.verify import verify_entry
from tests.helpers.board import board_config
from tests.helpers.hostile import (
    HOSTILE,
    PRED,
    SECRET_TEXT,
    edit,
    fake_marbench,
    figure_absolute,
    figure_svg,
    import_path_method,
    make_hostile,
    place,
    png_bytes,
    reference_copy,
    resummarize,
    script_name,
    secret,
    set_card,
    swapped_predictions,
    wrong_shape,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
HONEST = (("good", 2.0, 0), ("mid", 0.0, 1), ("bad", -2.0, 2))


def invoke(*args: object):  # type: ignore[no-untyped-def]
    res = runner.invoke(app, [str(a) for a in args])
    # A named error exits through typer.Exit (SystemExit); anything else is a raw traceback.
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"raw traceback: {res.exception!r}\n{res.output}")
    return res


def listing(board: Path) -> dict[str, dict]:
    res = invoke("list", board)
    assert res.exit_code == 0, res.output
    return {e["key"]: e for e in json.loads(res.output)["entries"]}


def ranked_order(html: str) -> list[str]:
    body = html.split('id="panel-all"')[1].split("</table>")[0]
    return re.findall(r'data-key="([^"]+)"', body)


def not_ranked(html: str) -> str:
    return html.split("Not ranked")[1] if "Not ranked" in html else ""


@pytest.fixture
def honest_board(make_run, board_dir) -> Path:
    """good > mid > bad, submitted through `submit`."""
    for name, off, seed in HONEST:
        add_to_folder(prepare(make_run(name, offset=off, seed=seed), board_config()), board_dir)
    return board_dir


@pytest.fixture
def fake(tmp_path) -> list[str]:
    return fake_marbench(tmp_path)


def verify_all(board: Path, fake: list[str], keys: list[str] | None = None) -> dict[str, object]:
    b = Board.open(board)
    out = {}
    for e in b.entries:
        if keys is None or e.key in keys:
            out[e.key] = verify_entry(e, b.config, "data", marbench=fake)
    return out


def hostile_run(make_run, tmp_path: Path, maker, name: str) -> Path:  # type: ignore[no-untyped-def]
    """A hostile run folder that, if ranked, would come first (highest scores)."""
    honest = make_run(name, offset=5.0, seed=7)
    maker(honest, tmp_path)
    return honest


# ============================================================== a submission is data, never paths


@pytest.mark.parametrize("h", HOSTILE, ids=[h.name for h in HOSTILE])
def test_submit_refuses_each_hostile_run_by_name(h, make_run, board_dir, tmp_path):
    run = make_hostile(h, make_run("honest", offset=5.0, seed=7), tmp_path / "hostile" / h.name,
                       tmp_path)
    for extra in (["--dry-run"], []):  # the dry-run says exactly what the submit does
        res = invoke("submit", run, "--board", board_dir, *extra)
        assert res.exit_code == 2, res.output
        assert f"[{h.code}]" in res.output, res.output
    assert not (board_dir / "submissions").exists() or not any(
        (board_dir / "submissions").rglob("*.json"))
    assert SECRET_TEXT not in "".join(p.read_text("latin-1") for p in board_dir.rglob("*")
                                      if p.is_file())


def test_submit_cannot_write_outside_its_entry(honest_board, make_run, tmp_path):
    """predictions.path and figure climbing from the new entry's folder onto another entry's
    predictions and onto board.json: refused, the board untouched."""
    evil = make_run("evil", offset=5.0, seed=7)
    victim_pred = honest_board / "submissions/good/1" / PRED
    before = {p: p.read_bytes() for p in (victim_pred, honest_board / "board.json")}
    # Paths as seen from submissions/evil/<tmp>/ inside the board, made to exist on the
    # submitter's side too (relative to the run folder), so the file checks pass.
    rel_pred = f"../../good/1/{PRED}"
    rel_fig = "../../../board.json"
    src_pred = evil / rel_pred
    src_pred.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(evil / PRED, src_pred)
    (evil / rel_fig).parent.mkdir(parents=True, exist_ok=True)
    (evil / rel_fig).write_text('{"format": "pwned"}')

    def fn(r: Results) -> None:
        r.predictions = r.predictions.model_copy(update={"path": rel_pred})
        r.figure = rel_fig
    edit(evil, fn)
    res = invoke("submit", evil, "--board", honest_board)
    assert res.exit_code == 2
    assert "[predictions_path]" in res.output and "[figure_path]" in res.output
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was overwritten"
    assert listing(honest_board)["good/1"]["status"] == "submitted"
    assert not (honest_board / "submissions/evil").exists() or not any(
        (honest_board / "submissions/evil").iterdir())


def test_a_runs_verification_json_is_never_submitted(make_run, board_dir):
    from tests.helpers.hostile import verification_in_run

    run = make_run("good", offset=2)
    verification_in_run(run, run.parent)
    sub = prepare(run, board_config())
    assert sub.valid, sub.problems
    assert set(sub.files) == {"results.json", PRED}  # what a Hub pull request would carry
    res = invoke("submit", run, "--board", board_dir)
    assert res.exit_code == 0, res.output
    assert "only the board's maintainers write verification.json" in res.output
    assert not (board_dir / "submissions/good/1/verification.json").exists()
    assert listing(board_dir)["good/1"]["status"] == "submitted"


def test_figure_is_decoded_and_reencoded_as_png(make_run, board_dir):
    import matplotlib.image as mpimg

    run = make_run("good", offset=2)
    (run / "figure.png").write_bytes(png_bytes(text_chunk="<script>alert(1)</script>"))
    edit(run, lambda r: setattr(r, "figure", "figure.png"))
    assert invoke("submit", run, "--board", board_dir).exit_code == 0
    stored = board_dir / "submissions/good/1/figure.png"
    data = stored.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"<script>" not in data and b"tEXt" not in data  # pixels only
    # The same picture (matplotlib reads both; an independent decoder of Pillow's output).
    assert (mpimg.imread(stored) == mpimg.imread(run / "figure.png")).all()


def test_the_board_reads_and_publishes_nothing_outside_an_entry(honest_board, make_run,
                                                                tmp_path):
    """Entries as hand-made pull requests would leave them: a figure naming a private file,
    predictions pointing at another entry's, a script-carrying SVG figure."""
    a = hostile_run(make_run, tmp_path, figure_absolute, "leak")
    place(a, honest_board, "leak/1")
    b = make_run("thief", offset=5.0, seed=7)
    good_pred = honest_board / "submissions/good/1" / PRED
    edit(b, lambda r: r.__setattr__("predictions", r.predictions.model_copy(update={
        "path": f"../../good/1/{PRED}", "sha256": Results.load(
            honest_board / "submissions/good/1").predictions.sha256,
        "bytes": good_pred.stat().st_size})))
    (b / PRED).unlink()
    place(b, honest_board, "thief/1")
    c = hostile_run(make_run, tmp_path, figure_svg, "svg")
    place(c, honest_board, "svg/1")
    entries = listing(honest_board)
    assert entries["leak/1"]["status"] == "invalid"
    assert any("[figure_path]" in r for r in entries["leak/1"]["reasons"])
    assert entries["thief/1"]["status"] == "invalid"
    assert any("[predictions_path]" in r for r in entries["thief/1"]["reasons"])
    assert entries["svg/1"]["status"] == "invalid"
    assert any("figure.svg" in r for r in entries["svg/1"]["reasons"])
    site = tmp_path / "site"
    assert invoke("render", honest_board, "--out", site).exit_code == 0
    html = (site / "index.html").read_text()
    assert ranked_order(html) == ["good/1", "mid/1", "bad/1"]
    files = [p for p in site.rglob("*") if p.is_file()]
    assert not any(SECRET_TEXT in p.read_text("latin-1") for p in files)
    assert sorted(p.name for p in files if p.suffix == ".svg") == [
        "cd-all-method_vs_gsi-psnr.svg", "cd-all-method_vs_gsi-ssim.svg"]
    assert not (site / "entries/svg").exists() and not (site / "entries/leak").exists()


# ============================================ verification: what it cannot score, names, copies


def test_unscorable_predictions_are_rejected_never_ranked(honest_board, make_run, tmp_path,
                                                          fake, monkeypatch):
    """2 x 2 predictions on a 4 x 4 board, self-reporting 46 dB."""
    run = hostile_run(make_run, tmp_path, wrong_shape, "small")

    def fn(r: Results) -> None:
        for s in r.per_slice:
            s.scores["method_vs_gsi"]["psnr"] = 46.0
        resummarize(r)
    edit(run, fn)
    place(run, honest_board, "small/1")
    e = listing(honest_board)["small/1"]
    assert e["status"] == "invalid"
    assert any("[predictions_shape]" in r and "2 x 2" in r for r in e["reasons"])
    html = render_board(Board.open(honest_board), tmp_path / "site", cd=False).read_text()
    assert ranked_order(html) == ["good/1", "mid/1", "bad/1"]
    assert "small/1" in not_ranked(html)
    log = tmp_path / "marbench.log"
    monkeypatch.setenv("FAKE_MARBENCH_LOG", str(log))
    v = verify_all(honest_board, fake, ["small/1"])["small/1"]
    assert v.status == "rejected" and any("[predictions_shape]" in r for r in v.reasons)
    assert not log.exists()  # rejected before anything is scored


def test_init_records_the_shape_of_the_reference_predictions(make_run, tmp_path):
    res = invoke("init", tmp_path / "b", "--reference", make_run("identity"))
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "b/board.json").read_text())
    assert cfg["dataset"]["image_shape"] == [4, 4]  # the fixtures' 4 x 4 predictions


def test_reproduce_runs_registered_methods_by_name_only(honest_board, make_run, tmp_path, fake,
                                                        monkeypatch):
    run = hostile_run(make_run, tmp_path, import_path_method, "replay")
    entry = place(run, honest_board, "benchmark.rescore_ReplayPredictions/1")
    log = tmp_path / "marbench.log"
    monkeypatch.setenv("FAKE_MARBENCH_LOG", str(log))
    # Were the import path run, it would replay the entry's own predictions: "reproduced".
    monkeypatch.setenv("FAKE_RERUN_FROM", str(entry))
    b = Board.open(honest_board)
    e = b.entry("benchmark.rescore_ReplayPredictions/1")
    v = verify_entry(e, b.config, "data", marbench=fake, reproduce_method=True)
    assert v.status == "verified", v
    assert any("registered method" in n and "by name only" in n for n in v.notes), v.notes
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[0] for c in calls] == ["rescore"]  # never `run` with an import path
    # A registered name is run, as one argument that cannot be read as anything else.
    monkeypatch.setenv("FAKE_RERUN_FROM", str(honest_board / "submissions/good/1"))
    v = verify_entry(b.entry("good/1"), b.config, "data", marbench=fake, reproduce_method=True)
    assert v.status == "reproduced", v
    run_call = [json.loads(line) for line in log.read_text().splitlines()][-1]
    assert run_call[0] == "run"
    assert "--method=good" in run_call or run_call[run_call.index("--method") + 1] == "good"


@pytest.mark.parametrize("reencode", [False, True], ids=["byte-identical", "re-encoded"])
def test_a_copy_of_a_verified_entry_is_refused(honest_board, make_run, tmp_path, fake,
                                               reencode):
    verify_all(honest_board, fake)
    good = honest_board / "submissions/good/1"
    thief = make_run("thief", offset=2, seed=0)
    shutil.copyfile(good / PRED, thief / PRED)
    if reencode:  # same images, other bytes
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(good / PRED), thief / PRED, compression="gzip",
                       row_group_size=5)
        assert (thief / PRED).read_bytes() != (good / PRED).read_bytes()
    edit(thief, lambda r: setattr(r, "predictions", r.predictions.model_copy(update={
        "sha256": __import__("hashlib").sha256((thief / PRED).read_bytes()).hexdigest(),
        "bytes": (thief / PRED).stat().st_size})))
    res = invoke("submit", thief, "--board", honest_board)
    assert res.exit_code == 2 and "[copy]" in res.output and "good/1" in res.output
    place(thief, honest_board, "thief/1")  # as a merged pull request would
    v = verify_all(honest_board, fake)
    assert v["thief/1"].status == "rejected"
    assert any(r.startswith("[copy]") and "good/1" in r for r in v["thief/1"].reasons)
    assert v["good/1"].status == "verified"
    entries = listing(honest_board)
    assert entries["good/1"]["status"] == "verified"
    assert entries["thief/1"]["status"] == "rejected"
    html = render_board(Board.open(honest_board), tmp_path / "site", cd=False).read_text()
    assert ranked_order(html) == ["good/1", "mid/1", "bad/1"]
    assert "thief/1" in not_ranked(html)


def test_identical_unverified_entries_wait_for_the_maintainers_choice(make_run, board_dir,
                                                                      tmp_path, fake):
    """Neither of two identical entries is verified: both are held back, a whole-board
    verify rejects both, the maintainers verify the original by name, the copy is refused."""
    orig = make_run("orig", offset=2, seed=0)
    add_to_folder(prepare(orig, board_config()), board_dir)
    copy = make_run("aaa-copy", offset=2, seed=0)  # sorts first
    shutil.copyfile(orig / PRED, copy / PRED)
    edit(copy, lambda r: setattr(r, "predictions", Results.load(orig).predictions))
    place(copy, board_dir, "aaa-copy/1")
    entries = listing(board_dir)
    assert {k: e["status"] for k, e in entries.items()} == {"aaa-copy/1": "invalid",
                                                            "orig/1": "invalid"}
    res = invoke("verify", board_dir, "--data", "d")  # MARBENCH unset: nothing is scored
    assert "aaa-copy/1: rejected" in res.output and "orig/1: rejected" in res.output
    b = Board.open(board_dir)
    v = verify_entry(b.entry("orig/1"), b.config, "data", marbench=fake, chosen=True)
    assert v.status == "verified"
    assert {k: e["status"] for k, e in listing(board_dir).items()} == {
        "aaa-copy/1": "rejected", "orig/1": "verified"}
    v = verify_all(board_dir, fake)
    assert (v["orig/1"].status, v["aaa-copy/1"].status) == ("verified", "rejected")


def test_copies_of_the_references_are_refused(honest_board, make_run, tmp_path, fake):
    run = hostile_run(make_run, tmp_path, reference_copy, "gsi-copy")
    place(run, honest_board, "gsi-copy/1")
    e = listing(honest_board)["gsi-copy/1"]
    assert e["status"] == "invalid" and any("[reference_copy]" in r for r in e["reasons"])
    v = verify_all(honest_board, fake, ["gsi-copy/1"])["gsi-copy/1"]
    assert v.status == "rejected" and any("[reference_copy]" in r for r in v.reasons)


# ================================================= one bad entry is one invalid row

BREAKERS = [h for h in HOSTILE if h.name in ("huge-value", "latin1-card", "nested-results",
                                            "nested-card", "megabyte-name", "blank-name",
                                            "nul-name", "rtl-name")]


@pytest.mark.parametrize("h", BREAKERS, ids=[h.name for h in BREAKERS])
def test_one_bad_entry_is_one_invalid_row(h, honest_board, make_run, tmp_path, fake,
                                          monkeypatch):
    run = make_hostile(h, make_run("hostile", offset=5.0, seed=7), tmp_path / "h", tmp_path)
    place(run, honest_board, "hostile/1")
    entries = listing(honest_board)
    assert entries["hostile/1"]["status"] == "invalid"
    reasons = " ".join(entries["hostile/1"]["reasons"])
    assert reasons and len(reasons) < 5000
    assert [entries[k]["status"] for k in ("good/1", "mid/1", "bad/1")] == ["submitted"] * 3
    # (The diagrams are left out for time; the test of shared names draws them.)
    html = render_board(Board.open(honest_board), tmp_path / "site", cd=False).read_text()
    assert ranked_order(html) == ["good/1", "mid/1", "bad/1"]
    assert "hostile/1" in not_ranked(html)
    monkeypatch.setenv("MARBENCH", " ".join(fake))
    res = invoke("verify", honest_board, "--data", "d")
    assert res.exit_code == 0, res.output
    assert "hostile/1: rejected" in res.output
    assert all(f"{k}: verified" in res.output for k in ("good/1", "mid/1", "bad/1"))


def test_entries_sharing_a_card_name_are_both_shown_with_their_keys(honest_board, make_run,
                                                                    tmp_path):
    run = make_run("impostor", offset=5.0, seed=7)
    set_card(run, name="good")  # the honest entry's name
    add_to_folder(prepare(run, board_config()), honest_board)
    entries = listing(honest_board)
    assert entries["impostor/1"]["status"] == entries["good/1"]["status"] == "submitted"
    site = tmp_path / "site"
    assert invoke("render", honest_board, "--out", site).exit_code == 0  # with CD diagrams
    html = (site / "index.html").read_text()
    assert ranked_order(html) == ["impostor/1", "good/1", "mid/1", "bad/1"]
    assert "good (impostor/1)" in html and "good (good/1)" in html
    svg = (site / "cd-all-method_vs_gsi-psnr.svg").read_text()
    assert "impostor/1" in svg and "good/1" in svg


# ================================================= every failure is a named error


def _sys_refuses_writes() -> bool:
    try:
        (Path("/sys") / "marbench-probe").mkdir()
    except OSError:
        return True
    return False


@pytest.mark.skipif(not _sys_refuses_writes(), reason="needs a folder nobody may write")
def test_render_and_init_without_permission_are_named(honest_board, make_run):
    res = invoke("render", honest_board, "--out", "/sys/marbench-site")
    assert res.exit_code == 2
    assert res.output.startswith("error: /sys/") and "not permitted" in res.output.lower() \
        or "permission denied" in res.output.lower()
    res = invoke("init", "/sys/marbench-board", "--reference", make_run("identity"))
    assert res.exit_code == 2 and "error: /sys/marbench-board" in res.output


def _cli_with_file_limit(args: list[object], limit: int, tmp: Path) -> subprocess.CompletedProcess:
    """The CLI in a process that may write no file past ``limit`` bytes (a full disk: every
    write past it fails with EFBIG)."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from leaderboard.cli import app\n"
            "sys.argv = ['leaderboard', *sys.argv[1:]]\n"
            "app()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


@pytest.mark.slow
def test_a_full_disk_is_named_and_leaves_nothing_half_written(honest_board, make_run, tmp_path):
    site = tmp_path / "site"
    assert invoke("render", honest_board, "--out", site).exit_code == 0
    page = (site / "index.html").read_bytes()
    r = _cli_with_file_limit(["render", honest_board, "--out", site], 4096, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: ") and "File too large" in r.stderr
    assert (site / "index.html").read_bytes() == page  # the page before is untouched
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []

    r = _cli_with_file_limit(["init", tmp_path / "b", "--reference", make_run("identity")],
                             512, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "File too large" in r.stderr and not (tmp_path / "b/board.json").exists()

    r = _cli_with_file_limit(["submit", make_run("new", offset=1, seed=5), "--board",
                              honest_board], 1024, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "File too large" in r.stderr and "board is unchanged" in r.stderr
    assert sorted(p.name for p in (honest_board / "submissions").iterdir()
                  if any(p.iterdir())) == ["bad", "good", "mid"]
    assert not list((honest_board / "submissions").rglob(".*"))


def test_unreachable_or_malformed_hub_boards_are_named(make_run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ("import json, sys\nfrom typer.testing import CliRunner\n"
            "from leaderboard.cli import app\nout = []\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    r = CliRunner().invoke(app, args)\n"
            "    out.append([r.exit_code, r.output, repr(r.exception) if r.exception and "
            "not isinstance(r.exception, SystemExit) else None])\n"
            "print(json.dumps(out))\n")
    run = str(make_run("good"))
    cases = [["list", "org/no-such-board"], ["render", "org/no-such-board", "--out",
                                             str(tmp_path / "s")],
             ["verify", "org/no-such-board", "--data", "d"],
             ["submit", run, "--board", "org/no-such-board"],
             ["list", "org/bad name"], ["submit", run, "--board", "org/bad name"]]
    p = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert p.returncode == 0, p.stderr
    for args, (exit_code, output, exc) in zip(cases, json.loads(p.stdout.splitlines()[-1]),
                                              strict=True):
        assert exc is None, f"{args}: raw traceback {exc}"
        assert exit_code == 2 and output.startswith("error: "), (args, output)
        assert "org/no-such-board" in output or "'org/bad name'" in output, (args, output)


def test_verify_of_an_entry_not_on_the_board_is_named(honest_board):
    res = invoke("verify", honest_board, "--data", "d", "--entry", "nope/1")
    assert res.exit_code == 2 and "no entry 'nope/1'" in res.output


# ================================================= the listing and the page agree


def test_list_says_invalid_where_the_page_does(honest_board, make_run, tmp_path):
    run = make_run("oldproto", offset=5.0, seed=7)
    edit(run, lambda r: setattr(r.protocol, "version", "marbench-v0"))
    place(run, honest_board, "oldproto/1")
    e = listing(honest_board)["oldproto/1"]
    assert e["status"] == "invalid" and any("[protocol]" in r for r in e["reasons"])
    html = render_board(Board.open(honest_board), tmp_path / "site", cd=False).read_text()
    assert "oldproto/1" in not_ranked(html) and "oldproto/1" not in ranked_order(html)


# ================================================= what held before, and must keep holding


def test_script_payloads_are_escaped_on_the_page(honest_board, make_run, tmp_path):
    run = hostile_run(make_run, tmp_path, script_name, "markup")
    add_to_folder(prepare(run, board_config()), honest_board)  # a valid card
    bad = make_run("badproto", offset=1, seed=8)
    edit(bad, lambda r: setattr(r.protocol, "version", "<script>window.__pwned=1</script>"))
    place(bad, honest_board, "badproto/1")
    html = render_board(Board.open(honest_board), tmp_path / "site", cd=False).read_text()
    assert ranked_order(html)[0] == "markup/1"
    assert "<script>document.title" not in html and "<img src=x" not in html
    assert "&lt;script&gt;document.title=&#39;pwned&#39;" in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in not_ranked(html)
    assert html.count("<script") == 1  # the page's own


def test_verify_rejects_swapped_predictions(honest_board, make_run, tmp_path, fake):
    run = hostile_run(make_run, tmp_path, swapped_predictions, "swapped")
    place(run, honest_board, "swapped/1")
    v = verify_all(honest_board, fake, ["swapped/1"])["swapped/1"]
    assert v.status == "rejected" and any("[predictions_sha256]" in r for r in v.reasons)


def test_figure_svg_or_any_extra_file_makes_an_entry_invalid(honest_board, make_run):
    run = make_run("extra", offset=5.0, seed=7)
    secret(run)  # any file besides the five an entry holds
    place(run, honest_board, "extra/1")
    e = listing(honest_board)["extra/1"]
    assert e["status"] == "invalid"
    assert any("[unexpected_file]" in r and "maintainer-secret.txt" in r for r in e["reasons"])
