"""``marbench run --protocol aapm-ctmar-2024``: what the runner does per batch under this
protocol.

:class:`AAPMRunScorer` takes the runner's batches (:class:`benchmark.data.PairsBatch`) and the
method's output, and for each slice

1. picks the reference: the image without metal (``aapm`` config, column ``reference``), else
   the simulated ideal image, else GSI (:func:`reference_kind`);
2. makes the anchor method's image (NMAR, created by name through the method registry, its
   output rounded to integer HU as the runner rounds every method's), cached per dataset
   manifest so every method scored on the same data shares it;
3. derives the structures and 0-4 axes (:func:`benchmark.protocol.aapm_scoring.case_anchors`)
   and scores the method (:func:`~benchmark.protocol.aapm_scoring.score_case`).

It writes, beside ``results.json``: ``aapm_structures.parquet`` (per slice: a uint32 map of
the structures, :meth:`~benchmark.protocol.aapm_structures.CaseStructures.to_bits`, and the
axes / anchor values as JSON), ``structures.png`` (the structures on the slice with the most
metal) and ``figure.png`` (uncorrected | NMAR | method | reference on that slice).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import PairsBatch, PairsSplit
from ..errors import MARBenchError
from ..method import MARMethod, PrepareContext, validate_output
from ..registry import create_method
from ..results import (
    METHOD_VS_GSI,
    METHOD_VS_IDEAL,
    METHOD_VS_REFERENCE,
    ComparisonRecord,
    MetricSummary,
    SliceRecord,
    summarize,
    temporary_sibling,
)
from .aapm import AAPM_CTMAR_2024, AAPMProtocol
from .aapm_metrics import AAPM_METRICS
from .aapm_scoring import CaseAnchors, case_anchors, score_case
from .aapm_structures import STRUCTURE_NAMES, CaseStructures

__all__ = ["STRUCTURES_FILE", "AAPMRunScorer", "default_anchor_cache", "reference_kind",
           "read_structures"]

#: Files this protocol adds to a run folder.
STRUCTURES_FILE = "aapm_structures.parquet"
STRUCTURES_FIGURE = "structures.png"
COMPARISON_FOR = {"reference": METHOD_VS_REFERENCE, "ideal": METHOD_VS_IDEAL,
                  "gsi": METHOD_VS_GSI}


class AAPMScoringError(MARBenchError, RuntimeError):
    """The anchor method failed, or the data cannot be scored under this protocol."""


def reference_kind(split: PairsSplit) -> str:
    """``reference`` (the image without metal, ``aapm`` config), else ``ideal`` (simulated
    data), else ``gsi``."""
    if split.has_reference:
        return "reference"
    if split.has_ideal:
        return "ideal"
    if split.has_gsi:
        return "gsi"
    raise AAPMScoringError(f"{split.where}: no reference image (columns reference, ideal or "
                           "gsi) to score against")


def default_anchor_cache() -> Path:
    """``$XDG_CACHE_HOME/artifactgsi/aapm-anchors`` (``~/.cache`` by default)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "artifactgsi" / "aapm-anchors"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@dataclass
class _FigureCase:
    metal_pixels: int
    label: str
    images: dict[str, np.ndarray]
    structures: CaseStructures
    values: dict[str, float]
    anchor_values: dict[str, float]
    uncorrected_values: dict[str, float]


class AAPMRunScorer:
    """Per-slice scoring of one run under ``aapm-ctmar-2024`` (see the module docstring).

    Args:
        protocol: the protocol's settings.
        split: the split being scored (its reference columns and manifest).
        device: where the anchor method runs.
        anchor_cache: folder of cached anchor images (``None``: no cache). Entries are keyed
            by the dataset's manifest sha256, config, split, the anchor method's name,
            version and options, and the device type; data without a manifest are not cached.
        seed: ``prepare`` seed of the anchor method.
    """

    def __init__(self, protocol: AAPMProtocol = AAPM_CTMAR_2024, *, split: PairsSplit,
                 device: torch.device | str = "cpu", anchor_cache: Path | None = None,
                 seed: int = 0) -> None:
        self.protocol = protocol
        self.device = torch.device(device)
        self.kind = reference_kind(split)
        self.comparison = COMPARISON_FOR[self.kind]
        self.noise_free_reference = self.kind == "ideal"
        self.metrics = dict(AAPM_METRICS)
        self.anchor: MARMethod = create_method(protocol.anchor_method)
        self.anchor_name = self.anchor.name or protocol.anchor_method
        try:
            self.anchor.prepare(PrepareContext(device=self.device, train_data=None,
                                               cache_dir=None, seed=seed))
        except Exception as e:
            raise AAPMScoringError(f"the anchor method {self.anchor_name!r} could not be "
                                   f"prepared: {type(e).__name__}: {e}") from e
        self.anchor_record = {"name": self.anchor_name,
                              "version": str(getattr(self.anchor, "version", "0")),
                              "options": self.anchor.effective_options()}
        self._cache: Path | None = None
        if anchor_cache is not None and split.source.manifest_sha256:
            key = json.dumps({"manifest": split.source.manifest_sha256,
                              "config": split.config, "split": split.split,
                              "anchor": self.anchor_record, "device": self.device.type},
                             sort_keys=True, default=str)
            self._cache = Path(anchor_cache) / hashlib.sha256(key.encode()).hexdigest()[:20]
        self._rows: list[dict[str, float]] = []
        self._path: Path | None = None
        self._writer: Any = None
        self._tmp: Path | None = None
        self._fig: _FigureCase | None = None
        self.anchor_s = 0.0
        self.cached_anchors = 0

    # ------------------------------------------------------------------ anchors

    def _anchor_images(self, batch: PairsBatch) -> np.ndarray:
        """(B, H, W) float32 HU: the anchor method's output for the batch, rounded to integer
        HU (from the cache where present)."""
        inp = batch.input
        paths = ([self._cache / f"{_safe(p)}-{int(s)}.npy"
                  for p, s in zip(inp.patient_id, inp.slice_index, strict=True)]
                 if self._cache is not None else [])
        if paths and all(p.is_file() for p in paths):
            self.cached_anchors += len(paths)
            return np.stack([np.load(p).astype(np.float32) for p in paths])
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                out = self.anchor.reduce(inp.to(self.device))
        except Exception as e:
            slices = ", ".join(inp.describe_slice(i) for i in range(inp.batch_size))
            raise AAPMScoringError(f"anchor method {self.anchor_name!r} raised "
                                   f"{type(e).__name__} on {slices}: {e}") from e
        img = validate_output(self.anchor_name, inp, out)
        arr = img.detach().cpu().round().clamp(-32768, 32767)[:, 0].numpy().astype(np.float32)
        self.anchor_s += time.perf_counter() - t0
        if paths:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            for path, a in zip(paths, arr, strict=True):
                tmp = temporary_sibling(path)
                with open(tmp, "wb") as f:
                    np.save(f, a.astype(np.int16))
                os.replace(tmp, path)
        return arr

    # ------------------------------------------------------------------ scoring

    def score_batch(self, batch: PairsBatch, pred_hu: torch.Tensor) -> list[SliceRecord]:
        """Score one batch; ``pred_hu`` is the method's (B, 1, H, W) output (integer HU).
        Returns one :class:`SliceRecord` per slice (``scores[comparison]``: the raw values,
        the eight sub-scores and ``aapm_score``)."""
        inp = batch.input
        ref_t = {"reference": batch.reference_hu, "ideal": batch.ideal_hu,
                 "gsi": batch.gsi_hu}[self.kind]
        has = (batch.has_ideal.tolist() if self.kind == "ideal"
               else [ref_t is not None] * inp.batch_size)
        anchors_img = self._anchor_images(batch)
        pred = pred_hu[:, 0].detach().cpu().numpy().astype(np.float64)
        unc = inp.ordinary[:, 0].numpy().astype(np.float64)
        metal = inp.metal_mask[:, 0].numpy()
        records = []
        for i in range(inp.batch_size):
            scores: dict[str, dict[str, float]] = {}
            if has[i] and ref_t is not None:
                ref = ref_t[i, 0].numpy().astype(np.float64)
                a = case_anchors(ref, unc[i], anchors_img[i], metal[i],
                                 float(inp.pixel_spacing_mm[i]), self.protocol,
                                 noise_free_reference=self.noise_free_reference)
                values = score_case(pred[i], ref, a, self.protocol)
                scores[self.comparison] = values
                self._rows.append(values)
                self._write_structures(inp.patient_id[i], int(inp.slice_index[i]), a)
                self._offer_figure(inp.describe_slice(i), int(metal[i].sum()),
                                   {"uncorrected": unc[i], self.anchor_name: anchors_img[i],
                                    "method": pred[i], self.kind: ref}, a, values)
            records.append(SliceRecord(
                patient_id=inp.patient_id[i], slice_index=int(inp.slice_index[i]),
                z_mm=batch.z_mm[i], implant_type=inp.implant_type[i],
                metal_pixels=int(metal[i].sum()), scores=scores))
        return records

    def summary(self) -> dict[str, MetricSummary]:
        """Aggregate of each metric over the scored slices."""
        return {k: summarize([r[k] for r in self._rows], spec.higher_is_better)
                for k, spec in self.metrics.items()}

    def comparisons(self) -> dict[str, ComparisonRecord]:
        """The run's one comparison (the method against the protocol's reference)."""
        n = len(self._rows)
        if n == 0:
            return {self.comparison: ComparisonRecord(
                scored="method", reference=self.kind, available=False, n_slices=0,
                reason=f"no scored slice has a {self.kind} image")}
        return {self.comparison: ComparisonRecord(scored="method", reference=self.kind,
                                                  available=True, n_slices=n,
                                                  summary=self.summary())}

    def settings(self) -> dict[str, Any]:
        """What the results record about this run's scoring, beside the protocol's settings."""
        return {"reference": self.kind, "anchor": self.anchor_record,
                "noise_baseline": ("uncorrected image (the reference is noise-free)"
                                   if self.noise_free_reference else "reference image"),
                "structures_file": STRUCTURES_FILE}

    # ------------------------------------------------------------------ outputs

    def open(self, stage: Path) -> None:
        """Start writing the structures file into the run's staging folder."""
        self._path = Path(stage) / STRUCTURES_FILE

    def _write_structures(self, patient_id: str, slice_index: int, a: CaseAnchors) -> None:
        bits = a.structures.to_bits()
        if self._path is None:
            raise AAPMScoringError("AAPMRunScorer.open(stage) must be called before scoring")
        if self._writer is None:
            from datasets import Array2D, Features, Value
            from datasets.arrow_writer import ParquetWriter

            feats = Features({"patient_id": Value("string"), "slice_index": Value("int32"),
                              "structures": Array2D(bits.shape, "uint32"),
                              "anchors": Value("string")})
            self._tmp = temporary_sibling(self._path)
            self._writer = ParquetWriter(path=str(self._tmp), features=feats)
        doc = dict(a.to_json(), structure_bits=[*STRUCTURE_NAMES,
                                                *(f"beam_{k}" for k in
                                                  range(len(a.structures.beams)))])
        self._writer.write_batch({"patient_id": [patient_id], "slice_index": [slice_index],
                                  "structures": [bits], "anchors": [json.dumps(doc)]})

    def _offer_figure(self, label: str, metal_pixels: int, images: dict[str, np.ndarray],
                      a: CaseAnchors, values: dict[str, float]) -> None:
        if self._fig is not None and metal_pixels <= self._fig.metal_pixels:
            return
        self._fig = _FigureCase(metal_pixels, label, {k: np.array(v) for k, v in
                                                      images.items()}, a.structures,
                                values, a.anchor, a.uncorrected)

    def finish(self, stage: Path, method_name: str, figure: bool = True) -> list[str]:
        """Close the structures file and draw the figures; the names written into ``stage``."""
        written = []
        if self._writer is not None and self._tmp is not None:
            self._writer.finalize()
            self._writer = None
            os.replace(self._tmp, self._path)
            written.append(STRUCTURES_FILE)
        if figure and self._fig is not None:
            from .aapm_report import save_run_figure, save_structures_figure

            f = self._fig
            save_structures_figure(f.images[self.kind], f.structures,
                                   Path(stage) / STRUCTURES_FIGURE,
                                   title=f"aapm-ctmar-2024 structures, {f.label}")
            save_run_figure(f, method_name, self.anchor_name, self.kind,
                            Path(stage) / "figure.png")
            written += [STRUCTURES_FIGURE, "figure.png"]
        return written

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.finalize()
            except Exception:  # best effort: the file is removed anyway
                pass
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def read_structures(run_dir: Path | str) -> dict[tuple[str, int], tuple[CaseStructures, dict]]:
    """``{(patient_id, slice_index): (structures, anchors JSON)}`` from a run's
    ``aapm_structures.parquet``."""
    import pyarrow.parquet as pq

    t = pq.read_table(Path(run_dir) / STRUCTURES_FILE)
    out = {}
    for pid, s, bits, doc in zip(t.column("patient_id").to_pylist(),
                                 t.column("slice_index").to_pylist(),
                                 t.column("structures").to_pylist(),
                                 t.column("anchors").to_pylist(), strict=True):
        d = json.loads(doc)
        n_beams = len(d["beam_angles_deg"])
        st = CaseStructures.from_bits(
            np.asarray(bits, np.uint32), n_beams,
            beam_angles_deg=tuple(d["beam_angles_deg"]),
            metal_threshold_hu=(d["metal_threshold_hu"] if d["metal_threshold_hu"] is not None
                                else math.nan),
            pixel_mm=d["pixel_mm"], notes=d["notes"])
        out[(str(pid), int(s))] = (st, d)
    return out
