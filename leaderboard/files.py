"""What an entry may hold: fixed file names, safe relative paths, size limits, PNG figures.

A submission is data, never paths. A board entry holds exactly these files::

    results.json                 the run's results
    card.yaml                    the method card (written from the validated card)
    predictions/<name>.parquet   the one predictions file results.json records
    figure.png                   optional; decoded and re-encoded, PNG only
    verification.json            written by `leaderboard verify` only

``results.json`` names the predictions file (``predictions.path``) and a figure (``figure``);
both must be plain names inside the run folder (:func:`predictions_path_problem`,
:func:`figure_path_problem`), and are read only after the resolved path is checked to lie
inside the folder (:func:`inside`). Nothing else of a run folder is ever read, and nothing
outside an entry is ever read or written.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from .errors import LeaderboardError

RESULTS_FILE = "results.json"
CARD_FILE = "card.yaml"
FIGURE_FILE = "figure.png"
VERIFICATION_FILE = "verification.json"
PREDICTIONS_DIR = "predictions"

#: ``predictions.path`` as `marbench run` writes it: one plain file name under predictions/.
PREDICTIONS_PATH = re.compile(r"predictions/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.parquet")
#: ``figure`` as `marbench run` writes it (``figure.png``): one plain PNG name in the folder.
FIGURE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.png")

#: Largest results.json read (a full test split with clinical metrics is a few MB).
MAX_RESULTS_BYTES = 64 * 2**20
#: Largest method card read.
MAX_CARD_BYTES = 64 * 2**10
#: Largest verification.json read.
MAX_VERIFICATION_BYTES = 1 * 2**20
#: Largest figure file read, and its largest decoded size (a decompression bomb is refused).
MAX_FIGURE_BYTES = 20 * 2**20
MAX_FIGURE_PIXELS = 40_000_000


class EntryFileError(LeaderboardError, ValueError):
    """A file of a run folder or an entry cannot be taken (the message names it and why)."""


def predictions_path_problem(rel: str) -> str | None:
    """Why ``predictions.path`` is refused, or ``None`` when it is a plain predictions name."""
    if PREDICTIONS_PATH.fullmatch(rel) and ".." not in rel:
        return None
    return (f"predictions.path {rel[:200]!r} is not a file name under predictions/ (like "
            "'predictions/test-00000-of-00001.parquet', as `marbench run` writes it); "
            "absolute paths and '..' are refused")


def figure_path_problem(rel: str) -> str | None:
    """Why ``figure`` is refused, or ``None`` when it is a plain PNG name in the folder."""
    if FIGURE_PATH.fullmatch(rel) and ".." not in rel:
        return None
    return (f"figure {rel[:200]!r} is not a PNG file name in the run folder (like "
            "'figure.png', as `marbench run` writes it); other files, absolute paths and "
            "'..' are refused")


def inside(folder: Path, rel: str, root: Path | None = None) -> Path:
    """``folder / rel`` once its resolved path is checked to lie inside ``root`` (default
    ``folder``), so a symbolic link cannot lead out of it.

    Raises:
        EntryFileError: the path leaves ``root``.
    """
    p = folder / rel
    base = (root or folder).resolve()
    if not p.resolve().is_relative_to(base):
        raise EntryFileError(f"{p}: leads outside {base} (a symbolic link?); refused")
    return p


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refusing a file larger than ``limit`` before reading it.

    Raises:
        FileNotFoundError: no such file.
        EntryFileError: too large, or not a regular file.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise EntryFileError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > limit:
        raise EntryFileError(f"{path}: {size} bytes; a {what} is at most {limit} bytes")
    return path.read_bytes()


def reencode_png(path: Path) -> bytes:
    """Decode ``path`` as a PNG (and only PNG) and encode the pixels again as a new PNG.

    The new file holds only pixels: no text chunks, no ICC profile, nothing a browser could
    read as markup. Pillow does the decoding because no hand check of the bytes could.

    Raises:
        EntryFileError: not a PNG, too large, or undecodable (the message says which).
    """
    from PIL import Image

    data = read_limited(path, MAX_FIGURE_BYTES, "figure")
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise EntryFileError(f"{path}: not a PNG image (figures are PNG only; SVG, HTML "
                             "and other formats are refused)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            w, h = img.size
            if w * h > MAX_FIGURE_PIXELS:
                raise EntryFileError(f"{path}: {w} x {h} pixels; a figure is at most "
                                     f"{MAX_FIGURE_PIXELS} pixels")
            img.load()
            mode = img.mode if img.mode in ("L", "LA", "RGB", "RGBA") else "RGBA"
            clean = img.convert(mode)
    except EntryFileError:
        raise
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise EntryFileError(f"{path}: not a readable PNG image ({e})") from None
    out = io.BytesIO()
    clean.save(out, format="PNG", optimize=False)
    return out.getvalue()
