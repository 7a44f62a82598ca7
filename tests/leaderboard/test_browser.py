"""The board pages in a real headless Chromium (Debian's), driven by playwright.

Skipped without /usr/bin/chromium or playwright, except under CI=true where they must run.
"""

from __future__ import annotations

import os
import socket

import pytest

from artifactgsi.testing import require_tool
from leaderboard.board import Board
from leaderboard.render import render_board
from leaderboard.submit import add_to_folder, prepare


def _playwright():  # type: ignore[no-untyped-def]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("playwright is not installed; CI must run the browser tests")
        pytest.skip("playwright is not installed (pip install playwright)")
    return sync_playwright


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    chromium = require_tool("chromium")
    sync_playwright = _playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def three_entry_board(make_run, board_dir) -> Board:
    from tests.helpers.board import board_config

    for name, off, seed, track in (("good", 2, 0, "paired-supervised"), ("mid", 0, 1, "classic"),
                                   ("bad", -2, 2, "unsupervised")):
        add_to_folder(prepare(make_run(name, offset=off, seed=seed, track=track),
                              board_config()), board_dir)
    return Board.open(board_dir)


def _order(page, table: str = "#table-all") -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all(f"{table} tbody tr", "rs => rs.map(r => r.dataset.key)")


@pytest.mark.slow
def test_static_page_sorts_filters_and_switches_tabs(browser, three_entry_board, tmp_path):
    site = tmp_path / "site"
    render_board(three_entry_board, site)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto((site / "index.html").as_uri())
    assert _order(page) == ["good/1", "mid/1", "bad/1"]          # ranked by PSNR, best first
    page.click("#table-all thead th:has-text('Method')")
    assert _order(page) == ["bad/1", "good/1", "mid/1"]          # alphabetical
    page.click("#table-all thead th:has-text('PSNR vs GSI')")
    assert _order(page) == ["bad/1", "mid/1", "good/1"]          # PSNR ascending
    page.click("#table-all thead th:has-text('PSNR vs GSI')")
    assert _order(page) == ["good/1", "mid/1", "bad/1"]          # and descending
    # Track filter hides the other rows.
    page.select_option("#panel-all .track-filter", "classic")
    visible = page.eval_on_selector_all("#table-all tbody tr",
                                        "rs => rs.filter(r => !r.hidden).map(r => r.dataset.key)")
    assert visible == ["mid/1"]
    page.select_option("#panel-all .track-filter", "")
    # Per-implant tab.
    assert not page.is_visible("#table-implant-spinal_fixation")
    page.click("#tab-implant-spinal_fixation")
    assert page.is_visible("#table-implant-spinal_fixation")
    assert not page.is_visible("#table-all")
    page.click("#tab-all")
    shot = tmp_path / "board.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_gradio_app_serves_the_rows_and_stops(browser, three_entry_board):
    pytest.importorskip("gradio_leaderboard", reason="needs the board extra")
    from leaderboard.serve import serve

    port = _free_port()
    app = serve(three_entry_board, host="127.0.0.1", port=port, block=False)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        # The table fills in after the page loads, row by row: wait for every entry, not the
        # first one (reading right after the first made this test flaky on a busy machine).
        page.wait_for_function(
            "() => ['good/1', 'mid/1', 'bad/1'].every(n => document.body.innerText.includes(n))",
            timeout=90_000)
        text = page.inner_text("body")
        for name in ("good/1", "mid/1", "bad/1"):
            assert name in text
        assert "Implant type" in text and "Track" in text
        # One row per entry and tab (all + 2 implant types), best first.
        assert text.count("good/1") >= 3 and text.count("bad/1") >= 3
        assert text.index("good/1") < text.index("mid/1") < text.index("bad/1")
        assert "33.0066" in text  # good's mean PSNR over all slices (fixture values)
    finally:
        app.close()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # the server is gone
        s.settimeout(5)
        s.connect(("127.0.0.1", port))


def test_serve_names_the_missing_extra(monkeypatch, three_entry_board):
    import sys

    from leaderboard.serve import BoardExtraMissing, build_app

    # None in sys.modules makes `import gradio` raise ImportError, as when it is absent.
    monkeypatch.setitem(sys.modules, "gradio", None)
    monkeypatch.setitem(sys.modules, "gradio_leaderboard", None)
    with pytest.raises(BoardExtraMissing, match=r"gradio is not installed.*artifactgsi\[board\]"):
        build_app(three_entry_board)


@pytest.mark.slow
def test_hidden_season_and_cost_columns_in_the_page(browser, three_entry_board, tmp_path):
    """The new columns (training data; seconds per slice, parameters, peak memory measured by
    the board) and a hidden season's tab, filtered and sorted in a real browser."""
    import json
    from datetime import datetime, timezone

    from leaderboard.board import Verification, write_json
    from leaderboard.efficiency import Efficiency
    from tests.helpers.hidden import evaluation, file_hidden, season_card

    root = three_entry_board.root
    good = root / "submissions/good/1"
    sha = json.loads((good / "results.json").read_text())["predictions"]["sha256"]
    write_json(good / "verification.json", Verification(
        status="reproduced", predictions_sha256=sha,
        checked_utc=datetime(2026, 1, 5, tzinfo=timezone.utc),  # noqa: UP017
        efficiency=Efficiency(seconds_per_slice=0.042, wall_s=0.5, cpu_s=0.4, n_slices=12,
                              peak_memory_mib=812.0, parameters=2_500_000,
                              measured_by="leaderboard verify --reproduce", machine="test"),
    ).model_dump(mode="json"))
    season = root / "hidden" / "s1"
    season.mkdir(parents=True)
    season_card().save(season / "season.json")
    card = ("name: {n}\nauthors: [T]\ncode: https://x.org\nlicence: MIT\ntrack: {t}\n"
            "no_test_patients: true\ntraining_data: {d}\n")
    file_hidden(root, evaluation("deep", 2), card.format(
        n="Deep (hidden)", t="paired-supervised", d="[{dataset: org/data, splits: [train]}]"))
    file_hidden(root, evaluation("plain", 0), card.format(n="Plain (hidden)", t="classic",
                                                            d="[]"))
    file_hidden(root, evaluation("nosy", 0, "failed", "network",
                                   "nosy tried to reach the network (connect "
                                   "('203.0.113.7', 443)); the sandbox has no network"),
                 card.format(n="Nosy", t="classic", d="[]"))
    site = tmp_path / "site"
    render_board(Board.open(root), site)
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    page.goto((site / "index.html").as_uri())
    heads = page.eval_on_selector_all("#table-all thead th", "hs => hs.map(h => h.innerText)")
    assert [h for h in heads if h in ("Training data", "s / slice", "Params", "Peak MiB")] == \
        ["Training data", "s / slice", "Params", "Peak MiB"]
    i = heads.index("s / slice")
    cost = page.eval_on_selector_all(
        "#table-all tbody tr", f"rs => rs.map(r => [r.dataset.key, r.cells[{i}].innerText, "
        f"r.cells[{i + 1}].innerText, r.cells[{i + 2}].innerText])")
    assert cost == [["good/1", "0.042", "2.50 M", "812"], ["mid/1", "—", "—", "—"],
                    ["bad/1", "—", "—", "—"]]
    # The hidden season's tab: its own table, the season's card, the failed entry named.
    page.click("#tab-hidden-s1")
    assert page.is_visible("#table-hidden-s1") and not page.is_visible("#table-all")
    assert _order(page, "#table-hidden-s1") == ["deep/1", "plain/1"]
    assert "Hidden track, season s1" in page.inner_text("#panel-hidden-s1")
    page.select_option("#panel-hidden-s1 .training-filter", "zero-shot")
    visible = page.eval_on_selector_all("#table-hidden-s1 tbody tr",
                                        "rs => rs.filter(r => !r.hidden).map(r => r.dataset.key)")
    assert visible == ["plain/1"]
    page.select_option("#panel-hidden-s1 .training-filter", "")
    page.click("#table-hidden-s1 thead th:has-text('s / slice')")
    assert _order(page, "#table-hidden-s1") == ["plain/1", "deep/1"]  # 0.5 s before 2.5 s
    excluded = page.inner_text("ul.excluded")
    assert "hidden/s1/nosy/1" in excluded and "tried to reach the network" in excluded
    shot = tmp_path / "hidden.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
