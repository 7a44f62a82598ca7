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

Steps 1 and 2 are :mod:`benchmark.expert.ratings`, step 3 :mod:`benchmark.expert.analysis`;
this module writes the report (``table4.json``, ``table4.md``) and runs the command.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The ratings checks and the statistics are re-exported (``X as X``): they lived in this
# module, and callers import them from here.
from benchmark.expert.analysis import PAPER_TABLE4, Report, analyse
from benchmark.expert.analysis import bootstrap_mean_ci as bootstrap_mean_ci
from benchmark.expert.analysis import holm as holm
from benchmark.expert.analysis import paired_tests as paired_tests
from benchmark.expert.ratings import SCORE_MAX as SCORE_MAX
from benchmark.expert.ratings import SCORE_MIN as SCORE_MIN
from benchmark.expert.ratings import DuplicateConflictError as DuplicateConflictError
from benchmark.expert.ratings import ForeignPackError as ForeignPackError
from benchmark.expert.ratings import MissingRatingsError as MissingRatingsError
from benchmark.expert.ratings import Pack as Pack
from benchmark.expert.ratings import RatingRow as RatingRow
from benchmark.expert.ratings import RatingsError as RatingsError
from benchmark.expert.ratings import RatingsFormatError as RatingsFormatError
from benchmark.expert.ratings import ReaderConflictError as ReaderConflictError
from benchmark.expert.ratings import ScoreRangeError as ScoreRangeError
from benchmark.expert.ratings import UnknownIdError as UnknownIdError
from benchmark.expert.ratings import WrongKeyError as WrongKeyError
from benchmark.expert.ratings import load_pack, validate
from benchmark.expert.ratings import read_ratings_file as read_ratings_file

# ----------------------------------------------------------------------------- output


def _paper_name(method: str) -> str | None:
    """The paper's row for a method label (``li`` -> ``LI``), if it has one."""
    base = method.split(" [", 1)[0].strip().lower()
    for name in PAPER_TABLE4:
        if name.lower() == base:
            return name
    return None


def _md(text: Any) -> str:
    """Text for a markdown table cell: ``|`` escaped, line breaks as spaces (a reader id or
    label holding them must not split or end the row)."""
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").split())


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
        cells = [_md(m)] + [f"{_f(report.table[m][c]['mean'])} "
                            f"[{_f(report.table[m][c]['ci_low'])}, "
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
            lines.append(f"| {c} | {_md(o['a'])} | {_md(o['b'])} | {o['mean_diff']:+.2f} | "
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
        lines.append(f"| {_md(reader)} | {info[reader]['reading_list']} | "
                     f"{_md(info[reader]['experience_years'] or '?')} | {e['n_repeats']} | "
                     + " | ".join(cells) + f" | {flag} |")
    if report.notes:
        lines += ["", "Notes:", ""] + [f"- {_md(n)}" for n in report.notes]
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
