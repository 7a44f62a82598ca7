"""The paper's Table 2 layout for segmentation scores: methods as rows, the five classes
(metal, left / right pelvis, left / right femur) and their mean as columns, overall and per
implant type, optionally beside the paper's own numbers.

Inputs are results of ``marbench run`` with a segmenter, or plain dicts. Scores are always
recomputed from the per-slice intersection / union counts
(:func:`benchmark.metrics.segmentation.seg_summary`), so a table never trusts a stored summary.

Where the counts are found in a :class:`benchmark.results.Results`: in
``per_slice[i].segmentation[image]`` for ``image`` = ``method`` (the method's row), ``gsi``
(the GSI reference row), ``ideal`` (the ideal-image row), holding the ``seg_inter.<class>`` /
``seg_union.<class>`` keys (or, failing that, in a ``per_slice[i].scores`` comparison whose
key starts with ``method_`` / ``gsi_`` / ``ideal_``).

A dict may be a results file's JSON, or a summary: ``{"iou.metal": ..., ..., "miou": ...}``,
optionally with ``"per_implant": {implant_type: {same keys}}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..metrics.segmentation import (
    CLASS_KEYS,
    CLASS_TITLES,
    INTER_PREFIX,
    SUMMARY_KEYS,
    seg_summary,
    seg_summary_by,
)
from ..results import Results

#: The paper's Table 2 (IoU per class: metal, L pelvis, R pelvis, L femur, R femur).
PAPER_TABLE2: dict[str, tuple[float, float, float, float, float]] = {
    "GSI": (0.8944, 0.9273, 0.9115, 0.9442, 0.9302),
    "LI": (0.0998, 0.7652, 0.6513, 0.6863, 0.5584),
    "LGA": (0.8582, 0.8999, 0.9059, 0.9232, 0.9013),
}
#: The paper's information-sufficiency check: mIoU of a segmenter trained and tested on ...
PAPER_SUFFICIENCY: dict[str, float] = {"ordinary": 0.9213, "gsi": 0.9265}


def paper_summary(name: str) -> dict[str, float]:
    """The paper's Table 2 row ``name`` (``"GSI"``, ``"LI"``, ``"LGA"``) as a summary dict,
    ``miou`` = mean of the five classes."""
    vals = PAPER_TABLE2[name]
    out = {f"iou.{k}": v for k, v in zip(CLASS_KEYS, vals, strict=True)}
    out["miou"] = math.fsum(vals) / len(vals)
    return out


@dataclass
class SegRow:
    """One table row: its label, the overall scores and the scores per implant type."""

    label: str
    overall: dict[str, float]
    per_implant: dict[str, dict[str, float]] = field(default_factory=dict)
    n_slices: int | None = None


def _rows_of(results: Results, scored: str) -> tuple[list[dict[str, float]], list[str]]:
    """Per-slice count rows (and implant types) of ``scored`` (method / gsi / ideal)."""
    rows, implants = [], []
    for s in results.per_slice:
        seg = getattr(s, "segmentation", None) or {}
        if scored in seg:
            rows.append(seg[scored])
            implants.append(s.implant_type)
            continue
        for key, vals in s.scores.items():  # counts stored as a comparison's scores
            if key.split("_vs_", 1)[0] == scored and f"{INTER_PREFIX}metal" in vals:
                rows.append(vals)
                implants.append(s.implant_type)
                break
    return rows, implants


def _summary_row(label: str, rows: list[dict[str, float]], implants: list[str]) -> SegRow:
    return SegRow(label, seg_summary(rows), seg_summary_by(rows, implants), len(rows))


def _as_results(obj: Any) -> Results | None:
    if isinstance(obj, Results):
        return obj
    if isinstance(obj, Mapping) and "per_slice" in obj:
        return Results.model_validate(dict(obj))
    return None


def collect_rows(runs: Sequence[tuple[str, Results | Mapping[str, Any]]]
                 ) -> tuple[list[SegRow], list[SegRow], list[str]]:
    """(method rows, reference rows, warnings) from ``runs``.

    Reference rows (GSI, ideal) come from the first run that has them; the identity method
    is the ordinary image's row."""
    methods: list[SegRow] = []
    refs: dict[str, SegRow] = {}
    warnings: list[str] = []
    for label, obj in runs:
        res = _as_results(obj)
        if res is None:
            if not isinstance(obj, Mapping) or "miou" not in obj:
                from .model import SegmentationDataError

                raise SegmentationDataError(f"{label}: neither a results file nor a "
                                            "segmentation summary (a dict with 'miou' and "
                                            "'iou.<class>')")
            overall = {k: float(obj.get(k, math.nan)) for k in SUMMARY_KEYS}
            per = {str(t): {k: float(v.get(k, math.nan)) for k in SUMMARY_KEYS}
                   for t, v in dict(obj.get("per_implant", {})).items()}
            methods.append(SegRow(label, overall, per, obj.get("n_slices")))
            continue
        name = res.method.name
        if name == "identity":
            name = "identity (ordinary)"
        rows, implants = _rows_of(res, "method")
        if rows:
            methods.append(_summary_row(name, rows, implants))
        else:
            warnings.append(f"{label}: no segmentation scores (run with a segmenter and a "
                            "dataset with labels)")
        for scored, title in (("gsi", "GSI (reference)"), ("ideal", "ideal (reference)")):
            if scored not in refs:
                r, imp = _rows_of(res, scored)
                if r:
                    refs[scored] = _summary_row(title, r, imp)
    return methods, [refs[k] for k in ("gsi", "ideal") if k in refs], warnings


def _fmt(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "—"
    return f"{v:.4f}"


def _table_lines(rows: Sequence[tuple[str, Mapping[str, float]]]) -> list[str]:
    head = ["method", *CLASS_TITLES, "mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for label, s in rows:
        lines.append("| " + " | ".join([label, *(_fmt(s.get(k)) for k in SUMMARY_KEYS)]) + " |")
    return lines


def _blocks(runs: Sequence[tuple[str, Results | Mapping[str, Any]]], paper: bool
            ) -> tuple[list[tuple[str, list[tuple[str, Mapping[str, float]]]]], list[str]]:
    methods, refs, warnings = collect_rows(runs)
    all_rows = methods + refs
    if not all_rows:
        from .model import SegmentationDataError

        raise SegmentationDataError("segmentation table: none of the runs has segmentation "
                                    "scores")
    main: list[tuple[str, Mapping[str, float]]] = [(r.label, r.overall) for r in all_rows]
    if paper:
        main += [(f"paper: {n}", paper_summary(n)) for n in PAPER_TABLE2]
    blocks = [("all slices", main)]
    implants = sorted({t for r in all_rows for t in r.per_implant})
    for t in implants:
        blocks.append((f"implant: {t}", [(r.label, r.per_implant[t]) for r in all_rows
                                         if t in r.per_implant]))
    return blocks, warnings


def segmentation_table(runs: Sequence[tuple[str, Results | Mapping[str, Any]]],
                       paper: bool = False) -> str:
    """Markdown: Table 2 layout (methods as rows; metal, L / R pelvis, L / R femur and mIoU as
    columns) over all slices, then one table per implant type.

    Args:
        runs: (label, results) pairs: :class:`Results`, a results JSON dict, or a summary dict.
        paper: add the paper's Table 2 rows (GSI, LI, LGA) to the overall table.

    A class that never occurs in a group (e.g. the pelvis on spinal slices) shows "—" and
    is left out of that row's mIoU.
    """
    blocks, warnings = _blocks(runs, paper)
    out: list[str] = []
    for title, rows in blocks:
        out += [f"**{title}**", "", *_table_lines(rows), ""]
    out += [f"> warning: {w}" for w in warnings]
    return "\n".join(out).rstrip() + "\n"


def segmentation_rich(runs: Sequence[tuple[str, Results | Mapping[str, Any]]],
                      paper: bool = False) -> Any:
    """The same tables as :func:`segmentation_table`, as a ``rich`` renderable."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    blocks, warnings = _blocks(runs, paper)
    parts: list[Any] = []
    for title, rows in blocks:
        t = Table(title=f"segmentation IoU ({escape(title)})", title_justify="left")
        t.add_column("method", no_wrap=True)
        for h in (*CLASS_TITLES, "mIoU"):
            t.add_column(h, justify="right")
        for label, s in rows:
            style = "dim" if label.startswith("paper:") else None
            t.add_row(escape(label), *(_fmt(s.get(k)) for k in SUMMARY_KEYS), style=style)
        parts.append(t)
    parts += [Text(f"warning: {w}", style="yellow") for w in warnings]
    return Group(*parts)


def sufficiency_table(gsi: Mapping[str, float], ordinary: Mapping[str, float]) -> str:
    """Markdown: the GSI-input and ordinary-input segmenters, each on its own modality of the
    test split, per class and mIoU, beside the paper's mIoU (0.9265 / 0.9213)."""
    head = ["segmenter (trained and tested on)", *CLASS_TITLES, "mIoU", "paper mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for name, s in (("GSI", gsi), ("ordinary", ordinary)):
        lines.append("| " + " | ".join([name, *(_fmt(s.get(k)) for k in SUMMARY_KEYS),
                                        f"{PAPER_SUFFICIENCY[name.lower()]:.4f}"]) + " |")
    d = ordinary.get("miou", math.nan) - gsi.get("miou", math.nan)
    paper_d = PAPER_SUFFICIENCY["ordinary"] - PAPER_SUFFICIENCY["gsi"]
    lines.append("")
    lines.append(f"ordinary - GSI mIoU: {d:+.4f} (paper: {paper_d:+.4f})")
    return "\n".join(lines) + "\n"
