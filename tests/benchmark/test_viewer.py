"""`marbench view` in a real browser (headless Debian chromium driven by playwright)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from benchmark.apply.viewer import WINDOW_PRESETS, render


def test_render_tiles_side_by_side_in_window() -> None:
    a = np.array([[[-500.0, 1500.0], [500.0, 3000.0]]])  # (1, 2, 2) HU
    b = a + 0.0
    b[0, 0, 0] = -2000.0
    img = render({"ordinary": a, "m": b}, 0, "metal (L 500 / W 2000)")
    k = 128  # 2 px enlarged to 256
    assert img.shape == (2 * k, 2 * 2 * k + 4, 3) and img.dtype == np.uint8
    left = img[::k, : 2 * k : k, 0]
    np.testing.assert_array_equal(left, [[0, 255], [128, 255]])  # L500/W2000: -500..1500 HU
    assert (img[:, 2 * k: 2 * k + 4] == 255).all()  # separator
    assert img[0, 2 * k + 4, 0] == 0  # -2000 HU is black too
    soft = render({"o": a}, 0, "soft tissue (L 40 / W 400)")
    assert soft[k, 0, 0] == 255  # 500 HU is above 240 HU: white
    assert set(WINDOW_PRESETS) >= {"metal (L 500 / W 2000)"}


def _phantom_series(folder: Path, n: int, size: int) -> Path:
    """A water cylinder (40 HU, noise SD 10) with a bone ring and a 3000 HU metal disk."""
    from artifactgsi.dicom import SeriesMeta, write_ct_series
    from artifactgsi.physics.geometry import ImageGrid

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy / 0.8)
    vol = np.full((n, size, size), -1000.0)
    vol[:, r < size * 0.45] = 40.0
    vol[:, (r > size * 0.3) & (r < size * 0.34)] = 900.0
    vol[:, np.hypot(xx - 5, yy) < 3] = 3000.0
    vol += rng.normal(0, 10, vol.shape)
    meta = SeriesMeta(patient_name="ANON", patient_id="X", birth_date="", sex="O",
                      study_date="20240101", study_time="120000", institution="",
                      referring_physician="", accession_number="",
                      study_uid="2.25.1234567890123", series_number=1,
                      series_description="phantom", manufacturer="Sim", model="SimCT",
                      kvp=120.0, kev=None, convolution_kernel="STANDARD",
                      frame_of_reference_uid="2.25.9876543210987", slice_thickness_mm=2.5,
                      body_part="PELVIS")
    write_ct_series(np.rint(vol).astype(np.int16), [2.5 * i for i in range(n)],
                    ImageGrid((size, size), 1.0, (0.0, 0.0)), meta, folder)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot_viewer(series: Path, methods: list[str], png: Path, work: Path,
                      move_to: int = 1) -> dict[str, str]:
    """Start the app on a free local port with ``series`` open, move the slice slider to
    slice number ``move_to`` (counted from 1, as the slider and caption count), save a
    screenshot to ``png``, stop the server; returns captions seen."""
    from playwright.sync_api import sync_playwright

    from artifactgsi.testing import require_tool
    from benchmark.apply.viewer import build_app

    exe = require_tool("chromium")
    app = build_app([str(series)], work=work, methods=methods)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
               inbrowser=False, quiet=True, allowed_paths=[str(work)])
    seen: dict[str, str] = {"port": str(port)}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            caption = page.locator("#caption")
            caption.get_by_text("slice", exact=False).wait_for(timeout=120_000)
            seen["loaded"] = caption.inner_text()
            page.locator("#view-image img").wait_for(timeout=30_000)
            seen["src_before"] = page.locator("#view-image img").get_attribute("src") or ""
            number = page.locator("#slice-slider input[type=number]")
            number.fill(str(move_to))
            number.press("Enter")
            page.get_by_text(f"slice {move_to} of", exact=False).wait_for(timeout=30_000)
            page.wait_for_timeout(500)
            seen["moved"] = caption.inner_text()
            seen["src_after"] = page.locator("#view-image img").get_attribute("src") or ""
            seen["files"] = page.locator("a[download]").count().__str__()
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png), full_page=True)
            browser.close()
    finally:
        app.close()
    return seen


@pytest.mark.slow
def test_viewer_in_headless_chromium(tmp_path: Path) -> None:
    series = _phantom_series(tmp_path / "series", n=4, size=48)
    png = tmp_path / "viewer.png"
    seen = screenshot_viewer(series, ["identity", "li"], png, tmp_path / "work", move_to=1)
    assert "ordinary | identity | li" in seen["loaded"]
    assert "slice 3 of 4" in seen["loaded"]  # opens at the middle slice
    assert "slice 1 of 4" in seen["moved"]
    assert seen["src_after"] != seen["src_before"]  # a new image was drawn for slice 1
    assert int(seen["files"]) >= 1  # derived series offered for download
    assert png.stat().st_size > 10_000
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(seen["port"])),
                                                          timeout=2):
        pass  # the server is stopped: nothing listens on its port any more
    zips = sorted((tmp_path / "work").rglob("*.zip"))
    assert [z.name for z in zips] == ["identity-derived-series.zip", "li-derived-series.zip"]
