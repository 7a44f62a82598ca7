"""Comparison tables of several runs (``marbench compare``): the paper's Table 3 layout, built
from the metric declarations each ``results.json`` records (no hand list of metrics), as
markdown or as cells for a rich table. Imports no torch."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel

from .metrics.registry import GROUPS, METRICS
from .results import GSI_VS_IDEAL, METHOD_VS_IDEAL, MetricDefinition, Results

__all__ = ["ComparisonTable", "TableCell", "comparison_table", "format_value",
           "markdown_table", "table_columns"]


def table_columns(results: Results) -> list[tuple[str, str, MetricDefinition]]:
    """The metrics a comparison table shows, from the recorded declarations: ``(group,
    metric, definition)`` with ``table`` set, per-slice metrics only (segmentation and the
    lesion study have their own tables), groups in :data:`GROUPS` order then plug-in groups,
    each in recorded order."""
    order = {g: i for i, g in enumerate(GROUPS)}
    cols = []
    for name, d in results.metrics.items():
        r = d.resolved(name)
        spec = METRICS.get(name)
        if spec is not None and not spec.per_slice:  # study-level: their own tables
            continue
        if r.table and r.group != "segmentation":
            cols.append((str(r.group), name, r))
    cols.sort(key=lambda c: order.get(c[0], len(GROUPS)))
    return cols


class TableCell(BaseModel):
    """One number of the comparison table (``None``: not available)."""

    mean: float | None
    std: float | None = None
    best: bool = False
    note: str | None = None  # shown instead of a number (e.g. "—" for GSI against itself)


class ComparisonTable(BaseModel):
    """Rows = methods (plus GSI against ideal where available), columns = metrics."""

    headers: list[str]
    higher_is_better: list[bool]
    groups: list[str]
    rows: list[tuple[str, list[TableCell]]]
    clinical_reference: str
    warnings: list[str]


def _cell(results: Results, comparison: str, metric: str) -> TableCell:
    comp = results.comparisons.get(comparison)
    if comp is None or not comp.available or metric not in comp.summary:
        return TableCell(mean=None)
    s = comp.summary[metric]
    return TableCell(mean=s.mean, std=s.std)


def comparison_table(runs: list[tuple[str, Results]]) -> ComparisonTable:
    """Paper Table 3 layout from several results: one row per method, then a ``GSI`` row with
    GSI scored against the ideal image (when the data has one), so a reader sees whether a
    method beats GSI. Clinical columns are scored against the ideal image when every run has
    it, else against GSI. The best finite mean of each column is flagged.

    Args:
        runs: (label, results) pairs; the label is usually the file name.
    """
    if not runs:
        raise ValueError("comparison_table: no results given")
    warnings: list[str] = []
    first_label, first = runs[0]
    for label, r in runs[1:]:
        for what, a, b in (("protocol", first.protocol.version, r.protocol.version),
                           ("dataset manifest", first.dataset.manifest_sha256,
                            r.dataset.manifest_sha256),
                           ("split", first.dataset.split, r.dataset.split),
                           ("scored slices", first.dataset.n_slices_scored,
                            r.dataset.n_slices_scored)):
            if a != b:
                warnings.append(f"{label}: {what} {b!r} differs from {first_label}'s {a!r}; "
                                "these numbers are not comparable")
    has_ideal = all(r.comparisons.get(METHOD_VS_IDEAL) is not None
                    and r.comparisons[METHOD_VS_IDEAL].available for _, r in runs)
    any_ideal = any(r.comparisons.get(METHOD_VS_IDEAL) is not None
                    and r.comparisons[METHOD_VS_IDEAL].available for _, r in runs)
    clin_ref = "ideal" if has_ideal else "gsi"
    headers, hib, groups, keys = [], [], [], []
    seen: set[str] = set()
    for _, r in runs:  # every run's metrics (a plug-in metric may be in some runs only)
        for group, metric, d in table_columns(r):
            if metric in seen:
                continue
            seen.add(metric)
            if group == "image":   # the paper's columns: against GSI, then the ideal image
                refs = ["gsi"] + (["ideal"] if any_ideal else [])
            else:                  # every other group: one reference (ideal where all have it)
                refs = [clin_ref]
            for ref in refs:
                headers.append(str(d.label))
                where = ref.upper() if ref == "gsi" else ref
                groups.append(f"vs {where}" if group == "image" else f"{group} vs {where}")
                hib.append(d.higher_is_better)
                keys.append((f"method_vs_{ref}", metric))
    # image columns against GSI, then against the ideal image, then the other groups
    rank = [0 if g == "vs GSI" else 1 if g == "vs ideal" else 2 for g in groups]
    order = sorted(range(len(keys)), key=lambda j: rank[j])
    headers, hib, groups, keys = ([x[j] for j in order] for x in (headers, hib, groups, keys))

    names = [r.method.name + (f" v{r.method.version}" if r.method.version else "")
             for _, r in runs]
    rows: list[tuple[str, list[TableCell]]] = []
    for (label, r), name in zip(runs, names, strict=True):
        if names.count(name) > 1:  # the same method twice: say which run
            p = Path(label)
            name += f" [{p.parent.name if p.name == 'results.json' else p.name}]"
        rows.append((name, [_cell(r, comp, m) for comp, m in keys]))
    # GSI itself against the ideal image (from the first run that has it).
    gsi_run = next((r for _, r in runs if r.comparisons.get(GSI_VS_IDEAL) is not None
                    and r.comparisons[GSI_VS_IDEAL].available), None)
    if gsi_run is not None:
        cells = []
        for comp, m in keys:
            ref = comp.rsplit("_vs_", 1)[1]
            cells.append(_cell(gsi_run, GSI_VS_IDEAL, m) if ref == "ideal"
                         else TableCell(mean=None, note="—"))
        rows.append(("GSI (reference)", cells))
    # Flag the best finite mean per column.
    for j, higher in enumerate(hib):
        vals = [row[1][j].mean for row in rows]
        finite = [v for v in vals if v is not None and math.isfinite(v)]
        if len(finite) < 2:
            continue
        best = max(finite) if higher else min(finite)
        for row in rows:
            if row[1][j].mean == best:
                row[1][j].best = True
    return ComparisonTable(headers=headers, higher_is_better=hib, groups=groups, rows=rows,
                           clinical_reference=clin_ref, warnings=warnings)


def format_value(cell: TableCell, with_std: bool = False) -> str:
    """``"31.42 ± 2.10"``, ``"inf"`` or ``"n/a"``; 4 decimals for values below 1."""
    if cell.note is not None:
        return cell.note
    if cell.mean is None or math.isnan(cell.mean):
        return "n/a"
    if math.isinf(cell.mean):
        return "inf" if cell.mean > 0 else "-inf"
    digits = 4 if abs(cell.mean) < 1 else 2
    text = f"{cell.mean:.{digits}f}"
    if with_std and cell.std is not None and math.isfinite(cell.std):
        text += f" ± {cell.std:.{digits}f}"
    return text


def _md_escape(text: str) -> str:
    """Text safe inside a markdown table cell (``|`` would start a new column)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(table: ComparisonTable, with_std: bool = False) -> str:
    """The table as GitHub markdown; the best value of each column in bold."""
    arrows = ["↑" if h else "↓" for h in table.higher_is_better]
    head = ["method"] + [f"{h} {a} ({g})" for h, a, g in zip(table.headers, arrows, table.groups,
                                                             strict=True)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cells in table.rows:
        texts = [(f"**{format_value(c, with_std)}**" if c.best else format_value(c, with_std))
                 for c in cells]
        lines.append("| " + " | ".join([_md_escape(name), *texts]) + " |")
    return "\n".join(lines) + "\n"
