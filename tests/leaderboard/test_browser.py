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
        page.wait_for_selector("text=good/1", timeout=90_000)
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
