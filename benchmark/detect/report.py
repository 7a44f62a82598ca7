"""Tables and the figure of a detectability study (``detect.json`` -> markdown, PNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _ci(v: Any, ci: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if not ci:
        return _f(v, digits)
    return f"{_f(v, digits)} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _p(p: Any) -> str:
    if p is None:
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def markdown_report(report: dict[str, Any]) -> str:
    """The study as markdown: AUC by distance band per row, hallucination scores, the paired
    tests against the reference, and AUC per lesion type and band."""
    bands = report["study"]["bands"]
    rows = report["rows"]
    ref = report.get("reference")
    paired = report.get("paired", {})
    near = bands[0]
    lines = [
        f"Lesion study: {report['study']['n_patients']} patients, "
        f"{report['study']['n_lesions']} lesions; CHO with "
        f"{report['settings']['n_channels']} {report['settings']['channels'].upper()} channels, "
        f"{report['settings']['folds']}-fold cross-validation by patient; 95 % bootstrap "
        f"intervals over patients ({report['settings']['bootstrap']} resamples).",
        "",
        "| row | " + " | ".join(f"AUC {b}" for b in bands) + " | AUC all | FPF "
        f"{near} | area {near} |" + (f" dAUC {near} vs {ref} |" if ref else ""),
        "|---|" + "---|" * (len(bands) + 3) + ("---|" if ref else ""),
    ]
    for r in rows:
        cells = [_ci(r["bands"][b]["auc"], r["bands"][b]["auc_ci"]) for b in bands]
        cells.append(_ci(r["summary"]["detect_auc"], r["intervals"]["detect_auc"]))
        cells.append(_ci(r["summary"]["halluc_fpf_near"], r["intervals"]["halluc_fpf_near"]))
        cells.append(_ci(r["summary"]["halluc_area_near"], r["intervals"]["halluc_area_near"],
                         3))
        if ref:
            d = paired.get(r["name"], {}).get("detect_auc_near")
            cells.append("—" if d is None else
                         f"{_ci(d['delta'], d['ci'])} {_p(d['p'])}".strip())
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", "AUC per lesion type (mean over the study's implant types' pooled "
              "statistics):", "",
              "| row | " + " | ".join(f"{g['type']} {g['band']}" for g in rows[0]["groups"]
                                    if "auc" in g) + " |",
              "|---|" + "---|" * sum(1 for g in rows[0]["groups"] if "auc" in g)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_f(g["auc"]) for g in r["groups"]
                                                      if "auc" in g) + " |")
    lines.append("")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path | str) -> Path:
    """AUC, false-positive fraction and hallucinated area against the distance band, one line
    per row with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from artifactgsi.fileio import atomic_path

    bands = report["study"]["bands"]
    x = list(range(len(bands)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (("auc", "AUC (CHO, mean over lesion types)", (0.4, 1.02)),
              ("fpf", "false-positive fraction at the ideal operating point", (-0.02, 1.0)),
              ("area", "hallucinated area fraction (band-pass map)", None))
    for ax, (key, title, ylim) in zip(axes, panels, strict=True):
        for i, r in enumerate(report["rows"]):
            ys = [r["bands"][b][key] for b in bands]
            cis = [r["bands"][b][f"{key}_ci"] for b in bands]
            ys_f = [math.nan if v is None else v for v in ys]
            lo = [y - c[0] if c and y == y else 0 for y, c in zip(ys_f, cis, strict=True)]
            hi = [c[1] - y if c and y == y else 0 for y, c in zip(ys_f, cis, strict=True)]
            off = (i - (len(report["rows"]) - 1) / 2) * 0.04
            ax.errorbar([v + off for v in x], ys_f, yerr=[lo, hi], marker="o", capsize=3,
                        label=r["name"])
        ax.set_xticks(x, [f"{b}" for b in bands])
        ax.set_xlabel("distance from the metal (lesion centre)")
        ax.set_title(title, fontsize=10)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9,
               frameon=False)
    fig.suptitle(f"Lesion detectability: {report['study']['n_patients']} patients, "
                 f"{report['study']['n_lesions']} lesions", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def detect_compare_table(runs: list[tuple[str, Any]]) -> str:
    """``marbench compare --table detect``: one row per run (a ``Results`` with a ``detect``
    block), one column per metric of the registry's ``detect`` group as the runs recorded it,
    each with its 95 % bootstrap interval. Runs scored on different lesion studies or with
    other observer settings are flagged (not comparable).

    Raises:
        ValueError: no run has a detect block.
    """
    have = [(label, r) for label, r in runs if r.detect is not None and r.detect.available]
    if not have:
        raise ValueError("none of the runs has lesion detectability scores; run them with "
                         "`marbench run ... --lesions DIR` (docs/detect.md)")
    names: list[str] = []
    defs: dict[str, Any] = {}
    for _, r in have:
        for name, d in r.metrics.items():
            rd = d.resolved(name)
            if rd.group == "detect" and name not in defs:
                names.append(name)
                defs[name] = rd
    head = ["method"] + [f"{defs[n].label} {'↑' if defs[n].higher_is_better else '↓'}"
                         for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = have[0][1].detect
    warnings = []
    for label, r in have:
        det = r.detect
        cells = [_ci(det.summary.get(n), det.intervals.get(n), 3 if "area" in n else 2)
                 for n in names]
        lines.append(f"| {r.method.name} | " + " | ".join(cells) + " |")
        for what, a, b in (("lesion study", first.study.get("study_sha256"),
                            det.study.get("study_sha256")),
                           ("observer settings", first.settings, det.settings)):
            if a != b:
                warnings.append(f"{label}: its {what} differs from {have[0][0]}'s; these "
                                "numbers are not comparable")
    skipped = [label for label, r in runs if r.detect is None or not r.detect.available]
    out = "\n".join(lines) + "\n"
    study = first.study
    out += (f"\nLesion study {study.get('path')} ({study.get('n_patients')} patients, "
            f"{study.get('n_lesions')} lesions); 95 % bootstrap intervals over patients. "
            "Paired tests between methods: `marbench detect run`.\n")
    for w in warnings:
        out += f"warning: {w}\n"
    for s in skipped:
        out += f"no lesion study scores: {s}\n"
    return out
