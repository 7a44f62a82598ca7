"""The board suite: a folder of hostile submissions next to honest ones.

Three honest entries, verified by the maintainers, then every hostile submission of
``hostile.py`` placed on the board as merged pull requests would leave them, plus the attacks
that only a board can see (a figure naming a private file, predictions of another entry, an
SVG figure, a copy of a verified entry, an import path as method name). Each hostile one is
refused or marked invalid with its reason, by `list`, `verify` and `render` alike; the honest
ones keep their rank and badge; and the page, opened in Chromium, runs no script.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artifactgsi.testing import require_tool
from benchmark.results import Results
from leaderboard.board import Board
from leaderboard.cli import app
from leaderboard.submit import add_to_folder, prepare
from leaderboard.verify import verify_entry
from tests.helpers.board import board_config, make_results, method_scores
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
    script_name,
    set_card,
)

runner = CliRunner()
HONEST = {"good/1": (2.0, 0), "mid/1": (0.0, 1), "bad/1": (-2.0, 2)}
#: Accepted although made by a hostile hand: ranked where their (low) numbers put them.
VALID_HOSTILE = {"markup/1", "impostor/1", "benchmark.rescore_ReplayPredictions/1"}


def run_of(root: Path, name: str, offset: float, seed: int) -> Path:
    psnr, ssim = method_scores(offset, seed)
    return make_results(root / "runs" / name, name, psnr, ssim, seed=seed)


def invoke(*args: object, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    res = runner.invoke(app, [str(a) for a in args], env=env)
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"raw traceback: {res.exception!r}\n{res.output}")
    return res


@pytest.fixture(scope="module")
def suite(tmp_path_factory):  # type: ignore[no-untyped-def]
    """(board folder, expected reason code of each hostile entry, scratch folder)."""
    tmp = tmp_path_factory.mktemp("hostile_board")
    board = tmp / "board"
    board.mkdir()
    board_config().save(board / "board.json")
    fake = fake_marbench(tmp)
    for key, (off, seed) in HONEST.items():
        add_to_folder(prepare(run_of(tmp, key.split("/")[0], off, seed), board_config()), board)
    # The maintainers verified the honest entries as they arrived.
    b = Board.open(board)
    for key in HONEST:
        assert verify_entry(b.entry(key), b.config, "data", marbench=fake).status == "verified"

    expected: dict[str, str] = {}
    for i, h in enumerate(HOSTILE):  # would rank first if accepted (offset 5)
        run = make_hostile(h, run_of(tmp, h.name, 5.0, 10 + i), tmp / "hostile" / h.name, tmp)
        place(run, board, f"{h.name}/1")
        expected[f"{h.name}/1"] = h.code
    # Attacks only a board sees.
    leak = run_of(tmp, "leak", 5.0, 40)
    figure_absolute(leak, tmp)
    place(leak, board, "leak/1")
    expected["leak/1"] = "figure_path"
    svg = run_of(tmp, "svg", 5.0, 41)
    figure_svg(svg, tmp)
    place(svg, board, "svg/1")
    expected["svg/1"] = "unexpected_file"
    borrow = run_of(tmp, "borrow", 5.0, 42)
    good = board / "submissions/good/1"
    edit(borrow, lambda r: setattr(r, "predictions", Results.load(good).predictions.model_copy(
        update={"path": f"../../good/1/{PRED}"})))
    (borrow / PRED).unlink()
    place(borrow, board, "borrow/1")
    expected["borrow/1"] = "predictions_path"
    thief = run_of(tmp, "thief", 5.0, 43)
    shutil.copyfile(good / PRED, thief / PRED)
    edit(thief, lambda r: setattr(r, "predictions", Results.load(good).predictions))
    place(thief, board, "thief/1")
    expected["thief/1"] = "copy"
    figure = run_of(tmp, "pictured", 5.0, 44)
    (figure / "figure.png").write_bytes(b"<html>" + png_bytes())  # not a PNG at all
    place(figure, board, "pictured/1")
    expected["pictured/1"] = "figure"
    # Valid, hostile by hand: escaped name, a name already taken, an import path as name.
    markup = run_of(tmp, "markup", -5.0, 45)
    script_name(markup, tmp)
    place(markup, board, "markup/1")
    impostor = run_of(tmp, "impostor", -6.0, 46)
    set_card(impostor, name="good")
    place(impostor, board, "impostor/1")
    replay = run_of(tmp, "replay", -7.0, 47)
    import_path_method(replay, tmp)
    place(replay, board, "benchmark.rescore_ReplayPredictions/1")
    return board, expected, tmp, fake


def test_list_verify_and_render_refuse_each_hostile_entry_with_its_reason(suite):
    board, expected, tmp, fake = suite
    # list: every hostile entry invalid with its reason; the honest ones verified.
    res = invoke("list", board)
    assert res.exit_code == 0, res.output
    listed = {e["key"]: e for e in json.loads(res.output)["entries"]}
    assert set(listed) == set(HONEST) | set(expected) | VALID_HOSTILE
    for key, code in expected.items():
        assert listed[key]["status"] == "invalid", (key, listed[key])
        assert any(f"[{code}]" in r for r in listed[key]["reasons"]), (key, listed[key])
    assert {k: listed[k]["status"] for k in HONEST} == dict.fromkeys(HONEST, "verified")
    assert {listed[k]["status"] for k in VALID_HOSTILE} == {"submitted"}

    # verify (whole board, with --reproduce): each hostile entry rejected with its reason.
    env = {"MARBENCH": " ".join(fake)}
    res = invoke("verify", board, "--data", "d", "--reproduce", env=env)
    assert res.exit_code == 0, res.output
    blocks = dict(re.findall(r"^(\S+): (\w+)$", res.output, re.M))
    for key in expected:
        assert blocks[key] == "rejected", (key, res.output)
    for key in (*HONEST, *VALID_HOSTILE):
        assert blocks[key] == "verified", (key, res.output)  # the fake re-runs nothing
    assert "by name only" in res.output.split("benchmark.rescore_ReplayPredictions/1:")[1]

    # render: the honest entries keep rank and badge; every hostile one is listed apart.
    site = tmp / "site"
    res = invoke("render", board, "--out", site)
    assert res.exit_code == 0, res.output
    html = (site / "index.html").read_text()
    panel = html.split('id="panel-all"')[1].split("</table>")[0]
    order = re.findall(r'data-key="([^"]+)"', panel)
    assert order == ["good/1", "mid/1", "bad/1", "markup/1", "impostor/1",
                     "benchmark.rescore_ReplayPredictions/1"]
    for row in re.findall(r"<tr data-track.*?</tr>", panel, re.S)[:3]:
        assert 'class="badge verified"' in row
    apart = html.split("Not ranked")[1]
    for key in expected:
        assert f"<b>{key}</b>" in apart, key
    assert "good (impostor/1)" in html and "good (good/1)" in html
    files = [p for p in site.rglob("*") if p.is_file()]
    assert not any(SECRET_TEXT in p.read_text("latin-1") for p in files)
    assert {p.suffix for p in files} <= {".html", ".svg", ".yaml"}
    assert sorted(p.name for p in files if p.suffix == ".svg") == [
        "cd-all-method_vs_gsi-psnr.svg", "cd-all-method_vs_gsi-ssim.svg"]
    assert sorted(p.parent.relative_to(site / "entries").as_posix()
                  for p in files if p.name == "card.yaml") == sorted([*HONEST, *VALID_HOSTILE])


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    chromium = require_tool("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def _open(browser, url: str):  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    events: list[str] = []
    page.on("console", lambda m: events.append(f"console {m.type}: {m.text}"))
    page.on("dialog", lambda d: (events.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: events.append(f"pageerror: {e}"))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, events


@pytest.mark.slow
def test_the_page_of_a_hostile_board_runs_no_script_in_chromium(suite, browser):
    board, expected, tmp, fake = suite
    site = tmp / "site-browser"
    assert invoke("render", board, "--out", site).exit_code == 0
    title = board_config().title
    page, events = _open(browser, (site / "index.html").as_uri())
    assert page.title() == title
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert events == []  # no dialog, no error, not even a blocked attempt
    # The hostile name is shown as text, and the page's own script works (tabs).
    assert "<script>document.title='pwned'" in page.inner_text("#table-all")
    page.click("#tab-implant-spinal_fixation")
    assert page.is_visible("#table-implant-spinal_fixation")
    # The published entry files are a card and nothing that runs.
    for href in page.eval_on_selector_all("a", "as => as.map(a => a.getAttribute('href'))"):
        assert re.fullmatch(r"entries/[\w.-]+/[\w.-]+/card\.yaml", href), href
    page.screenshot(path=str(tmp / "hostile-board.png"), full_page=True)
    page.close()

    # Were the escaping ever lost, the page's policy still runs its own script only.
    html = (site / "index.html").read_text()
    injected = site / "injected.html"
    injected.write_text(html.replace("<h1>", "<script>window.__pwned=1;document.title="
                                     "'pwned'</script><img src=x onerror=\"window.__pwned=2\">"
                                     "<h1>", 1))
    page, events = _open(browser, injected.as_uri())
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.title() == title
    assert any("Content Security Policy" in e for e in events), events
    page.click("#tab-implant-hip_prosthesis")
    assert page.is_visible("#table-implant-hip_prosthesis")
    page.close()
