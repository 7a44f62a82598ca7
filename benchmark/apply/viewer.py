"""``marbench view``: a local Gradio app to compare MAR methods on one's own CT series.

Open a series (a folder path, a folder given on the command line, or uploaded files), pick
methods, and see ordinary | method | method ... side by side at a window preset, with a
slice slider; each method's output is a derived DICOM series (:func:`benchmark.apply.
apply_to_series`) offered for download as a zip. Everything runs locally; the server listens
on 127.0.0.1 unless told otherwise.

Everything the viewer writes (derived series, zips, uploads, and gradio's own copies of the
files it serves) goes into one private work folder (mode 0700, under the system temp folder),
which is removed when the viewer stops, also on Ctrl-C or SIGTERM: derived series carry the
patient's name, ID and birth date from the source headers.

Gradio is imported inside :func:`build_app`, so ``marbench`` stays fast to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import typer

#: Window presets (level, width) in HU; the first is the paper's metal window.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "metal (L 500 / W 2000)": (500.0, 2000.0),
    "soft tissue (L 40 / W 400)": (40.0, 400.0),
    "bone (L 400 / W 1800)": (400.0, 1800.0),
    "wide (L 0 / W 4000)": (0.0, 4000.0),
}
#: Methods ticked by default when they are installed.
DEFAULT_METHODS = ("li", "nmar")
#: Each image is drawn at least this many pixels wide (nearest-neighbour enlargement).
MIN_TILE_PX = 256


@dataclass
class _Loaded:
    """The open series and the outputs computed so far (HU volumes, ascending z)."""

    folder: str = ""
    volumes: dict[str, np.ndarray] = field(default_factory=dict)  # "ordinary", method names
    downloads: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def render(volumes: dict[str, np.ndarray], index: int, preset: str) -> np.ndarray:
    """The tiles of slice ``index`` side by side as an (H', W', 3) uint8 image at ``preset``.

    Tiles are separated by 4 white pixels and enlarged (nearest) to at least
    :data:`MIN_TILE_PX` wide.
    """
    from ..figures import window_hu

    level, width = WINDOW_PRESETS[preset]
    tiles = []
    for vol in volumes.values():
        i = int(np.clip(index, 0, vol.shape[0] - 1))
        g = (window_hu(vol[i], level, width) * 255.0 + 0.5).astype(np.uint8)
        k = max(1, -(-MIN_TILE_PX // g.shape[1]))
        tiles.append(np.kron(g, np.ones((k, k), np.uint8)))
    h = max(t.shape[0] for t in tiles)
    sep = np.full((h, 4), 255, np.uint8)
    row: list[np.ndarray] = []
    for t in tiles:
        if row:
            row.append(sep)
        row.append(np.pad(t, ((0, h - t.shape[0]), (0, 0))))
    return np.repeat(np.concatenate(row, axis=1)[..., None], 3, axis=2)


def _caption(state: _Loaded, index: int) -> str:
    if not state.volumes:
        return "No series open."
    n = next(iter(state.volumes.values())).shape[0]
    cols = " | ".join(state.volumes)
    return f"**{cols}**, slice {int(index) + 1} of {n} (`{state.folder}`)"


def _zip(folder: Path, dest: Path) -> str:
    return shutil.make_archive(str(dest), "zip", root_dir=folder)


def load_series(folder: str, methods: list[str], work: Path, implant_type: str | None = None,
                series_uid: str | None = None) -> _Loaded:
    """Read ``folder`` and apply each of ``methods``; outputs are cached under ``work``."""
    from artifactgsi.dicom import read_series

    from .series import apply_to_series, select_series

    state = _Loaded(folder=folder)
    files = select_series(Path(folder), series_uid or None)
    src = files[0].parent
    state.volumes["ordinary"] = read_series(src).volume_hu.astype(np.float32)
    tag = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:12]
    for m in methods:
        out = work / tag / m
        try:
            if not out.is_dir():
                apply_to_series(m, src, out, implant_type=implant_type or None)
            state.volumes[m] = read_series(out).volume_hu.astype(np.float32)
            state.downloads.append(_zip(out, work / tag / f"{m}-derived-series"))
        except Exception as e:  # one method failing must not hide the others
            state.messages.append(f"{m}: {e}")
    return state


def private_folder(work: Path | None = None) -> Path:
    """``work`` (created), or a new folder under the system temp folder; either way readable
    by its owner only (0700)."""
    if work is None:
        return Path(tempfile.mkdtemp(prefix="marbench-view-"))  # mkdtemp: mode 0700
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o700)
    return work


#: The environment variable that tells gradio where to keep uploads and the copies of the
#: files it serves (default: a world-readable folder under the system temp folder).
GRADIO_CACHE_ENV = "GRADIO_TEMP_DIR"


@contextlib.contextmanager
def viewer_session(dirs: list[str] | None = None, work: Path | None = None,
                   methods: list[str] | None = None) -> Iterator[Any]:
    """:func:`build_app` in a private work folder (:func:`private_folder`) that also holds
    gradio's cache; on leaving (normally, on an exception, Ctrl-C or SIGTERM turned into
    ``SystemExit``) the app is closed and the folder removed."""
    work = private_folder(work)
    before = os.environ.get(GRADIO_CACHE_ENV)
    os.environ[GRADIO_CACHE_ENV] = str(work / "gradio")
    app = None
    try:
        app = build_app(dirs, work=work, methods=methods)
        yield app
    finally:
        if app is not None:
            with contextlib.suppress(Exception):
                app.close()
        if before is None:
            os.environ.pop(GRADIO_CACHE_ENV, None)
        else:
            os.environ[GRADIO_CACHE_ENV] = before
        shutil.rmtree(work, ignore_errors=True)


def build_app(dirs: list[str] | None = None, work: Path | None = None,
              methods: list[str] | None = None) -> Any:
    """The Gradio Blocks app (not launched). ``dirs`` are offered as series folders and the
    first is opened with ``methods`` (default: :data:`DEFAULT_METHODS` that are installed).

    Outputs go to ``work`` (:func:`private_folder`); :func:`viewer_session` also points
    gradio's cache there and removes the folder at the end."""
    import gradio as gr

    from ..registry import REGISTRY

    work = private_folder(work)
    names = REGISTRY.names()
    chosen = [m for m in (methods or DEFAULT_METHODS) if m in names]
    dirs = [str(d) for d in (dirs or [])]

    def open_(folder: str, upload: list[str] | None, ms: list[str], implant: str, uid: str,
              preset: str):
        if upload:
            folder = str(work / "upload" / hashlib.sha256(
                "".join(sorted(upload)).encode()).hexdigest()[:12])
            Path(folder).mkdir(parents=True, exist_ok=True)
            for f in upload:
                shutil.copy(f, Path(folder) / Path(f).name)
        if not folder:
            return _Loaded(), None, gr.update(), "Give a series folder or upload files.", None
        try:
            state = load_series(folder, ms or [], work, implant or None, uid or None)
        except Exception as e:  # shown to the user: the reader's named errors
            return _Loaded(), None, gr.update(), f"**Cannot open** `{folder}`: {e}", None
        n = state.volumes["ordinary"].shape[0]
        mid = n // 2
        text = _caption(state, mid) + "".join(f"\n\n- {m}" for m in state.messages)
        return (state, render(state.volumes, mid, preset),
                # The slider counts slices from 1, as the caption does.
                gr.update(minimum=1, maximum=max(n, 2), value=mid + 1, step=1,
                          interactive=n > 1),
                text, state.downloads or None)

    def show(state: _Loaded, index: float, preset: str):
        if not state or not state.volumes:
            return None, "No series open."
        i = int(index) - 1  # slider: 1-based
        return render(state.volumes, i, preset), _caption(state, i)

    with gr.Blocks(title="marbench view") as app:
        gr.Markdown("## marbench view: metal artifact reduction on your own CT series\n"
                    "Runs locally. Each method's output is a derived DICOM series (same study, "
                    "frame of reference and geometry) that you can download.")
        state = gr.State(_Loaded())
        with gr.Row():
            folder = gr.Dropdown(choices=dirs, value=dirs[0] if dirs else None,
                                 allow_custom_value=True, label="series folder", scale=3)
            upload = gr.File(file_count="multiple", type="filepath",
                             label="or upload the DICOM files of one series", scale=2)
        with gr.Row():
            ms = gr.CheckboxGroup(choices=names, value=chosen, label="methods", scale=3)
            implant = gr.Dropdown(choices=["", "none", "hip_prosthesis", "fracture_fixation",
                                           "spinal_fixation"], value="",
                                  label="implant type (LGA needs it)", scale=1)
            uid = gr.Textbox(label="SeriesInstanceUID (folder with several series)", scale=1)
        go = gr.Button("Open and run", variant="primary")
        with gr.Row():
            preset = gr.Radio(list(WINDOW_PRESETS), value=next(iter(WINDOW_PRESETS)),
                              label="window")
            index = gr.Slider(1, 2, value=1, step=1, label="slice", elem_id="slice-slider")
        caption = gr.Markdown("No series open.", elem_id="caption")
        image = gr.Image(label="ordinary | methods", type="numpy", interactive=False,
                         show_download_button=True, elem_id="view-image")
        files = gr.File(label="derived series (zip)", file_count="multiple",
                        interactive=False)
        outputs = [state, image, index, caption, files]
        inputs = [folder, upload, ms, implant, uid, preset]
        go.click(open_, inputs, outputs)
        if dirs:
            app.load(open_, inputs, outputs)
        index.change(show, [state, index, preset], [image, caption])
        preset.change(show, [state, index, preset], [image, caption])
    app.marbench_work = work  # type: ignore[attr-defined] - for callers that clean up
    return app


def view(
    dirs: list[Path] = typer.Argument(None, help="series folders to offer (the first opens)"),
    method: list[str] = typer.Option([], "--method", "-m",
                                     help="method to run (repeatable) [default: li, nmar]"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (local by default)"),
    port: int = typer.Option(7860, help="port (0: any free one)"),
) -> None:
    """Open a local app to compare MAR methods side by side on your own CT series."""
    import socket

    from artifactgsi.cli_common import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds through viewer_session, which removes the work folder
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    with viewer_session([str(d) for d in dirs or []], methods=list(method) or None) as app:
        app.launch(server_name=host, server_port=port, inbrowser=False,
                   allowed_paths=[str(app.marbench_work)])
