"""Scoring an expert study (``marbench expert score``): check, unblind, summarise.

1. The key must be the pack's (its sha256 is in the pack manifest, and its secret must
   reproduce every image id); ratings must come from this pack, name only its reading lists,
   items and images, hold integer scores 1-5, rate every item of the reader's list, and repeat
   a row only with the same scores. Each failure raises a named :class:`RatingsError`
   subclass listing every offending file and line.
2. Ratings are unblinded with the key. The first showing of each image is the reader's score;
   repeated showings serve only intra-reader agreement.
3. The report (paper Table 4 layout, plus agreement):

   - mean score per method and criterion with a 95 % bootstrap CI, resampling cases and
     readers (two-way: both are samples of larger populations);
   - paired comparisons of methods per criterion on the per-case mean over readers: Wilcoxon
     signed-rank (``scipy.stats.wilcoxon``), Holm-corrected over the pairs (:func:`holm`,
     checked against ``statsmodels``);
   - inter-reader agreement over all rated images: ICC(2,1) and ICC(2,k) with 95 % CIs and
     ordinal Krippendorff's alpha;
   - intra-reader agreement from repeated images, with readers of poor self-agreement flagged.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import MARBenchError
from benchmark.expert import pack as packmod
from benchmark.expert.form import RATING_COLUMNS, RATINGS_FORMAT

#: The paper's Table 4 (mean scores of its readers, 1-5) for comparison, not for ranking:
#: other data, other readers.
PAPER_TABLE4: dict[str, dict[str, float]] = {
    "LI": {"readability": 1.58, "correctness": 2.87},
    "DuDoDp": {"readability": 1.55, "correctness": 2.59},
    "OSCNet": {"readability": 2.21, "correctness": 3.58},
    "OSCNet+": {"readability": 2.15, "correctness": 3.90},
    "LGA": {"readability": 4.47, "correctness": 4.23},
}
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
    return [(f"{path}:{i + 2}", r) for i, r in enumerate(reader)]


def _score(value: Any) -> int | None | str:
    """An integer score, ``None`` for empty, or the offending text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
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
            seconds = float(r.get("seconds")) if str(r.get("seconds", "")).strip() else None
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


# ----------------------------------------------------------------------------- statistics


@dataclass
class Report:
    """The study's result (what ``table4.json`` holds)."""

    pack_id: str
    criteria: list[str]
    methods: list[str]
    n_cases: int
    readers: list[dict[str, Any]]
    table: dict[str, dict[str, dict[str, float]]]
    paired: dict[str, list[dict[str, Any]]]
    inter: dict[str, dict[str, Any]]
    intra: dict[str, dict[str, Any]]
    paper: dict[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)
    bootstrap: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "marbench-expert-scores/1", "pack_id": self.pack_id,
                "criteria": self.criteria, "methods": self.methods, "n_cases": self.n_cases,
                "n_readers": len(self.readers), "readers": self.readers,
                "bootstrap": self.bootstrap, "table": self.table, "paired": self.paired,
                "inter_reader": self.inter, "intra_reader": self.intra,
                "paper_table4": self.paper, "notes": self.notes}


def bootstrap_mean_ci(scores: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> np.ndarray:
    """Percentile CIs of the mean, resampling cases and readers (two-way bootstrap).

    Args:
        scores: (n_methods, n_cases, n_readers) scores.

    Returns:
        (n_methods, 2) lower / upper bounds.
    """
    rng = np.random.default_rng(seed)
    m, n, r = scores.shape
    boots = np.empty((n_boot, m))
    for b in range(n_boot):
        ci = rng.integers(0, n, n)
        ri = rng.integers(0, r, r)
        boots[b] = scores[:, ci][:, :, ri].mean(axis=(1, 2))
    alpha = (1.0 - level) / 2.0
    return np.quantile(boots, [alpha, 1.0 - alpha], axis=0).T


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given).

    The i-th smallest p (0-based) is multiplied by ``m - i``, then a running maximum keeps
    the order, capped at 1. This equals ``statsmodels.stats.multitest.multipletests(p,
    method="holm")[1]`` (the tests check it); that call runs a full garbage collection each
    time, which costs about a second in a process holding torch and datasets.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adj
    return out


def paired_tests(per_case: dict[str, np.ndarray], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank between every pair of methods (paired by case), Holm-corrected.

    Args:
        per_case: method -> (n_cases,) mean score over readers.
    """
    from scipy.stats import wilcoxon

    out: list[dict[str, Any]] = []
    for a, b in combinations(per_case, 2):
        x, y = per_case[a], per_case[b]
        d = x - y
        if np.all(d == 0):
            stat, p = math.nan, 1.0  # identical scores: no evidence of a difference
        else:
            res = wilcoxon(x, y)
            stat, p = float(res.statistic), float(res.pvalue)
        out.append({"a": a, "b": b, "n": int(d.size), "mean_diff": float(d.mean()),
                    "median_diff": float(np.median(d)), "statistic": stat, "p": p})
    if out:
        for o, ph in zip(out, holm([o["p"] for o in out]), strict=True):
            o["p_holm"] = float(ph)
            o["significant"] = bool(ph < alpha)
    return out


def analyse(pack: Pack, rows: Sequence[RatingRow], *, n_boot: int = 2000, seed: int = 0,
            min_self_alpha: float = 0.667, paper: bool = False) -> Report:
    """Unblind validated ratings and compute the report (see the module docstring)."""
    from benchmark.expert.agreement import icc, krippendorff_alpha, self_agreement

    criteria = list(pack.manifest["criteria"])
    methods = pack.methods
    images = pack.key["images"]
    cases = [c["case"] for c in pack.key["cases"]]
    case_ix = {c: i for i, c in enumerate(cases)}
    repeat_of = {it["item"]: it["repeat_of"] for rl in pack.key["reading_lists"]
                 for it in rl["items"]}
    readers = sorted({r.reader_id for r in rows})
    rd_ix = {r: i for i, r in enumerate(readers)}
    by = {(r.reader_id, r.item): r for r in rows}
    m_ix = {m: i for i, m in enumerate(methods)}
    scores = {c: np.full((len(methods), len(cases), len(readers)), np.nan) for c in criteria}
    reader_info: dict[str, dict[str, Any]] = {}
    for r in rows:
        info = reader_info.setdefault(r.reader_id, {"reader_id": r.reader_id,
                                                    "reading_list": r.reading_list,
                                                    "experience_years": r.experience,
                                                    "seconds": []})
        if r.seconds is not None:
            info["seconds"].append(r.seconds)
        if repeat_of[r.item] is not None:
            continue
        meta = images[r.image]
        for c in criteria:
            scores[c][m_ix[meta["method"]], case_ix[meta["case"]], rd_ix[r.reader_id]] = \
                r.scores[c]
    for c in criteria:
        if np.isnan(scores[c]).any():  # validate() guarantees this; guard against misuse
            raise MissingRatingsError([f"criterion {c}: some first showings have no score"])
    notes: list[str] = []
    table: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    paired: dict[str, list[dict[str, Any]]] = {}
    inter: dict[str, dict[str, Any]] = {}
    for k, c in enumerate(criteria):
        s = scores[c]
        ci = bootstrap_mean_ci(s, n_boot, seed + k)
        for i, m in enumerate(methods):
            table[m][c] = {"mean": float(s[i].mean()), "ci_low": float(ci[i, 0]),
                           "ci_high": float(ci[i, 1]), "sd": float(s[i].std(ddof=1))
                           if s[i].size > 1 else math.nan, "n": int(s[i].size)}
        paired[c] = paired_tests({m: s[i].mean(axis=1) for i, m in enumerate(methods)})
        # Inter-reader: every rated image is a target.
        mat = s.reshape(len(methods) * len(cases), len(readers))
        if len(readers) >= 2:
            try:
                forms = icc(mat)
                inter[c] = {"ICC(2,1)": forms["ICC(2,1)"].to_dict(),
                            "ICC(2,k)": forms["ICC(2,k)"].to_dict(), "k": len(readers)}
            except Exception as e:  # e.g. no variance at all: report why, keep the rest
                inter[c] = {"ICC(2,1)": None, "ICC(2,k)": None, "k": len(readers),
                            "icc_error": f"{type(e).__name__}: {e}"}
            inter[c]["alpha_ordinal"] = krippendorff_alpha(mat.T, "ordinal",
                                                           range(SCORE_MIN, SCORE_MAX + 1))
        else:
            inter[c] = {"ICC(2,1)": None, "ICC(2,k)": None, "alpha_ordinal": None,
                        "k": len(readers)}
    if len(readers) < 2:
        notes.append("one reader only: inter-reader agreement needs at least two")
    # Intra-reader from repeats.
    intra: dict[str, dict[str, Any]] = {}
    for reader in readers:
        pairs = [(by[(reader, repeat_of[r.item])], r) for r in rows
                 if r.reader_id == reader and repeat_of[r.item] is not None]
        entry: dict[str, Any] = {"n_repeats": len(pairs)}
        poor = []
        for c in criteria:
            sa = self_agreement([a.scores[c] for a, _ in pairs], [b.scores[c] for _, b in pairs],
                                min_alpha=min_self_alpha)
            entry[c] = sa.to_dict()
            if sa.poor:
                poor.append(c)
        entry["poor"] = bool(poor)
        entry["poor_criteria"] = poor
        intra[reader] = entry
        if poor:
            notes.append(f"reader {reader!r}: poor self-agreement on {', '.join(poor)} "
                         "(repeated images scored differently); consider their scores with care")
        if not pairs:
            notes.append(f"reader {reader!r}: no repeated images, self-agreement unknown")
    rinfo = []
    for reader in readers:
        info = reader_info[reader]
        secs = info.pop("seconds")
        info["median_seconds_per_image"] = float(np.median(secs)) if secs else None
        info["total_minutes"] = float(np.sum(secs) / 60.0) if secs else None
        rinfo.append(info)
    return Report(pack_id=pack.pack_id, criteria=criteria, methods=methods,
                  n_cases=len(cases), readers=rinfo, table=table, paired=paired, inter=inter,
                  intra=intra, paper=PAPER_TABLE4 if paper else None, notes=notes,
                  bootstrap={"n": n_boot, "seed": seed, "level": 0.95,
                             "resampled": ["cases", "readers"]})


# ----------------------------------------------------------------------------- output


def _paper_name(method: str) -> str | None:
    """The paper's row for a method label (``li`` -> ``LI``), if it has one."""
    base = method.split(" [", 1)[0].strip().lower()
    for name in PAPER_TABLE4:
        if name.lower() == base:
            return name
    return None


def _f(v: Any, d: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{d}f}"


def _p(v: float) -> str:
    return "n/a" if not math.isfinite(v) else ("<0.001" if v < 0.001 else f"{v:.3f}")


def markdown(report: Report) -> str:
    """The report as GitHub markdown (Table 4 first)."""
    crit = report.criteria
    lines = [f"# Expert scores: {len(report.methods)} methods, {report.n_cases} cases, "
             f"{len(report.readers)} reader(s)", "",
             "Mean score (1-5, higher is better) with 95 % bootstrap CI over cases and readers.",
             ""]
    head = ["method"] + [c for c in crit]
    if report.paper is not None:
        head += [f"paper {c}" for c in crit]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in report.methods:
        cells = [m] + [f"{_f(report.table[m][c]['mean'])} [{_f(report.table[m][c]['ci_low'])}, "
                       f"{_f(report.table[m][c]['ci_high'])}]" for c in crit]
        if report.paper is not None:
            pn = _paper_name(m)
            cells += [_f(report.paper[pn][c]) if pn else "" for c in crit]
        lines.append("| " + " | ".join(cells) + " |")
    if report.paper is not None:
        lines += ["", "The paper's Table 4 (its readers and data; for orientation, not a "
                  "comparison of numbers):", "",
                  "| method | " + " | ".join(crit) + " |", "|" + "---|" * (len(crit) + 1)]
        for name, vals in report.paper.items():
            lines.append(f"| {name} | " + " | ".join(_f(vals[c]) for c in crit) + " |")
    lines += ["", "## Paired comparisons", "",
              "Wilcoxon signed-rank on the per-case mean over readers; p Holm-corrected over "
              "the pairs of each criterion.", "",
              "| criterion | A | B | mean A-B | W | p | p (Holm) |",
              "|---|---|---|---|---|---|---|"]
    for c in crit:
        for o in report.paired[c]:
            mark = " *" if o.get("significant") else ""
            lines.append(f"| {c} | {o['a']} | {o['b']} | {o['mean_diff']:+.2f} | "
                         f"{_f(o['statistic'], 1)} | {_p(o['p'])} | {_p(o['p_holm'])}{mark} |")
    lines += ["", "## Inter-reader agreement", "",
              "| criterion | ICC(2,1) [95 % CI] | ICC(2,k) [95 % CI] | k | Krippendorff alpha "
              "(ordinal) |", "|---|---|---|---|---|"]
    for c in crit:
        e = report.inter[c]

        def cell(form: str, e: dict[str, Any] = e) -> str:
            v = e.get(form)
            return "n/a" if not v else f"{_f(v['icc'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}]"

        lines.append(f"| {c} | {cell('ICC(2,1)')} | {cell('ICC(2,k)')} | {e['k']} | "
                     f"{_f(e.get('alpha_ordinal'), 3)} |")
    lines += ["", "## Intra-reader agreement (repeated images)", "",
              "| reader | list | experience (y) | repeats | " + " | ".join(
                  f"{c} exact / alpha" for c in crit) + " | flag |",
              "|" + "---|" * (5 + len(crit))]
    info = {r["reader_id"]: r for r in report.readers}
    for reader, e in report.intra.items():
        cells = [f"{_f(e[c]['exact'])} / {_f(e[c]['alpha'])}" for c in crit]
        flag = ("POOR self-agreement: " + ", ".join(e["poor_criteria"])) if e["poor"] else ""
        lines.append(f"| {reader} | {info[reader]['reading_list']} | "
                     f"{info[reader]['experience_years'] or '?'} | {e['n_repeats']} | "
                     + " | ".join(cells) + f" | {flag} |")
    if report.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    """NaN / infinity -> ``None`` (standard JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def score_pack(pack: Path | str, ratings: Sequence[Path | str], *, key: Path | str | None = None,
               out: Path | str | None = None, paper: bool = False, n_boot: int = 2000,
               seed: int = 0, min_self_alpha: float = 0.667) -> tuple[Report, Path, Path]:
    """Validate, unblind and score; write ``table4.json`` and ``table4.md`` into ``out``
    (default ``<pack>/scores``). Returns (report, json path, markdown path)."""
    from benchmark.results import atomic_write_text

    p = load_pack(pack, key)
    rows = validate(p, ratings)
    report = analyse(p, rows, n_boot=n_boot, seed=seed, min_self_alpha=min_self_alpha,
                     paper=paper)
    out_dir = Path(out) if out is not None else p.manifest_path.parent.parent / "scores"
    jp = atomic_write_text(out_dir / "table4.json",
                           json.dumps(_json_safe(report.to_dict()), indent=1,
                                      allow_nan=False) + "\n")
    mp = atomic_write_text(out_dir / "table4.md", markdown(report))
    return report, jp, mp
