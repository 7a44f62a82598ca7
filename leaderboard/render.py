"""``leaderboard render``: the board as a static page (Jinja2) that needs no server.

``OUT/index.html`` holds one sortable table per tab (all slices, then each implant type):
mean with the bootstrap 95 % CI drawn as a whisker, rank and bootstrap rank range per metric,
the verification badge, the track, and links to each entry's method card and figure (copied to
``OUT/entries/<method>/<version>/``). Under each table: the Friedman test, the critical-
difference diagrams (``OUT/cd-all-<metric>.svg``, all slices), the Wilcoxon + Holm tests between
neighbours and the pairwise difference CIs of the primary metric. Excluded entries are listed
with their reasons. The footer gives the dataset revision and manifest, the protocol, the
board's revision and the build time.

The page runs no script from any entry: every text of an entry is escaped (Jinja2
autoescape), the page's own script is the only one its Content-Security-Policy allows (by
hash), an entry's card is written from its validated fields and its figure is a re-encoded
PNG. The site is written into a staging folder beside ``OUT`` and moved into place only when
complete, so a full disk never leaves a half-written page.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import math
import os
import shutil
import time
from pathlib import Path

from benchmark.results import atomic_write_text

from .board import Board, Entry
from .card import CARD_FILE
from .files import FIGURE_FILE, EntryFileError, reencode_png
from .significance import cd_diagram
from .view import BoardView, Row, build_view, display_names

TEMPLATES = Path(__file__).parent / "templates"
WHISKER_W = 110


def _fmt(x: float, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    digits = 4 if abs(x) < 1 else 2
    return f"{x:.{digits}f}"


def _whisker(lo: float, mean: float, hi: float, vmin: float, vmax: float) -> str:
    """An inline SVG: the CI as a line with end ticks, the mean as a dot (scaled per column)."""
    span = (vmax - vmin) or 1.0

    def x(v: float) -> float:
        return 4 + (WHISKER_W - 8) * (v - vmin) / span

    a, m, b = x(lo), x(mean), x(hi)
    return (f'<svg class="whisker" width="{WHISKER_W}" height="12" role="img" '
            f'aria-label="95% CI {lo:.4g} to {hi:.4g}">'
            f'<line x1="{a:.1f}" x2="{b:.1f}" y1="6" y2="6"/>'
            f'<line x1="{a:.1f}" x2="{a:.1f}" y1="2" y2="10"/>'
            f'<line x1="{b:.1f}" x2="{b:.1f}" y1="2" y2="10"/>'
            f'<circle cx="{m:.1f}" cy="6" r="3"/></svg>')


def _tool_version() -> str:
    try:
        return importlib.metadata.version("artifactgsi")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _csp(script: str) -> str:
    """The page's Content-Security-Policy: its own script only (by hash), no plugins, no
    forms, no remote anything."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'")


def render_view(view: BoardView, out: Path, cd: bool = True) -> Path:
    """Write ``out/index.html`` (+ diagrams and entry files) from a computed view: built in a
    staging folder beside ``out``, then moved in (``index.html`` last)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}-{time.time_ns()}"
    stage.mkdir()
    try:
        _write_site(view, stage, cd)
        _move_into(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out / "index.html"


def _move_into(stage: Path, out: Path) -> None:
    """Replace ``out``'s copies of what ``stage`` holds; the page itself last."""
    items = sorted(stage.iterdir(), key=lambda p: p.name == "index.html")
    for item in items:
        dest = out / item.name
        if item.is_dir():
            old = out / f".{item.name}.old-{time.time_ns()}"
            if dest.exists():
                os.replace(dest, old)
            os.replace(item, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(item, dest)


def _write_site(view: BoardView, out: Path, cd: bool) -> Path:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    board = view.board
    links: dict[str, dict[str, str]] = {}
    all_tabs = [*view.tabs, *view.hidden]
    for tab in all_tabs:
        for row in tab.rows:
            if row.link_id in links:
                continue
            dest = out / "entries" / row.link_id
            dest.mkdir(parents=True, exist_ok=True)
            item = {}
            if row.entry.card is not None:  # written from the validated fields
                (dest / CARD_FILE).write_text(row.entry.card.to_yaml(), encoding="utf-8")
                item["card"] = f"entries/{row.link_id}/{CARD_FILE}"
            fig = row.entry.figure_path() if isinstance(row.entry, Entry) else None
            if fig is not None:
                try:
                    (dest / FIGURE_FILE).write_bytes(reencode_png(fig))
                    item["figure"] = f"entries/{row.link_id}/{FIGURE_FILE}"
                except EntryFileError:
                    pass  # listed as a problem of the entry when the board was read
            links[row.link_id] = item
    seasons = {s.name: s for s in board.seasons}

    def names_of(tab):  # type: ignore[no-untyped-def]
        if tab.season:
            return display_names(seasons[tab.season].entries)
        return display_names(board.entries)

    tables = []
    for tab in all_tabs:
        cols = []
        for j, m in enumerate(view.metrics):
            cells = [r.cells[j] for r in tab.rows if r.cells[j] is not None]
            vmin = min((c.lo for c in cells), default=0.0)
            vmax = max((c.hi for c in cells), default=1.0)
            cols.append({"metric": m, "vmin": vmin, "vmax": vmax})
        rows = []
        for r in tab.rows:
            rows.append({"row": r, "links": links.get(r.link_id, {}), "cost": _cost(r),
                         "cells": [
                None if c is None else
                {"cell": c, "text": _fmt(c.mean), "lo": _fmt(c.lo), "hi": _fmt(c.hi),
                 "svg": _whisker(c.lo, c.mean, c.hi, cols[j]["vmin"], cols[j]["vmax"])}
                for j, c in enumerate(r.cells)]})
        sig = []
        # tab.stats is empty when no entry is ranked; None where a metric has no slice here.
        for j, (m, s) in enumerate(zip(view.metrics, tab.stats, strict=False)):
            if s is None:
                continue
            svg = None
            # Diagrams for all slices only (and each hidden season): per implant type they
            # add little and cost time.
            if cd and (tab.id == "all" or tab.season) and s.avg_ranks is not None:
                name = f"cd-{tab.id}-{m.comparison}-{m.metric}.svg"
                s_named = _relabel(s, names_of(tab))
                try:
                    if cd_diagram(s_named, str(out / name), title=f"{m.label}: mean rank "
                                  f"over {tab.n_patients} patients (Nemenyi, "
                                  f"α={board.config.bootstrap.alpha})",
                                  alpha=board.config.bootstrap.alpha):
                        svg = name
                except (ValueError, RuntimeError):
                    svg = None  # the page stands without its diagram
            sig.append({"metric": m, "stats": s, "cd": svg, "primary": j == 0})
        tables.append({"tab": tab, "cols": cols, "rows": rows, "sig": sig,
                       "names": names_of(tab)})
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = _fmt
    script = (TEMPLATES / "board.js").read_text(encoding="utf-8")
    html = env.get_template("board.html.j2").render(
        view=view, board=board, cfg=board.config, tables=tables,
        season_cards={s.name: s.card for s in board.seasons if s.card is not None},
        built=view.built_utc.strftime("%Y-%m-%d %H:%M UTC"), version=_tool_version(),
        excluded=view.excluded, script=script, csp=_csp(script))
    return atomic_write_text(out / "index.html", html)


def _cost(row: Row) -> dict[str, str]:
    """The measured-cost cells of a row: text and sort key (``-1``: not measured)."""
    e = row.efficiency
    if e is None:
        return {"sps": "—", "sps_sort": "-1", "params": "—", "params_sort": "-1",
                "mem": "—", "mem_sort": "-1", "title": "not measured: the board has not run "
                "this method (leaderboard verify --reproduce measures it)"}
    p = e.parameters
    params = "—" if p is None else f"{p / 1e6:.2f} M" if p >= 1e5 else f"{p:,}"
    return {"sps": f"{e.seconds_per_slice:.3g}", "sps_sort": repr(e.seconds_per_slice),
            "params": params, "params_sort": "-1" if p is None else str(p),
            "mem": f"{e.peak_memory_mib:,.0f}", "mem_sort": repr(e.peak_memory_mib),
            "title": f"measured by {e.measured_by} on {e.machine}: {e.wall_s:.1f} s wall, "
                     f"{e.cpu_s:.1f} s CPU over {e.n_slices} slices"}


def _short_label(text: str, limit: int = 48) -> str:
    """A diagram label: long names are cut (the page's tables show them whole)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _relabel(s, label: dict[str, str]):  # type: ignore[no-untyped-def]
    """A copy of ``s`` with display names (card names) instead of entry keys."""
    import copy

    c = copy.copy(s)
    # matplotlib reads "$...$" as mathematics: a card name is plain text.
    c.methods = [_short_label(label.get(k, k)).replace("$", r"\$") for k in s.methods]
    return c


def render_board(board: Board, out: Path | str, cd: bool = True) -> Path:
    """Compute the view of ``board`` and write the static site to ``out``."""
    return render_view(build_view(board), Path(out), cd=cd)


def screenshot(page: Path | str, png: Path | str, browser: str = "/usr/bin/chromium",
               width: int = 1400) -> Path:
    """Save a full-page PNG of a rendered board (``page``: its index.html) with a headless
    Chromium driven by playwright (the system browser; nothing is downloaded)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ImportError("screenshots need playwright: pip install playwright") from None
    if not Path(browser).is_file():
        raise FileNotFoundError(f"{browser}: no Chromium here (apt-get install chromium), "
                                "or pass --browser")
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = b.new_page(viewport={"width": width, "height": 900})
            tab.goto(Path(page).resolve().as_uri())
            tab.screenshot(path=str(out), full_page=True)
        finally:
            b.close()
    return out
