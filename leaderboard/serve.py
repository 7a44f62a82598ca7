"""``leaderboard serve``: the board as a Gradio app (``gradio_leaderboard`` component).

The table has one row per entry and tab (``implant type`` = ``all`` or one implant type), with
search by method, column selection, and filters by track and implant type. It needs the
optional ``board`` extra: ``pip install 'artifactgsi[board]'`` (gradio 5: the component does
not work with gradio 6).
"""

from __future__ import annotations

from typing import Any

from leaderboard.errors import LeaderboardError

from .board import Board
from .view import BoardView, build_view


class BoardExtraMissing(LeaderboardError, ImportError):
    """gradio / gradio_leaderboard are not installed."""


def _require_extra() -> tuple[Any, Any]:
    try:
        import gradio as gr
        import gradio_leaderboard as gl
    except ImportError as e:
        raise BoardExtraMissing(
            f"`leaderboard serve` needs the optional board app packages ({e.name} is not "
            "installed): pip install 'artifactgsi[board]'  (gradio 5 and gradio_leaderboard; "
            "the static page of `leaderboard render` needs neither)") from None
    major = int(gr.__version__.split(".")[0])
    if major != 5:
        raise BoardExtraMissing(f"gradio {gr.__version__} is installed, but the leaderboard "
                                "component works with gradio 5 only: "
                                "pip install 'gradio>=5,<5.39'")
    return gr, gl


def board_dataframe(view: BoardView) -> Any:
    """A pandas DataFrame: one row per (entry, tab) of the public track, a mean and a CI
    column per metric, what the entry learnt from and what the board measured of it."""
    import pandas as pd

    records = []
    for tab in view.tabs:
        implant = "all" if tab.id == "all" else tab.id.removeprefix("implant-")
        for r in tab.rows:
            eff = r.efficiency
            rec: dict[str, Any] = {"rank": r.rank, "method": r.name, "entry": r.key,
                                   "track": r.track, "status": r.status,
                                   "training data": r.training[0],
                                   "implant type": implant,
                                   "rank range": "",
                                   "s / slice": None if eff is None else
                                   round(eff.seconds_per_slice, 4),
                                   "peak MiB": None if eff is None else
                                   round(eff.peak_memory_mib)}
            first = next((c for c in r.cells if c is not None), None)
            if first is not None:
                rec["rank range"] = f"{first.rank_lo}–{first.rank_hi}"
            for m, c in zip(view.metrics, r.cells, strict=True):
                rec[m.label] = None if c is None else round(c.mean, 4)
                rec[f"{m.label} 95% CI"] = "" if c is None else f"[{c.lo:.4g}, {c.hi:.4g}]"
            records.append(rec)
    cols = ["rank", "method", "entry", "track", "status", "training data", "implant type",
            "rank range"]
    for m in view.metrics:
        cols += [m.label, f"{m.label} 95% CI"]
    cols += ["s / slice", "peak MiB"]
    return pd.DataFrame.from_records(records, columns=cols)


def build_app(board: Board) -> Any:
    """The Gradio Blocks app (not launched)."""
    gr, gl = _require_extra()
    view = build_view(board)
    df = board_dataframe(view)
    cfg = board.config
    datatype = ["number", "str", "str", "str", "str", "str", "str", "str"]
    datatype += ["number", "str"] * len(view.metrics)
    datatype += ["number", "number"]
    with gr.Blocks(title=cfg.title) as app:
        gr.Markdown(f"# {cfg.title}\nRanked by **{view.metrics[0].label}** on "
                    f"{cfg.dataset.config}/{cfg.dataset.split} ({len(cfg.slices)} slices); "
                    "95 % bootstrap CIs; protocol " + ", ".join(cfg.protocols))
        gl.Leaderboard(
            value=df, datatype=datatype,
            search_columns=gl.SearchColumns(primary_column="method",
                                            secondary_columns=["entry"],
                                            placeholder="Search a method",
                                            label="Search"),
            select_columns=gl.SelectColumns(default_selection=list(df.columns),
                                            cant_deselect=["rank", "method"],
                                            label="Columns"),
            filter_columns=[gl.ColumnFilter("track", type="checkboxgroup", label="Track"),
                            # Defaults are (label, value) lists: the component maps them.
                            gl.ColumnFilter("implant type", type="dropdown",
                                            default=[("all", "all")], label="Implant type")],
        )
        rev = cfg.dataset.revision or "local build"
        gr.Markdown(f"Dataset revision `{rev}`, manifest `{cfg.dataset.manifest_sha256[:16]}…`"
                    f"; board `{board.source}`"
                    + (f" at `{board.revision[:12]}`" if board.revision else ""))
    return app


def serve(board: Board, host: str = "127.0.0.1", port: int | None = None,
          block: bool = True) -> Any:
    """Launch the app on ``host:port``; with ``block=False`` return it running (call
    ``app.close()`` to stop)."""
    app = build_app(board)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
               share=False, show_api=False, quiet=True)
    return app
