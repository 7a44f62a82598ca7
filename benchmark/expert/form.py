"""The pack's rating form: one self-contained HTML file (no server, no network).

The template ``form.html`` (shipped with the package) holds the page, its style and script;
:func:`write_form` puts the pack into it as one JSON block: the reading lists (opaque item and
image ids only) and every image as its int16 HU slice, deflate-compressed and base64-encoded,
which the page decompresses (``DecompressionStream``) and windows on a canvas itself, so the
reader can change window / level freely.

What the page exports (CSV or JSON, one row per shown item) is what
:mod:`benchmark.expert.score` reads: ``pack_id, reading_list, reader_id, experience_years,
position, item, image, readability, correctness, seconds, comment, rated_at``.
"""

from __future__ import annotations

import base64
import json
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: Columns of an exported ratings file, in order.
RATING_COLUMNS = ("pack_id", "reading_list", "reader_id", "experience_years", "position",
                  "item", "image", "readability", "correctness", "seconds", "comment",
                  "rated_at")
#: Format tag of the JSON export.
RATINGS_FORMAT = "marbench-expert-ratings/1"

#: Anchored descriptions of each score, shown in the form (1 worst, 5 best).
ANCHORS: dict[str, dict[str, Any]] = {
    "readability": {
        "title": "Readability",
        "question": "How well can the image be read near the implant (artifact burden)?",
        "levels": {
            "1": "Non-diagnostic: severe artifacts; structures near the implant cannot be "
                 "assessed.",
            "2": "Poor: marked artifacts; structures near the implant only partly assessable.",
            "3": "Moderate: artifacts present; reading possible with some uncertainty.",
            "4": "Good: minor artifacts that do not affect reading.",
            "5": "Excellent: no relevant artifacts; all structures clearly seen.",
        },
    },
    "correctness": {
        "title": "Correctness",
        "question": "Is the anatomy shown faithfully (nothing invented, nothing removed)?",
        "levels": {
            "1": "Severely wrong: anatomy distorted or invented; would mislead.",
            "2": "Marked deviations: false or missing structures that could mislead.",
            "3": "Some deviations (blurred or shifted edges, odd texture) needing care.",
            "4": "Minor deviations without clinical consequence.",
            "5": "Faithful: anatomy correct, no structures added or removed.",
        },
    },
}


def encode_int16(image_hu: np.ndarray) -> str:
    """(H, W) int16 HU -> base64 of the deflate (zlib) stream of its little-endian bytes."""
    raw = np.ascontiguousarray(image_hu, dtype="<i2").tobytes()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def decode_int16(text: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`encode_int16`."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i2").reshape(shape)


def form_payload(manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the page needs: ids, windows, criteria, reading lists and the images."""
    case_of = {im["id"]: im["case"] for im in manifest["images"]}
    return {
        "format": "marbench-expert-form/1",
        "pack_id": manifest["pack_id"],
        "title": manifest.get("title", "Reading study"),
        "criteria": [dict(ANCHORS[c], key=c) for c in manifest["criteria"]],
        "windows": manifest["windows"],
        "reference": bool(manifest["reference"]),
        "references": manifest["references"],
        "columns": list(RATING_COLUMNS),
        "ratings_format": RATINGS_FORMAT,
        "lists": manifest["reading_lists"],
        # Sorted by id, so the order says nothing about the method.
        "images": {iid: {"case": case_of[iid], "shape": list(arrays[iid].shape),
                         "data": encode_int16(arrays[iid])}
                   for iid in sorted(arrays)},
    }


def render_form(payload: dict[str, Any]) -> str:
    """The template with the payload in place.

    ``<``, ``>`` and ``&`` are written as JSON ``\\u`` escapes (they can only occur inside
    strings), so no text of the pack (a title, an id) can end the script element or switch
    the HTML parser's script states (``</script>``, ``<!--<script>``)."""
    template = resources.files("benchmark.expert").joinpath("form.html").read_text("utf-8")
    blob = (json.dumps(payload, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    if template.count("__PACK_JSON__") != 1:
        raise RuntimeError("form.html: the template must hold __PACK_JSON__ exactly once")
    return template.replace("__PACK_JSON__", blob)


def write_form(manifest: dict[str, Any], arrays: dict[str, np.ndarray], path: Path) -> Path:
    """Write the form of a pack atomically; returns ``path``."""
    from benchmark.results import atomic_write_text

    return atomic_write_text(Path(path), render_form(form_payload(manifest, arrays)))
