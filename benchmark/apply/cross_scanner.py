"""Cross-scanner table: the same methods scored on the same patients scanned on several
scanners (``artifactgsi simulate --scanner NAME``, docs/apply.md, "Other scanners").

Layout read: ``ROOT/<scanner>/results/<method>/`` run folders (``make scanners`` writes it).
Rows are methods; for each scanner the table shows a metric's mean against one reference
(the ideal image by default: the true anatomy, the same on every scanner) and the method's
gain over the uncorrected image (``identity``) on that scanner, which says whether a method
still helps on a scanner it was not trained on. Every run is verified as ``marbench compare``
verifies it; an inconsistent run is refused by name.

Registered in the ``marbench.commands`` entry-point group as ``marbench scanners``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import typer

from ..errors import MARBenchError

#: The scanner the toolkit's datasets come from (listed first when present).
TRAINING_SCANNER = "gsi-hd"


@dataclass
class ScannerRuns:
    """Verified results of ``ROOT``: ``runs[scanner][method]`` and the unverified runs."""

    scanners: list[str]
    methods: list[str]
    runs: dict[str, dict[str, object]]
    unverified: list[str] = field(default_factory=list)


def load_scanner_runs(root: Path) -> ScannerRuns:
    """Read and verify every ``ROOT/<scanner>/results/<method>/results.json``."""
    from ..results import Results, verify_results

    root = Path(root)
    if not root.is_dir():
        raise MARBenchError(f"{root}: no such folder (expected ROOT/<scanner>/results/<method>/)")
    runs: dict[str, dict[str, object]] = {}
    unverified: list[str] = []
    for f in sorted(root.glob("*/results/*/results.json")):
        scanner, method = f.parents[2].name, f.parent.name
        r = Results.load(f)
        check = verify_results(r, f.parent)
        if check.problems:
            raise MARBenchError(f"{f}: the results file is inconsistent:\n  "
                                + "\n  ".join(check.problems))
        if not check.predictions_checked:
            unverified.append(f"{f}: {check.note}")
        runs.setdefault(scanner, {})[method] = r
    if not runs:
        raise MARBenchError(f"{root}: no results (expected ROOT/<scanner>/results/<method>/"
                            "results.json; `make scanners` writes them)")
    scanners = sorted(runs, key=lambda s: (s != TRAINING_SCANNER, s))
    order = ("identity", "li", "nmar")
    methods = sorted({m for by in runs.values() for m in by},
                     key=lambda m: (order.index(m) if m in order else len(order), m))
    return ScannerRuns(scanners=scanners, methods=methods, runs=runs, unverified=unverified)


def _mean(results: object, comparison: str, metric: str) -> float | None:
    comp = results.comparisons.get(comparison)  # type: ignore[attr-defined]
    if comp is None or not comp.available or metric not in comp.summary:
        return None
    return comp.summary[metric].mean


def scanner_table(sr: ScannerRuns, metric: str = "psnr", against: str = "ideal"
                  ) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    """``(headers, rows)``: per scanner the method's mean ``metric`` against ``against``
    (``ideal`` or ``gsi``) and its gain over ``identity`` on that scanner (``None`` where
    missing). Gains are differences of means over the same slices."""
    comparison = f"method_vs_{against}"
    headers = [h for s in sr.scanners for h in (s, f"{s} gain")]
    rows = []
    for m in sr.methods:
        cells: list[float | None] = []
        for s in sr.scanners:
            r, ident = sr.runs[s].get(m), sr.runs[s].get("identity")
            v = _mean(r, comparison, metric) if r is not None else None
            base = _mean(ident, comparison, metric) if ident is not None else None
            cells += [v, v - base if v is not None and base is not None else None]
        rows.append((m, cells))
    return headers, rows


def _texts(cells: list[float | None], headers: list[str]) -> list[str]:
    """Cell texts; a gain gets the digits of its metric (4 below 1, as SSIM; else 2)."""
    out, digits = [], 2
    for v, h in zip(cells, headers, strict=True):
        gain = h.endswith(" gain")
        if not gain:
            digits = 4 if v is not None and abs(v) < 1 else 2
        if v is None or math.isnan(v):
            out.append("n/a")
        else:
            out.append(f"{v:+.{digits}f}" if gain else f"{v:.{digits}f}")
    return out


def markdown(headers: list[str], rows: list[tuple[str, list[float | None]]]) -> str:
    """The table as GitHub markdown."""
    lines = ["| method | " + " | ".join(headers) + " |", "|" + "---|" * (len(headers) + 1)]
    for name, cells in rows:
        lines.append(f"| {name} | " + " | ".join(_texts(cells, headers)) + " |")
    return "\n".join(lines) + "\n"


def scanners(
    root: Path = typer.Argument(..., help="folder of ROOT/<scanner>/results/<method>/ runs"),
    metric: str = typer.Option("psnr", help="psnr, ssim, lpips, ..."),
    against: str = typer.Option("ideal", help="reference: ideal (the true anatomy) or gsi"),
    out: Path = typer.Option(None, "--markdown", help="also write the table to this file"),
) -> None:
    """Cross-scanner table: each method on each scanner profile, and its gain over the
    uncorrected image there."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from artifactgsi.cli_common import cli_errors, fail
    from artifactgsi.fileio import write_text_atomic

    if against not in ("ideal", "gsi"):
        fail(f"--against {against!r}: choose ideal or gsi")
    with cli_errors(MARBenchError, ValueError, path=root):
        sr = load_scanner_runs(root)
    headers, rows = scanner_table(sr, metric, against)
    t = Table(title=f"{metric} against {against}, per scanner profile (gain: over identity "
                    f"on the same scanner)")
    t.add_column("method", no_wrap=True)
    for h in headers:
        t.add_column(escape(h), justify="right")
    for name, cells in rows:
        t.add_row(escape(name), *_texts(cells, headers))
    Console().print(t)
    if out is not None:
        write_text_atomic(out, markdown(headers, rows))
    for u in sr.unverified:
        typer.echo(f"unverified: {u}", err=True)
