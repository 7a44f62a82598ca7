"""What a run writes: int16 predictions (Parquet), the per-slice CSV, the figure, the
summary table, and the move of a finished run into its folder."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from artifactgsi.fileio import replace_dir

from ..data import PairsBatch
from ..parquet_stream import ParquetStream
from ..results import (
    COMPARISONS,
    GSI_VS_IDEAL,
    METHOD_VS_GSI,
    METHOD_VS_IDEAL,
    METHOD_VS_REFERENCE,
    PredictionsRecord,
    Results,
    SliceRecord,
)

#: How many slices the figure shows (one per patient, most metal first).
FIGURE_SLICES = 3


class PredictionWriter:
    """Streams int16 predictions to Parquet (HF ``datasets`` features) under a temporary
    name; :meth:`close` renames it into place and returns its record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream = ParquetStream(path)

    @property
    def rows(self) -> int:
        return self._stream.rows

    def write(self, patient_id: list[str], slice_index: list[int], pred: np.ndarray) -> None:
        """pred: (B, H, W) int16 HU."""
        def features():  # type: ignore[no-untyped-def]
            from datasets import Array2D, Features, Value

            return Features({"patient_id": Value("string"), "slice_index": Value("int32"),
                             "prediction": Array2D(pred.shape[1:], "int16")})

        self._stream.write(features, {"patient_id": list(patient_id),
                                      "slice_index": [int(s) for s in slice_index],
                                      "prediction": list(pred)})

    def close(self, out_dir: Path) -> PredictionsRecord | None:
        if not self._stream.close():
            return None
        from artifactgsi.hub import sha256_file

        return PredictionsRecord(path=self.path.relative_to(out_dir).as_posix(),
                                 sha256=sha256_file(self.path), bytes=self.path.stat().st_size,
                                 rows=self.rows)

    def abort(self) -> None:
        self._stream.abort()


@dataclass
class FigureSlice:
    key: tuple[int, int]           # (metal pixels, -position): larger is preferred
    patient_id: str
    slice_index: int
    position: int
    images: dict[str, np.ndarray]  # "ordinary", "method", "gsi"[, "ideal"], (H, W) HU


class FigurePicker:
    """Keeps the slice with the most metal of each of the ``n`` patients whose best slice has
    the most metal (ties: the earlier slice in benchmark order), in O(n) memory."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.best: dict[str, FigureSlice] = {}

    def wants(self, patient_id: str, key: tuple[int, int]) -> bool:
        if patient_id in self.best:
            return key > self.best[patient_id].key
        return len(self.best) < self.n or key > min(s.key for s in self.best.values())

    def offer(self, item: FigureSlice) -> None:
        if not self.wants(item.patient_id, item.key):
            return
        if item.patient_id not in self.best and len(self.best) >= self.n:
            worst = min(self.best.values(), key=lambda s: s.key)
            del self.best[worst.patient_id]
        self.best[item.patient_id] = item

    def chosen(self) -> list[FigureSlice]:
        return sorted(self.best.values(), key=lambda s: s.key, reverse=True)


def fmt(v: float | None, digits: int = 2) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}" if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def write_figure(chosen: list[FigureSlice], slices: list[SliceRecord], method_name: str,
                  path: Path) -> Path | None:
    from ..figures import PanelImage, PanelRow, save_panel

    if not chosen:
        return None
    rows = []
    for c in chosen:
        s = slices[c.position].scores
        cells = [PanelImage("ordinary", c.images["ordinary"])]
        g = s.get(METHOD_VS_GSI, {})
        cap = f"vs GSI: PSNR {fmt(g.get('psnr'))} SSIM {fmt(g.get('ssim'), 3)}"
        if METHOD_VS_IDEAL in s:
            i = s[METHOD_VS_IDEAL]
            cap += f"\nvs ideal: PSNR {fmt(i.get('psnr'))} SSIM {fmt(i.get('ssim'), 3)}"
        cells.append(PanelImage(method_name, c.images["method"], cap))
        gi = s.get(GSI_VS_IDEAL)
        cells.append(PanelImage("GSI", c.images["gsi"], "" if gi is None else
                                f"vs ideal: PSNR {fmt(gi.get('psnr'))} "
                                f"SSIM {fmt(gi.get('ssim'), 3)}"))
        if "ideal" in c.images:
            cells.append(PanelImage("ideal", c.images["ideal"]))
        rows.append(PanelRow(f"{c.patient_id} slice {c.slice_index}", cells))
    return save_panel(rows, path, title=f"{method_name}: the slices with the most metal")


def per_slice_csv(slices: list[SliceRecord], metric_order: list[str]) -> str:
    cols = [(comp, m) for comp in COMPARISONS for m in metric_order
            if any(m in s.scores.get(comp, {}) for s in slices)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "slice_index", "z_mm", "implant_type", "metal_pixels",
                *[f"{c}.{m}" for c, m in cols]])
    for s in slices:
        vals = []
        for c, m in cols:
            v = s.scores.get(c, {}).get(m)
            vals.append("" if v is None else repr(float(v)))  # repr: exact round trip
        w.writerow([s.patient_id, s.slice_index, "" if s.z_mm is None else repr(s.z_mm),
                    s.implant_type, s.metal_pixels, *vals])
    return buf.getvalue()


def offer_figure(picker: FigurePicker, batch: PairsBatch, pred_i16: np.ndarray,
                  first_position: int) -> None:
    inp = batch.input
    for i in range(inp.batch_size):
        pos = first_position + i
        key = (int(inp.metal_mask[i].sum()), -pos)
        pid = inp.patient_id[i]
        if not picker.wants(pid, key):
            continue
        images = {"ordinary": inp.ordinary[i, 0].numpy().copy(),
                  "method": pred_i16[i].astype(np.float32),
                  "gsi": batch.gsi_hu[i, 0].numpy().copy()}
        if batch.ideal_hu is not None and bool(batch.has_ideal[i]):
            images["ideal"] = batch.ideal_hu[i, 0].numpy().copy()
        picker.offer(FigureSlice(key=key, patient_id=pid, slice_index=inp.slice_index[i],
                                  position=pos, images=images))


#: What a run writes into its output folder.
RUN_OUTPUTS = ("results.json", "per_slice.csv", "figure.png", "predictions",
               "aapm_structures.parquet", "structures.png")


def publish(stage: Path, out_dir: Path) -> None:
    """Move a finished run from ``stage`` into ``out_dir``.

    A new or empty ``out_dir`` (or one holding only an earlier run's outputs) is swapped in
    whole with two renames. A folder that also holds other files keeps them: the earlier
    outputs are removed (results.json first, so no old results describe new files) and the
    new ones renamed in, results.json last.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir}: exists and is not a folder")
    others = ([p for p in out_dir.iterdir() if p.name not in RUN_OUTPUTS
               and not p.name.startswith(".")] if out_dir.is_dir() else [])
    if not others:
        replace_dir(stage, out_dir)
        return
    (out_dir / "results.json").unlink(missing_ok=True)
    for name in RUN_OUTPUTS:
        old = out_dir / name
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    for name in RUN_OUTPUTS[::-1]:  # results.json last
        if (stage / name).exists():
            os.replace(stage / name, out_dir / name)


def summary_table(results: Results) -> Any:
    """A rich table: one row per metric, one column per comparison (mean ± std)."""
    from rich.markup import escape
    from rich.table import Table

    comps = [k for k, c in results.comparisons.items() if c.available]
    t = Table(title=f"{escape(results.method.name)} (v{results.method.version}) on "
                    f"{results.dataset.config}/{results.dataset.split}: "
                    f"{results.dataset.n_slices_scored} slices, {results.protocol.version}")
    t.add_column("metric", no_wrap=True)
    t.add_column("", no_wrap=True)
    short = {METHOD_VS_GSI: "vs GSI", METHOD_VS_IDEAL: "vs ideal", GSI_VS_IDEAL: "GSI vs ideal",
             METHOD_VS_REFERENCE: "vs reference"}
    for k in comps:
        t.add_column(short[k], justify="right", no_wrap=True)
    for m, d in results.metrics.items():
        if all(results.comparisons[k].summary.get(m) is None for k in comps):
            continue  # e.g. segmentation metrics: shown below the table, not per comparison
        cells = []
        for k in comps:
            s = results.comparisons[k].summary.get(m)
            if s is None:
                cells.append("n/a")
                continue
            # Compact (3 decimals below 1): the exact values are in results.json.
            digits = 2 if d.unit in ("dB", "HU") else 3
            txt = fmt(s.mean, digits)
            if math.isfinite(s.std):
                txt += f" ± {fmt(s.std, digits)}"
            if s.n_nan:
                txt += f" ({s.n_nan} undef.)"
            cells.append(txt)
        t.add_row(m, ("↑ " if d.higher_is_better else "↓ ") + d.unit, *cells)
    return t
