"""Checking and unblinding an expert study's ratings (step 1 and 2 of
:mod:`benchmark.expert.score`).

The key must be the pack's (its sha256 is in the pack manifest, and its secret must reproduce
every image id); ratings must come from this pack, name only its reading lists, items and
images, hold integer scores 1-5, rate every item of the reader's list, and repeat a row only
with the same scores. Each failure raises a named :class:`RatingsError` subclass listing every
offending file and line. Ratings are unblinded with the key.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.errors import MARBenchError
from benchmark.expert import pack as packmod
from benchmark.expert.form import RATING_COLUMNS, RATINGS_FORMAT

SCORE_MIN, SCORE_MAX = 1, 5
_REQUIRED = ("pack_id", "reading_list", "reader_id", "item", "image", "readability",
             "correctness")


# ----------------------------------------------------------------------------- errors


class RatingsError(MARBenchError, ValueError):
    """Ratings or key that cannot be scored; ``problems`` lists each offending row."""

    title = "the ratings cannot be scored"
    hint = ""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:12]
        more = len(self.problems) - len(shown)
        text = f"{type(self).__name__}: {self.title}:\n  - " + "\n  - ".join(shown)
        if more:
            text += f"\n  ... and {more} more"
        if self.hint:
            text += f"\n{self.hint}"
        super().__init__(text)


class RatingsFormatError(RatingsError):
    title = "unreadable ratings file or missing columns"
    hint = "Pass the CSV or JSON files exported by the pack's form.html."


class WrongKeyError(RatingsError):
    title = "the key does not belong to this pack"
    hint = ("Pass the key.json written next to this pack's reader/ folder (--key); a key from "
            "another pack, or an edited key, cannot unblind these ratings.")


class ForeignPackError(RatingsError):
    title = "ratings from another pack"
    hint = ("Each pack has its own ids: score these files with the pack they were made on, "
            "and this pack's ratings with this pack.")


class UnknownIdError(RatingsError):
    title = "ids that this pack does not have"
    hint = "The rows were edited or come from another pack; export again from the form."


class ScoreRangeError(RatingsError):
    title = f"scores outside {SCORE_MIN}-{SCORE_MAX}"
    hint = f"Scores are whole numbers from {SCORE_MIN} to {SCORE_MAX}."


class MissingRatingsError(RatingsError):
    title = "images not rated"
    hint = ("Every image of a reader's list must be rated on every criterion: open form.html "
            "in the same browser (progress is kept), press N to jump to the next unrated "
            "image, and export again.")


class DuplicateConflictError(RatingsError):
    title = "the same item rated twice with different scores"
    hint = ("Keep one export per reader (the latest), or correct the rows so that they "
            "agree.")


class ReaderConflictError(RatingsError):
    title = "one reader in several reading lists"
    hint = "Each reader reads one list; give the second reading another reader id."


# ----------------------------------------------------------------------------- the pack


@dataclass
class Pack:
    """A pack's manifest and key, cross-checked."""

    manifest: dict[str, Any]
    key: dict[str, Any]
    manifest_path: Path
    key_path: Path

    @property
    def pack_id(self) -> str:
        return str(self.manifest["pack_id"])

    @property
    def methods(self) -> list[str]:
        return [m["label"] for m in self.key["methods"]]


def _find_manifest(pack: Path) -> Path:
    for cand in (pack / packmod.READER_DIR / packmod.MANIFEST_FILE,
                 pack / packmod.MANIFEST_FILE, pack):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{pack}: no pack manifest (expected "
                            f"{pack / packmod.READER_DIR / packmod.MANIFEST_FILE}); pass the "
                            "folder given to `marbench expert pack --out`")


def load_pack(pack: Path | str, key: Path | str | None = None) -> Pack:
    """Read the manifest and the key and check that the key is this pack's.

    Args:
        pack: the pack folder (``--out`` of ``pack``), its ``reader/`` folder or manifest.
        key: the key file (default ``key.json`` next to ``reader/``).
    """
    manifest_path = _find_manifest(Path(pack))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RatingsFormatError([f"{manifest_path}: not valid JSON ({e})"]) from e
    if manifest.get("format") != packmod.MANIFEST_FORMAT:
        raise RatingsFormatError([f"{manifest_path}: format {manifest.get('format')!r}, "
                                  f"expected {packmod.MANIFEST_FORMAT!r}"])
    key_path = Path(key) if key is not None else manifest_path.parent.parent / packmod.KEY_FILE
    if not key_path.is_file():
        raise FileNotFoundError(f"{key_path}: no key file; pass --key (the key.json written by "
                                "`marbench expert pack`, kept apart from the reader material)")
    raw = key_path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != manifest.get("key_sha256"):
        raise WrongKeyError([f"{key_path}: sha256 {digest[:12]}... but the pack manifest "
                             f"{manifest_path} records {str(manifest.get('key_sha256'))[:12]}..."])
    key_obj = json.loads(raw)
    if key_obj.get("format") != packmod.KEY_FORMAT or key_obj.get("pack_id") != \
            manifest["pack_id"]:
        raise WrongKeyError([f"{key_path}: pack {key_obj.get('pack_id')!r}, the manifest is "
                             f"pack {manifest['pack_id']!r}"])
    # The secret must reproduce every id (a key whose hash was patched into the manifest
    # cannot unblind).
    secret = bytes.fromhex(key_obj["secret_hex"])
    case = {c["case"]: c for c in key_obj["cases"]}
    bad = []
    for iid, meta in key_obj["images"].items():
        c = case[meta["case"]]
        label = meta["method"] if meta["kind"] == "rated" else "@reference"
        if packmod.image_id(secret, c["patient_id"], c["slice_index"], label) != iid:
            bad.append(f"{key_path}: image {iid} does not follow from the key's secret")
    if bad:
        raise WrongKeyError(bad)
    return Pack(manifest, key_obj, manifest_path, key_path)


# ----------------------------------------------------------------------------- ratings


@dataclass
class RatingRow:
    """One validated rating (unblinded later)."""

    source: str
    reader_id: str
    experience: str
    reading_list: int
    item: str
    image: str
    scores: dict[str, int]
    seconds: float | None
    comment: str


def read_ratings_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of one exported file as (``file:line``, row) pairs (CSV or the JSON export)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise RatingsFormatError([f"{path}: cannot be read ({e})"]) from e
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise RatingsFormatError([f"{path}: not valid JSON ({e})"]) from e
        if not isinstance(obj, dict) or obj.get("format") != RATINGS_FORMAT \
                or not isinstance(obj.get("ratings"), list):
            raise RatingsFormatError([f"{path}: not a ratings export (format "
                                      f"{obj.get('format') if isinstance(obj, dict) else None!r}"
                                      f", expected {RATINGS_FORMAT!r})"])
        return [(f"{path}:ratings[{i}]", dict(r)) for i, r in enumerate(obj["ratings"])]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise RatingsFormatError([f"{path}: missing column(s) {', '.join(missing)}; columns "
                                  f"are {reader.fieldnames}; expected {', '.join(RATING_COLUMNS)}"])
    return [(f"{path}:{i + 2}", {k: _unquote_cell(v) if k in _TEXT_COLUMNS else v
                                 for k, v in r.items()}) for i, r in enumerate(reader)]


#: Free-text columns of the form's CSV export: a cell that a spreadsheet would read as a
#: formula is exported with a leading ``'`` (OWASP's CSV injection advice); read back, the
#: quote is dropped so that the CSV and JSON exports of one reader agree.
_TEXT_COLUMNS = ("reader_id", "comment", "experience_years")


def _unquote_cell(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" \
            and value[1] in "=+-@\t\r":
        return value[1:]
    return value


def _score(value: Any) -> int | None | str:
    """An integer score, ``None`` for empty, or the offending text (``true`` is not 1)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return repr(value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        return repr(value)
    if not math.isfinite(f) or f != int(f) or not SCORE_MIN <= f <= SCORE_MAX:
        return repr(value)
    return int(f)


def validate(pack: Pack, files: Sequence[Path | str]) -> list[RatingRow]:
    """Read and check the ratings files (see the module docstring); returns one row per
    (reader, item). Raises the first failing :class:`RatingsError` kind, listing every row of
    that kind."""
    if not files:
        raise RatingsFormatError(["no ratings files given"])
    criteria = list(pack.manifest["criteria"])
    lists = {int(rl["list"]): rl["items"] for rl in pack.manifest["reading_lists"]}
    item_image = {it["item"]: (ln, it["image"]) for ln, its in lists.items() for it in its}
    raw: list[tuple[str, dict[str, Any]]] = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise RatingsFormatError([f"{path}: no such file"])
        rows = read_ratings_file(path)
        if not rows:
            raise RatingsFormatError([f"{path}: no rows"])
        raw.extend(rows)
    problems: dict[type[RatingsError], list[str]] = defaultdict(list)
    for where, r in raw:
        missing = [c for c in _REQUIRED if c not in r]
        if missing:
            problems[RatingsFormatError].append(f"{where}: missing field(s) {missing}")
    _raise_first(problems)
    for where, r in raw:
        if str(r["pack_id"]) != pack.pack_id:
            problems[ForeignPackError].append(f"{where}: pack_id {r['pack_id']!r}, this pack is "
                                              f"{pack.pack_id!r}")
    _raise_first(problems)
    out: dict[tuple[str, str], RatingRow] = {}
    list_of_reader: dict[str, set[int]] = defaultdict(set)
    for where, r in raw:
        try:
            ln = int(str(r["reading_list"]).strip())
        except ValueError:
            ln = -1
        item, image = str(r["item"]).strip(), str(r["image"]).strip()
        if ln not in lists:
            problems[UnknownIdError].append(f"{where}: reading_list {r['reading_list']!r} (the "
                                            f"pack has lists {sorted(lists)})")
            continue
        if item not in item_image:
            problems[UnknownIdError].append(f"{where}: item {item!r} is not in this pack")
            continue
        if item_image[item][0] != ln:
            problems[UnknownIdError].append(f"{where}: item {item!r} belongs to list "
                                            f"{item_image[item][0]}, the row says list {ln}")
            continue
        if item_image[item][1] != image:
            problems[UnknownIdError].append(f"{where}: image {image!r} is not the image shown as "
                                            f"item {item!r}")
            continue
        scores: dict[str, int] = {}
        for c in criteria:
            s = _score(r.get(c))
            if isinstance(s, str):
                problems[ScoreRangeError].append(f"{where}: {c} = {s}")
            elif s is not None:
                scores[c] = s
        reader = str(r["reader_id"]).strip()
        if not reader:
            problems[RatingsFormatError].append(f"{where}: empty reader_id")
            continue
        list_of_reader[reader].add(ln)
        try:
            seconds = (float(r.get("seconds")) if str(r.get("seconds", "")).strip()
                       and not isinstance(r.get("seconds"), bool) else None)
        except (TypeError, ValueError):
            seconds = None
        row = RatingRow(where, reader, str(r.get("experience_years", "") or ""), ln, item, image,
                        scores, seconds, str(r.get("comment", "") or ""))
        prev = out.get((reader, item))
        if prev is not None:
            merged = dict(prev.scores)
            for c, s in scores.items():
                if c in merged and merged[c] != s:
                    problems[DuplicateConflictError].append(
                        f"{where}: reader {reader!r} item {item!r} {c} = {s}, but "
                        f"{prev.source} has {merged[c]}")
                merged[c] = s
            prev.scores = merged
            continue
        out[(reader, item)] = row
    _raise_first(problems)
    for reader, lns in sorted(list_of_reader.items()):
        if len(lns) > 1:
            problems[ReaderConflictError].append(f"reader {reader!r} has ratings in lists "
                                                 f"{sorted(lns)}")
    _raise_first(problems)
    for reader, lns in sorted(list_of_reader.items()):
        ln = next(iter(lns))
        gaps = []
        for pos, it in enumerate(lists[ln], start=1):
            row = out.get((reader, it["item"]))
            lacking = [c for c in criteria if row is None or c not in row.scores]
            if lacking:
                gaps.append(f"position {pos} ({', '.join(lacking)})")
        if gaps:
            problems[MissingRatingsError].append(
                f"reader {reader!r} (list {ln}): {len(gaps)} of {len(lists[ln])} images "
                f"unrated: {', '.join(gaps[:8])}{' ...' if len(gaps) > 8 else ''}")
    _raise_first(problems)
    return list(out.values())


def _raise_first(problems: dict[type[RatingsError], list[str]]) -> None:
    for kind, msgs in problems.items():
        if msgs:
            raise kind(msgs)
