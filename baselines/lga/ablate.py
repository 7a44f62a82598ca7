"""The paper's Table 1 ablation of LGA: train the five rows, score them, print Table 1.

``marbench ablate`` calls :func:`run_ablation`::

    run_ablation("lga-cpu", "data/built", out=Path("results/ablation"))

Rows, in the paper's order (CVPR 2025, Table 1; configs ``baselines/lga/configs/table1-*``):

====================  ===================================================================
Baseline              2D VAE (1 slice in), one decoder, plain U-Net, no L_inv
+ARVAE                5-slice encoder, centre-slice augmentation, D_n + D_g
+ARVAE+Loss           ... with the information-invariant loss L_inv (beta > 0)
+ARVAE+AN             ... with the full alignment net (mask merging, implant transformer)
Ours (full)           everything (= lga-paper)
====================  ===================================================================

The ``table1-*`` YAMLs are the paper's scale (``base: lga-paper``). Each row here is the
*base* config (``--config``, e.g. ``lga-cpu``) with only that row's ablation switches laid on
top (:func:`row_switches`): the switch keys :data:`ABLATION_KEYS` taken from the row config,
plus any other key in which the row config differs from ``lga-paper``. With
``--config lga-paper`` the rows are exactly the shipped ``table1-*`` configs.

Each row is trained with :func:`baselines.lga.train.train_lga` into ``OUT/<row>/run`` and
scored with :func:`benchmark.run.run_benchmark` on the test split into ``OUT/<row>/results``.
The summary goes to ``OUT/ablation.json`` and ``OUT/ablation.md``.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines.errors import OptionError
from benchmark.metrics.registry import METRICS as METRIC_REGISTRY
from benchmark.results import METHOD_VS_GSI, METHOD_VS_IDEAL, Results, atomic_write_text

#: Config of the paper's full model; the ``table1-*`` rows are this plus their switches.
PAPER_CONFIG = "lga-paper"

#: The LGAConfig keys Table 1 switches on and off (always taken from the row config).
ABLATION_KEYS = ("neighbour_slices", "augment", "dual_decoder", "align_mask",
                 "align_transformer", "beta")

#: Image metrics of Table 1 (titles from the metric registry), with the number of decimals
#: the paper prints.
METRICS: tuple[tuple[str, str, int], ...] = tuple(
    (k, METRIC_REGISTRY[k].title, d) for k, d in (("psnr", 2), ("ssim", 4), ("lpips", 4)))


@dataclass(frozen=True)
class Table1Row:
    """One row of Table 1: key (folder name), label, shipped config, the paper's numbers
    (PSNR dB / SSIM / LPIPS against GSI, from the paper's Table 1)."""

    key: str
    label: str
    config: str
    paper: tuple[float, float, float]


#: Table 1 in the paper's order.
TABLE1: tuple[Table1Row, ...] = (
    Table1Row("baseline", "Baseline", "table1-baseline", (32.81, 0.9470, 0.0326)),
    Table1Row("arvae", "+ARVAE", "table1-arvae", (33.13, 0.9568, 0.0346)),
    Table1Row("arvae-loss", "+ARVAE+Loss", "table1-arvae-loss", (33.38, 0.9579, 0.0326)),
    Table1Row("arvae-an", "+ARVAE+AN", "table1-arvae-an", (37.02, 0.9687, 0.0215)),
    Table1Row("full", "Ours (full)", "table1-full", (37.91, 0.9690, 0.0198)),
)


@dataclass
class RowResult:
    """What one trained and scored row gave.

    ``scores[comparison][metric]`` = (mean, std) over the scored slices, for ``vs_gsi`` and
    (simulated data) ``vs_ideal``; a metric that could not be computed is absent and its
    reason is in ``missing``. ``trained_steps``: the step of the weights kept per stage (the
    best validation checkpoint, as the model's ``config.json`` records it).
    """

    row: Table1Row
    switches: dict[str, Any]
    config: dict[str, Any]
    model_dir: Path
    results_path: Path
    scores: dict[str, dict[str, tuple[float, float]]]
    trained_steps: dict[str, int]
    train_s: float
    score_s: float
    missing: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | str:  # JSON has no inf / nan
            return v if math.isfinite(v) else str(v)

        return {"key": self.row.key, "label": self.row.label, "table1_config": self.row.config,
                "switches": self.switches, "config": self.config,
                "model_dir": str(self.model_dir), "results": str(self.results_path),
                "scores": {c: {m: {"mean": num(a), "std": num(s)} for m, (a, s) in d.items()}
                           for c, d in self.scores.items()},
                "missing": self.missing,
                "paper_vs_gsi": dict(zip(("psnr", "ssim", "lpips"), self.row.paper,
                                         strict=True)),
                "trained_steps": self.trained_steps, "train_s": round(self.train_s, 2),
                "score_s": round(self.score_s, 2)}


def select_rows(names: str | list[str] | None) -> list[Table1Row]:
    """Rows by key (``baseline``), label or config name (``table1-arvae``), in Table 1 order;
    ``None`` gives all five. A comma-separated string is split."""
    if names is None:
        return list(TABLE1)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    wanted = set()
    for n in names:
        n = n.strip()
        hit = [r for r in TABLE1 if n.lower() in (r.key, r.label.lower(), r.config)]
        if not hit:
            known = ", ".join(r.key for r in TABLE1)
            raise OptionError(f"--rows: unknown row {n!r}; choose from {known} "
                              "(or the table1-* config names)")
        wanted.add(hit[0].key)
    return [r for r in TABLE1 if r.key in wanted]


def _lga(module: str) -> Any:
    # Imported when first needed: reading the rows must not import torch.
    return importlib.import_module(f"baselines.lga.{module}")


def row_switches(row: Table1Row) -> dict[str, Any]:
    """The ablation switches of ``row``: :data:`ABLATION_KEYS` from its shipped config, plus
    every key in which that config differs from ``lga-paper`` (JSON-ready values)."""
    cfg = _lga("config")
    full = cfg.load_config(row.config).to_dict()
    paper = cfg.load_config(PAPER_CONFIG).to_dict()
    keys = [k for k in full if k in ABLATION_KEYS or full[k] != paper[k]]
    return {k: full[k] for k in keys}


def row_config(base: str | Path | dict[str, Any], row: Table1Row,
               max_steps: int | None = None) -> Any:
    """``base`` (config name, YAML path or dict) with ``row``'s switches laid on top, and
    ``max_steps`` (a cap on optimiser steps per stage) when given: an ``LGAConfig``."""
    cfg = _lga("config")
    overrides = row_switches(row)
    if max_steps is not None:
        overrides["max_steps"] = int(max_steps)
    return cfg.load_config(base, **overrides)


def _scores(results: Results) -> tuple[dict[str, dict[str, tuple[float, float]]],
                                       dict[str, str]]:
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    missing: dict[str, str] = {}
    for key, name in ((METHOD_VS_GSI, "vs_gsi"), (METHOD_VS_IDEAL, "vs_ideal")):
        comp = results.comparisons.get(key)
        if comp is None or not comp.available:
            continue
        scores[name] = {m: (comp.summary[m].mean, comp.summary[m].std)
                        for m, _, _ in METRICS if m in comp.summary}
        for m, why in comp.missing.items():
            if any(m == k for k, _, _ in METRICS):
                missing[f"{name}.{m}"] = why
    return scores, missing


def run_ablation(config: str | Path | dict[str, Any], data: str | Path, out: Path | str,
                 rows: str | list[str] | None = None, max_steps: int | None = None, *,
                 resume: bool = False, split: str = "test", device: str = "cpu",
                 lpips: Any = "auto", clinical: bool = False, figure: bool = False,
                 limit: int | None = None, verbose: bool = True,
                 console: Any = None) -> list[RowResult]:
    """Train and score the Table 1 rows of LGA at the scale of ``config``.

    Args:
        config: base config (``"lga-cpu"``, ``"lga-paper"``, a YAML path or a dict); each row
            is this plus the row's ablation switches (:func:`row_config`).
        data: built dataset folder or Hub repo id (trained on ``pairs/train``).
        out: output folder: ``OUT/<row>/run`` (training), ``OUT/<row>/results`` (scores),
            ``OUT/ablation.json``, ``OUT/ablation.md``.
        rows: subset of rows (see :func:`select_rows`); default all five.
        max_steps: cap on optimiser steps per stage (smoke runs).
        resume: continue rows whose run folder exists (finished stages are skipped);
            otherwise an existing run folder is an error.
        split: split to score; device: where scoring runs (training picks CUDA if present).
        lpips: as :func:`benchmark.run.run_benchmark` (``None`` skips LPIPS).
        clinical, figure, limit: passed to ``run_benchmark``.
        verbose: print progress and the final table on ``console``.

    Returns:
        One :class:`RowResult` per row, in Table 1 order.
    """
    from rich.console import Console

    from benchmark.run import run_benchmark

    console = console or Console()
    out = Path(out)
    chosen = select_rows(rows)
    # Resolve every config before training anything, so a bad key fails in seconds.
    configs = {r.key: row_config(config, r, max_steps) for r in chosen}
    train = _lga("train")
    results: list[RowResult] = []
    for r in chosen:
        cfg = configs[r.key]
        run_dir = out / r.key / "run"
        if verbose:
            console.rule(f"[bold]{r.label}[/] ({r.config} switches on {config})")
        t0 = time.perf_counter()
        model_dir = Path(train.train_lga(cfg, data, run_dir,
                                         resume=resume and (run_dir / "config.json").is_file()))
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = run_benchmark("baselines.lga:LGA", data, split=split, out=out / r.key / "results",
                            device=device, lpips=lpips, clinical=clinical, figure=figure,
                            limit=limit, options={"weights": str(model_dir)},
                            verbose=False, console=console)
        score_s = time.perf_counter() - t0
        meta = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        scores, missing = _scores(res)
        results.append(RowResult(row=r, switches=row_switches(r), config=cfg.to_dict(),
                                 model_dir=model_dir,
                                 results_path=out / r.key / "results" / "results.json",
                                 scores=scores, trained_steps=dict(meta.get("trained", {})),
                                 train_s=train_s, score_s=score_s, missing=missing))
    write_summary(results, out, config=config, data=data, split=split, max_steps=max_steps)
    if verbose:
        print_table(results, console)
        console.print(f"summary: {out / 'ablation.json'}, {out / 'ablation.md'}")
    return results


# ----------------------------------------------------------------------------- the table


def _fmt(v: tuple[float, float] | float | None, digits: int) -> str:
    if v is None:
        return "n/a"
    x = v[0] if isinstance(v, tuple) else v
    if math.isnan(x):
        return "n/a"
    return f"{x:.{digits}f}" if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def table_rows(results: list[RowResult]) -> tuple[list[str], list[list[str]]]:
    """(header, rows of cells) of Table 1: row label, measured PSNR / SSIM / LPIPS vs GSI,
    vs ideal (only when some row has it), then the paper's numbers vs GSI."""
    ideal = any("vs_ideal" in r.scores for r in results)
    comps = ["vs_gsi", *(["vs_ideal"] if ideal else [])]
    header = ["row"]
    for c in comps:
        header += [f"{label} ({c.replace('_', ' ').replace('gsi', 'GSI')})"
                   for _, label, _ in METRICS]
    header += [f"{label} (paper, vs GSI)" for _, label, _ in METRICS]
    rows = []
    for r in results:
        cells = [r.row.label]
        for c in comps:
            cells += [_fmt(r.scores.get(c, {}).get(m), d) for m, _, d in METRICS]
        cells += [_fmt(p, d) for p, (_, _, d) in zip(r.row.paper, METRICS, strict=True)]
        rows.append(cells)
    return header, rows


def markdown(results: list[RowResult]) -> str:
    """Table 1 as GitHub markdown."""
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def print_table(results: list[RowResult], console: Any) -> None:
    """Table 1 with rich, within 80 columns: measured PSNR / SSIM / LPIPS vs GSI (and vs
    ideal), each row followed by a dim ``paper`` line with the paper's numbers vs GSI."""
    from rich import box
    from rich.table import Table

    comps = ["vs_gsi", *(["vs_ideal"] if any("vs_ideal" in r.scores for r in results)
                         else [])]
    t = Table(title="LGA Table 1 ablation (PSNR dB ↑, SSIM ↑, LPIPS ↓)",
              box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    t.add_column("row", no_wrap=True)
    for c in comps:
        for _, label, _ in METRICS:
            t.add_column(f"{label}\n{c.replace('_', ' ').replace('gsi', 'GSI')}",
                         justify="right", no_wrap=True)
    for r in results:
        cells = [r.row.label]
        for c in comps:
            cells += [_fmt(r.scores.get(c, {}).get(m), d) for m, _, d in METRICS]
        t.add_row(*cells)
        paper = [_fmt(p, d) for p, (_, _, d) in zip(r.row.paper, METRICS, strict=True)]
        t.add_row("  paper", *paper, *[""] * (len(cells) - 1 - len(paper)), style="dim")
    console.print(t)
    reasons: dict[str, set[str]] = {}  # one line per metric and reason, not per row
    for r in results:
        for k, why in r.missing.items():
            reasons.setdefault(why, set()).add(k.split(".")[-1].upper())
    for why, metrics in reasons.items():
        console.print(f"[yellow]{', '.join(sorted(metrics))} missing:[/] {why}")


def write_summary(results: list[RowResult], out: Path, *, config: Any, data: Any, split: str,
                  max_steps: int | None) -> tuple[Path, Path]:
    """``OUT/ablation.json`` (every row's switches, config, scores, paper numbers, timing)
    and ``OUT/ablation.md`` (the table); returns both paths."""
    base = config if isinstance(config, str) else (str(config) if isinstance(config, Path)
                                                   else "dict")
    doc = {"format": "marbench-ablation/1", "table": "CVPR 2025 Table 1",
           "base_config": base, "data": str(data), "split": split, "max_steps": max_steps,
           "rows": [r.to_dict() for r in results]}
    js = atomic_write_text(out / "ablation.json", json.dumps(doc, indent=1) + "\n")
    note = (f"LGA Table 1 ablation: rows = `{base}` + each row's switches; split `{split}`"
            + (f"; at most {max_steps} steps per stage (smoke run)" if max_steps else "")
            + ". Paper numbers: CVPR 2025 Table 1 (512 px, full training).\n\n")
    md = atomic_write_text(out / "ablation.md", note + markdown(results))
    return js, md
