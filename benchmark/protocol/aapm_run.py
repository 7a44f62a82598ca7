"""``marbench run --protocol aapm-ctmar-2024``: the runner's part of this protocol.

The protocol's metrics are declared in the metric registry (group ``aapm``, protocol
``aapm-ctmar-2024``) with one computation, :func:`score_view`, which the runner's
:class:`benchmark.metrics.Scorer` calls per batch like any other metric's. What it needs
beyond the two images comes from :class:`AAPMAnchors`, a run-scoped resource
(``Scorer(resources={"aapm": anchors})``) that

1. picks the reference: the image without metal (``aapm`` config, column ``reference``), else
   the simulated ideal image, else GSI (:func:`reference_kind`);
2. makes the anchor method's image (NMAR, created by name through the method registry, its
   output rounded to integer HU as the runner rounds every method's) for the batch, only when
   the case's anchors are not already in the reference cache;
3. derives each case's structures and 0-4 axes
   (:func:`benchmark.protocol.aapm_scoring.case_anchors`), a *reference state*: the runner's
   :class:`benchmark.refcache.ReferenceCache` keeps it per dataset revision, so every method
   scored on the same data (and ``rescore``) shares it;
4. writes, beside ``results.json``, ``aapm_structures.parquet`` (per slice: a uint32 map of the
   structures and, as JSON, the axes and anchor values), ``structures.png`` (the structures on
   the slice with the most metal) and ``figure.png`` (uncorrected | NMAR | method | reference).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import MARBenchError
from ..method import MARInput, MARMethod, PrepareContext, validate_output
from ..metrics.registry import MetricComputationError, MetricSpec, metrics_for_protocol
from ..parquet_stream import ParquetStream
from ..refcache import source_fingerprint
from ..registry import create_method
from ..results import (
    METHOD_VS_GSI,
    METHOD_VS_IDEAL,
    METHOD_VS_REFERENCE,
    ComparisonRecord,
    SliceRecord,
)
from .aapm import AAPM_CTMAR_2024, AAPMProtocol
from .aapm_scoring import CaseAnchors, case_anchors, score_case
from .aapm_structures import STRUCTURE_NAMES, CaseStructures

if TYPE_CHECKING:
    from ..data import PairsBatch, PairsSplit
    from ..metrics.compute import ScoreView
    from ..metrics.scorer import Scorer

__all__ = ["STRUCTURES_FILE", "AAPMAnchors", "AAPMScoringError", "aapm_metrics",
           "read_structures", "reference_kind", "score_view"]

#: Files this protocol adds to a run folder.
STRUCTURES_FILE = "aapm_structures.parquet"
STRUCTURES_FIGURE = "structures.png"
COMPARISON_FOR = {"reference": METHOD_VS_REFERENCE, "ideal": METHOD_VS_IDEAL,
                  "gsi": METHOD_VS_GSI}


def _source_sha256(cls: type) -> str | None:
    """sha256 of the file that defines ``cls`` (the anchor method: created through the
    registry, so its module is already imported; nothing is imported here)."""
    import inspect

    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


class AAPMScoringError(MARBenchError, RuntimeError):
    """The anchor method failed, or the data cannot be scored under this protocol."""


def aapm_metrics() -> dict[str, MetricSpec]:
    """The protocol's declarations, from the metric registry."""
    return metrics_for_protocol(AAPM_CTMAR_2024.version, per_slice=True)


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


# ----------------------------------------------------------------------------- computation


def score_view(view: ScoreView) -> dict[str, np.ndarray]:
    """The registry computation of every ``aapm-ctmar-2024`` metric, on the native grid:
    the case's anchors are a reference state (from the cache, or made by the run's
    :class:`AAPMAnchors` in ``view.resources["aapm"]``), the scores per slice.

    Raises:
        MetricComputationError: no anchor provider in the view's resources.
    """
    provider = view.resources.get("aapm")
    if not isinstance(provider, AAPMAnchors):
        raise MetricComputationError(
            "the aapm-ctmar-2024 metrics need the run's anchors (NMAR and the uncorrected "
            "image): score them with `marbench run --protocol aapm-ctmar-2024`")
    p = provider.protocol
    ref = view.reference_hu[:, 0].detach().cpu().numpy().astype(np.float64)
    pred = view.pred_hu[:, 0].detach().cpu().numpy().astype(np.float64)

    def make(rows: list[int]) -> list[dict[str, np.ndarray]]:
        return [provider.anchors_for(view.slice_ids[i], ref[i]).to_state() for i in rows]

    states = view.reference_state(provider.state_key, make)
    out: dict[str, list[float]] = {}
    for i, st in enumerate(states):
        a = CaseAnchors.from_state(st)
        values = score_case(pred[i], ref[i], a, p)
        provider.record(view.slice_ids[i], a, values, pred[i], ref[i])
        for k, v in values.items():
            out.setdefault(k, []).append(v)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


# ----------------------------------------------------------------------------- anchors


@dataclass
class _FigureCase:
    metal_pixels: int
    slice_id: tuple[str, int]
    inp: MARInput                    # the slice's input, to make NMAR's image if not made
    images: dict[str, np.ndarray]
    anchors: CaseAnchors
    values: dict[str, float]


class AAPMAnchors:
    """The run-scoped side of ``aapm-ctmar-2024`` (see the module docstring).

    Args:
        protocol: the protocol's settings.
        split: the split being scored (which reference it has).
        device: where the anchor method runs.
        seed: ``prepare`` seed of the anchor method.
    """

    def __init__(self, protocol: AAPMProtocol = AAPM_CTMAR_2024, *, split: PairsSplit,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.protocol = protocol
        self.device = torch.device(device)
        self.kind = reference_kind(split)
        self.comparison = COMPARISON_FOR[self.kind]
        self.noise_free_reference = self.kind == "ideal"
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
        #: The reference-state key: changes with the anchor method (its version, options and
        #: source file), this protocol's code, and the kind of reference.
        self.state_key = "aapm-anchors:" + hashlib.sha256(json.dumps(
            {**self.anchor_record, "anchor_source": _source_sha256(type(self.anchor)),
             "code": source_fingerprint([f"benchmark.protocol.{m}" for m in (
                 "aapm", "aapm_structures", "aapm_scoring")]),
             "noise_free_reference": self.noise_free_reference, "device": self.device.type},
            sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.anchor_s = 0.0
        self.anchors_made = 0
        self._batch: PairsBatch | None = None
        self._anchor_imgs: np.ndarray | None = None
        self._structures: ParquetStream | None = None
        self._fig: _FigureCase | None = None

    # ------------------------------------------------------------------ per batch

    def _row(self, slice_id: tuple[str, int]) -> int:
        assert self._batch is not None
        inp = self._batch.input
        for i, (p, s) in enumerate(zip(inp.patient_id, inp.slice_index, strict=True)):
            if (p, int(s)) == (slice_id[0], int(slice_id[1])):
                return i
        raise MetricComputationError(f"aapm anchors: patient {slice_id[0]!r} slice "
                                     f"{slice_id[1]} is not in the current batch")

    def _anchor_images(self, inp: MARInput) -> np.ndarray:
        """(B, H, W) float32 HU: the anchor method's output, rounded to integer HU."""
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                out = self.anchor.reduce(inp.to(self.device))
        except Exception as e:
            slices = ", ".join(inp.describe_slice(i) for i in range(inp.batch_size))
            raise AAPMScoringError(f"anchor method {self.anchor_name!r} raised "
                                   f"{type(e).__name__} on {slices}: {e}") from e
        img = validate_output(self.anchor_name, inp, out)
        self.anchor_s += time.perf_counter() - t0
        return img.detach().cpu().round().clamp(-32768, 32767)[:, 0].numpy().astype(np.float32)

    def anchors_for(self, slice_id: tuple[str, int], reference_hu: np.ndarray) -> CaseAnchors:
        """Structures and axes of one case of the current batch (the anchor method runs on the
        whole batch the first time a case of it is not cached, as a method would)."""
        if self._batch is None:
            raise MetricComputationError("aapm anchors: no batch (call score_batch)")
        i = self._row(slice_id)
        inp = self._batch.input
        if self._anchor_imgs is None:
            self._anchor_imgs = self._anchor_images(inp)
        self.anchors_made += 1
        return case_anchors(reference_hu, inp.ordinary[i, 0].numpy(), self._anchor_imgs[i],
                            inp.metal_mask[i, 0].numpy(), float(inp.pixel_spacing_mm[i]),
                            self.protocol, noise_free_reference=self.noise_free_reference)

    def score_batch(self, scorer: Scorer, batch: PairsBatch, pred_hu: torch.Tensor
                    ) -> list[SliceRecord]:
        """Score one batch through ``scorer`` (which computes the registry's metrics of this
        protocol) against the protocol's reference; one :class:`SliceRecord` per slice (rows
        without the reference get no scores)."""
        inp = batch.input
        b = inp.batch_size
        ref_t = {"reference": batch.reference_hu, "ideal": batch.ideal_hu,
                 "gsi": batch.gsi_hu}[self.kind]
        has = (batch.has_ideal.tolist() if self.kind == "ideal" else [ref_t is not None] * b)
        sel = [i for i in range(b) if has[i]]
        self._batch, self._anchor_imgs = batch, None
        scores: list[dict[str, dict[str, float]]] = [{} for _ in range(b)]
        if sel and ref_t is not None:
            t = torch.tensor(sel)
            rows = scorer.update(
                pred_hu[t], ref_t[t], metal_mask=inp.metal_mask[t],
                pixel_spacing_mm=inp.pixel_spacing_mm[t],
                slice_ids=[inp.describe_slice(i) for i in sel],
                keys=[(inp.patient_id[i], int(inp.slice_index[i])) for i in sel])
            for i, r in zip(sel, rows, strict=True):
                scores[i][self.comparison] = {k: float(v) for k, v in r.items() if k != "slice"}
        self._batch, self._anchor_imgs = None, None
        return [SliceRecord(patient_id=inp.patient_id[i], slice_index=int(inp.slice_index[i]),
                            z_mm=batch.z_mm[i], implant_type=inp.implant_type[i],
                            metal_pixels=int(inp.metal_mask[i].sum()), scores=scores[i])
                for i in range(b)]

    # ------------------------------------------------------------------ outputs

    def open(self, stage: Path) -> None:
        """Write the structures file into the run's staging folder."""
        self._structures = ParquetStream(Path(stage) / STRUCTURES_FILE)

    def record(self, slice_id: tuple[str, int], a: CaseAnchors, values: dict[str, float],
               pred_hu: np.ndarray, reference_hu: np.ndarray) -> None:
        """Keep one scored case: its structures row, and the figure's candidate."""
        if self._structures is not None:
            self._write_structures(self._structures, slice_id, a)
        metal = int(a.structures.metal.sum())
        if self._batch is None or (self._fig is not None and metal <= self._fig.metal_pixels):
            return
        i = self._row(slice_id)
        inp = self._batch.input
        one = MARInput(ordinary=inp.ordinary[i:i + 1].clone(),
                       metal_mask=inp.metal_mask[i:i + 1].clone(),
                       pixel_spacing_mm=inp.pixel_spacing_mm[i:i + 1].clone(),
                       implant_type=[inp.implant_type[i]], patient_id=[inp.patient_id[i]],
                       slice_index=[inp.slice_index[i]])
        images = {"uncorrected": inp.ordinary[i, 0].numpy().astype(np.float64),
                  "method": np.array(pred_hu), self.kind: np.array(reference_hu)}
        if self._anchor_imgs is not None:
            images[self.anchor_name] = self._anchor_imgs[i].astype(np.float64)
        self._fig = _FigureCase(metal, slice_id, one, images, a, dict(values))

    def _write_structures(self, stream: ParquetStream, slice_id: tuple[str, int],
                          a: CaseAnchors) -> None:
        bits = a.structures.to_bits()

        def features():  # type: ignore[no-untyped-def]
            from datasets import Array2D, Features, Value

            return Features({"patient_id": Value("string"), "slice_index": Value("int32"),
                             "structures": Array2D(bits.shape, "uint32"),
                             "anchors": Value("string")})

        doc = dict(a.to_json(), structure_bits=[*STRUCTURE_NAMES, *(
            f"beam_{k}" for k in range(len(a.structures.beams)))])
        stream.write(features, {"patient_id": [slice_id[0]], "slice_index": [slice_id[1]],
                                "structures": [bits], "anchors": [json.dumps(doc)]})

    def comparisons(self, scorer: Scorer) -> dict[str, ComparisonRecord]:
        """The run's one comparison: the method against the protocol's reference."""
        summary = scorer.summary()
        n = next(iter(summary.values())).n if summary else 0
        if n == 0:
            return {self.comparison: ComparisonRecord(
                scored="method", reference=self.kind, available=False, n_slices=0,
                reason=f"no scored slice has a {self.kind} image")}
        missing = {k: v for k, v in scorer.missing.items() if k in aapm_metrics()}
        return {self.comparison: ComparisonRecord(scored="method", reference=self.kind,
                                                  available=True, n_slices=n,
                                                  summary=summary, missing=missing)}

    def settings(self) -> dict[str, Any]:
        """What the results record about this run's scoring, beside the protocol's settings."""
        return {"reference": self.kind, "anchor": self.anchor_record,
                "noise_baseline": ("uncorrected image (the reference is noise-free)"
                                   if self.noise_free_reference else "reference image"),
                "structures_file": STRUCTURES_FILE}

    def finish(self, stage: Path, method_name: str, figure: bool = True) -> list[str]:
        """Close the structures file and draw the figures; the names written into ``stage``."""
        written = []
        if self._structures is not None and self._structures.close():
            written.append(STRUCTURES_FILE)
        f = self._fig
        if figure and f is not None:
            from .aapm_report import save_run_figure, save_structures_figure

            if self.anchor_name not in f.images:  # the anchors came from the cache
                f.images[self.anchor_name] = self._anchor_images(f.inp)[0].astype(np.float64)
            label = f"patient {f.slice_id[0]!r} slice {f.slice_id[1]}"
            save_structures_figure(f.images[self.kind], f.anchors.structures,
                                   Path(stage) / STRUCTURES_FIGURE,
                                   title=f"aapm-ctmar-2024 structures, {label}")
            save_run_figure(f, label, method_name, self.anchor_name, self.kind,
                            Path(stage) / "figure.png")
            written += [STRUCTURES_FIGURE, "figure.png"]
        return written

    def abort(self) -> None:
        if self._structures is not None:
            self._structures.abort()


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
        st = CaseStructures.from_bits(
            np.asarray(bits, np.uint32), len(d["beam_angles_deg"]),
            beam_angles_deg=tuple(d["beam_angles_deg"]),
            metal_threshold_hu=(d["metal_threshold_hu"] if d["metal_threshold_hu"] is not None
                                else math.nan),
            pixel_mm=d["pixel_mm"], notes=d["notes"])
        out[(str(pid), int(s))] = (st, d)
    return out
