"""Run one MAR method over one split and score it under the marbench-v1 protocol.

:func:`run_benchmark` is what ``marbench run`` calls::

    results = run_benchmark("li", "path/to/ArtifactGSI", split="test", out=Path("results/li"))

It creates the method through the registry (a registered name or ``"pkg.module:Class"``),
calls ``prepare`` once, feeds the split in batches (patient, then slice order) under
``torch.no_grad()``, checks every output (:func:`benchmark.method.validate_output`), and
scores each slice with :class:`benchmark.metrics.Scorer` (resampling to 512 x 512 happens
there):

- ``method_vs_gsi``: the method against the GSI image (the paper's protocol);
- ``method_vs_ideal``: against the ideal image, for rows that have one (simulated data);
- ``gsi_vs_ideal``: GSI itself against the ideal image, so a reader sees whether a method
  gets closer to the truth than GSI does.

The method's output is rounded to integer HU (int16, as the dataset stores HU) before it is
scored and written, so re-scoring ``predictions/*.parquet`` reproduces ``results.json``
exactly. Written to ``out/`` (each file atomically: temporary name, then rename):

- ``predictions/<split>-00000-of-00001.parquet``: ``patient_id``, ``slice_index``,
  ``prediction`` (int16 HU), loadable with ``datasets.load_dataset("parquet", ...)``;
- ``per_slice.csv``: one row per slice, a column per ``<comparison>.<metric>``;
- ``results.json``: :class:`benchmark.results.Results`;
- ``figure.png``: Fig. 4-style panel of the (up to) 3 slices with the most metal, one per
  patient.

A method that wants neighbouring slices sets the class attribute ``neighbour_slices = k``;
it then gets ``MARInput.neighbours`` of shape (B, 2k+1, H, W).
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifactgsi.fileio import replace_dir

from .data import PairsBatch, PairsSplit, open_split
from .errors import MARBenchError
from .method import MARInput, MARMethod, PrepareContext, validate_output
from .metrics import MARBENCH_V1, LPIPSMetric, LPIPSUnavailable, Protocol, Scorer
from .metrics.compute import BatchMemo
from .metrics.registry import metrics_for_protocol
from .refcache import ReferenceCache
from .registry import create_method
from .results import (
    COMPARISONS,
    GSI_VS_IDEAL,
    METHOD_VS_GSI,
    METHOD_VS_IDEAL,
    METHOD_VS_REFERENCE,
    CodeRecord,
    ComparisonRecord,
    DataFileRecord,
    DatasetRecord,
    DetectRecord,
    HardwareRecord,
    MethodRecord,
    MetricDefinition,
    MetricSummary,
    PredictionsRecord,
    ProtocolRecord,
    Results,
    SegmentationRecord,
    SliceRecord,
    TimingRecord,
    atomic_write_text,
    segmentation_summaries,
    temporary_sibling,
)

#: How many slices the figure shows (one per patient, most metal first).
FIGURE_SLICES = 3


class MethodRunError(MARBenchError, RuntimeError):
    """A method raised an exception in ``prepare`` or ``reduce`` (the message names it and
    the slices)."""


# ----------------------------------------------------------------------------- provenance


def code_record() -> CodeRecord:
    """Package version and, for a git checkout, its commit and whether it has edits."""
    try:
        version = importlib.metadata.version("artifactgsi")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    root = Path(__file__).resolve().parents[1]
    commit: str | None = None
    dirty: bool | None = None
    if (root / ".git").exists():
        # --no-optional-locks: never take index.lock (another git process may be running).
        git = ["git", "--no-optional-locks", "-C", str(root)]
        try:
            r = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                               timeout=10)
            if r.returncode == 0:
                commit = r.stdout.strip() or None
                s = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=30)
                dirty = bool(s.stdout.strip()) if s.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            pass
    return CodeRecord(package="artifactgsi", version=version, git_commit=commit,
                      git_dirty=dirty)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware_record(device: torch.device) -> HardwareRecord:
    """CPU, torch and (for CUDA) the GPU the run used."""
    cuda_name = cuda_version = None
    if device.type == "cuda":
        cuda_name = torch.cuda.get_device_name(device)
        cuda_version = torch.version.cuda
    return HardwareRecord(cpu=_cpu_model(), cpu_count=os.cpu_count() or 0,
                          platform=platform.platform(), python=platform.python_version(),
                          torch=torch.__version__, torch_threads=torch.get_num_threads(),
                          device=str(device), cuda_device=cuda_name, cuda_version=cuda_version)


# ----------------------------------------------------------------------------- helpers


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available in this environment "
                         "(torch.cuda.is_available() is False); use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def _lpips_metric(lpips: str | Path | LPIPSMetric | None,
                  device: torch.device) -> tuple[LPIPSMetric | None, str | None]:
    """(metric, None) or (None, reason it is missing)."""
    if lpips is None:
        return None, "disabled by the user (--no-lpips)"
    if isinstance(lpips, LPIPSMetric):
        return lpips, None
    weights = None if lpips == "auto" else Path(lpips)
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"--lpips-weights {weights}: no such file (fetch the backbone "
                                "with `marbench weights lpips`, or leave the option out)")
    try:
        return LPIPSMetric(weights=weights, device=device), None
    except LPIPSUnavailable as e:
        return None, str(e)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "method"


def default_out_dir(method: str, split: str) -> Path:
    """``results/<method>-<split>`` (method spec made filesystem-safe)."""
    return Path("results") / f"{_safe_name(method)}-{_safe_name(split)}"


class _PredictionWriter:
    """Streams int16 predictions to Parquet (HF ``datasets`` features) under a temporary
    name; :meth:`close` renames it into place and returns its record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._writer: Any = None
        self._tmp: Path | None = None

    def write(self, patient_id: list[str], slice_index: list[int], pred: np.ndarray) -> None:
        """pred: (B, H, W) int16 HU."""
        if self._writer is None:
            from datasets import Array2D, Features, Value
            from datasets.arrow_writer import ParquetWriter

            features = Features({"patient_id": Value("string"), "slice_index": Value("int32"),
                                 "prediction": Array2D(pred.shape[1:], "int16")})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = temporary_sibling(self.path)
            self._writer = ParquetWriter(path=str(self._tmp), features=features)
        self._writer.write_batch({"patient_id": list(patient_id),
                                  "slice_index": [int(s) for s in slice_index],
                                  "prediction": list(pred)})
        self.rows += len(patient_id)

    def close(self, out_dir: Path) -> PredictionsRecord | None:
        if self._writer is None or self._tmp is None:
            return None
        self._writer.finalize()
        self._writer = None
        os.replace(self._tmp, self.path)
        self._tmp = None
        from artifactgsi.hub import sha256_file

        return PredictionsRecord(path=self.path.relative_to(out_dir).as_posix(),
                                 sha256=sha256_file(self.path), bytes=self.path.stat().st_size,
                                 rows=self.rows)

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.finalize()
            except Exception:  # best effort: the file is removed anyway
                pass
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


@dataclass
class _FigureSlice:
    key: tuple[int, int]           # (metal pixels, -position): larger is preferred
    patient_id: str
    slice_index: int
    position: int
    images: dict[str, np.ndarray]  # "ordinary", "method", "gsi"[, "ideal"], (H, W) HU


class _FigurePicker:
    """Keeps the slice with the most metal of each of the ``n`` patients whose best slice has
    the most metal (ties: the earlier slice in benchmark order), in O(n) memory."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.best: dict[str, _FigureSlice] = {}

    def wants(self, patient_id: str, key: tuple[int, int]) -> bool:
        if patient_id in self.best:
            return key > self.best[patient_id].key
        return len(self.best) < self.n or key > min(s.key for s in self.best.values())

    def offer(self, item: _FigureSlice) -> None:
        if not self.wants(item.patient_id, item.key):
            return
        if item.patient_id not in self.best and len(self.best) >= self.n:
            worst = min(self.best.values(), key=lambda s: s.key)
            del self.best[worst.patient_id]
        self.best[item.patient_id] = item

    def chosen(self) -> list[_FigureSlice]:
        return sorted(self.best.values(), key=lambda s: s.key, reverse=True)


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}" if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _write_figure(chosen: list[_FigureSlice], slices: list[SliceRecord], method_name: str,
                  path: Path) -> Path | None:
    from .figures import PanelImage, PanelRow, save_panel

    if not chosen:
        return None
    rows = []
    for c in chosen:
        s = slices[c.position].scores
        cells = [PanelImage("ordinary", c.images["ordinary"])]
        g = s.get(METHOD_VS_GSI, {})
        cap = f"vs GSI: PSNR {_fmt(g.get('psnr'))} SSIM {_fmt(g.get('ssim'), 3)}"
        if METHOD_VS_IDEAL in s:
            i = s[METHOD_VS_IDEAL]
            cap += f"\nvs ideal: PSNR {_fmt(i.get('psnr'))} SSIM {_fmt(i.get('ssim'), 3)}"
        cells.append(PanelImage(method_name, c.images["method"], cap))
        gi = s.get(GSI_VS_IDEAL)
        cells.append(PanelImage("GSI", c.images["gsi"], "" if gi is None else
                                f"vs ideal: PSNR {_fmt(gi.get('psnr'))} "
                                f"SSIM {_fmt(gi.get('ssim'), 3)}"))
        if "ideal" in c.images:
            cells.append(PanelImage("ideal", c.images["ideal"]))
        rows.append(PanelRow(f"{c.patient_id} slice {c.slice_index}", cells))
    return save_panel(rows, path, title=f"{method_name}: the slices with the most metal")


def _per_slice_csv(slices: list[SliceRecord], metric_order: list[str]) -> str:
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


def _summaries(scorer: Scorer) -> dict[str, MetricSummary]:
    return scorer.summary()


# ----------------------------------------------------------------------------- the run


def run_benchmark(method: str, data: str | Path, split: str = "test",
                  out: Path | str | None = None, device: str | torch.device = "cpu",
                  limit: int | None = None, batch_size: int = 4, save_predictions: bool = True,
                  lpips: str | Path | LPIPSMetric | None = "auto", *, config: str = "pairs",
                  revision: str | None = None, options: dict[str, Any] | None = None,
                  train_split: str | None = None, seed: int = 0, clinical: bool = True,
                  protocol: Protocol | Any = MARBENCH_V1, figure: bool = True,
                  data_cache_dir: Path | str | None = None, verbose: bool = True,
                  console: Any = None, verify_manifest: bool = True,
                  segmenter: str | Path | None = None,
                  reference_cache: str | Path | None = "auto",
                  lesions: str | Path | None = None) -> Results:
    """Run ``method`` over ``data``/``split``, score it, write ``out/``, return the results.

    Args:
        method: registered name (``marbench ls``) or ``"pkg.module:Class"``.
        data: built dataset folder or Hub dataset repo id (``org/name``).
        split: split of ``config`` to score.
        out: output folder (default ``results/<method>-<split>``); files in it are replaced.
        device: where the method and the metrics run (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        limit: score only the first ``limit`` slices (benchmark order), e.g. for a smoke test.
        batch_size: slices per ``reduce`` call.
        save_predictions: write ``predictions/<split>-00000-of-00001.parquet``.
        lpips: ``"auto"`` (find the real AlexNet weights), a weights file, an
            :class:`LPIPSMetric`, or ``None`` to skip; when unavailable LPIPS is reported
            missing with the reason and the run continues.
        config: dataset config (``"pairs"``); revision: Hub branch / tag / commit.
        options: method settings, passed to the method's constructor and checked against
            its signature (an unknown key is a
            :class:`benchmark.registry.UnknownOptionError`); results record the values the
            instance actually uses (:meth:`MARMethod.effective_options`).
        train_split: if given, that split is opened and passed to ``prepare`` as
            ``ctx.train_data`` (a :class:`benchmark.data.PairsSplit`).
        seed: seeds torch before ``prepare`` (``ctx.seed``).
        clinical: also compute the clinical metrics (they dominate scoring time on CPU).
        protocol: the scoring protocol, a settings object or its version
            (``"marbench-v1"``, ``"aapm-ctmar-2024"``; see :mod:`benchmark.protocol`);
            results of different versions are not comparable.
        figure: write ``figure.png``.
        data_cache_dir: ``datasets`` cache for the Arrow copies of the split.
        verbose: show a progress bar and print a summary table on ``console``.
        console: a ``rich.console.Console`` (default: a new one on stdout).
        segmenter: a frozen segmenter (model folder or Hub repo id; default
            ``$MARBENCH_SEGMENTER``) applied to the method's output, GSI and the ideal image
            and scored against ``labels`` (IoU per class, mIoU); without one, or without
            labels, segmentation is recorded as missing with the reason.
        verify_manifest: refuse a dataset folder without ``manifest.json`` (``False`` =
            ``--no-verify``: score it and record no manifest sha256, with a warning).
        reference_cache: where the reference-side work is kept between runs
            (:mod:`benchmark.refcache`): ``"auto"`` (``$MARBENCH_REFERENCE_CACHE`` or the
            user's cache folder), a folder, or ``None`` / ``"off"`` (computed in memory for
            this run only). Scores are the same either way.
        lesions: a lesion study folder (``marbench detect make``): the method also runs on
            its paired scans and results.json gets lesion detectability and hallucination
            (``detect``; docs/detect.md).

    Raises:
        benchmark.registry.UnknownMethodError: unknown name (with "did you mean").
        benchmark.registry.UnknownOptionError: an option the method does not take.
        benchmark.data.DatasetError: no such dataset, config or split (lists what exists).
        benchmark.method.MethodOutputError: an output with the wrong shape / dtype or NaN,
            naming the method and the slices.
        MethodRunError: the method raised; the message names it and the slices.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .protocol import AAPM_VERSION, get_protocol

    t_start = time.perf_counter()
    console = console or Console()
    protocol = get_protocol(protocol)
    aapm = protocol.version == AAPM_VERSION
    dev = _resolve_device(device)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    out_dir = Path(out) if out is not None else default_out_dir(method, split)
    try:  # recorded in results.json: refuse now rather than after the whole run
        json.dumps(options or {}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"options must be JSON values (numbers, strings, lists, dicts): "
                         f"{e}") from None

    if lesions is not None:  # refuse a bad study folder now, not after the whole run
        from artifactgsi.lesion_study import LesionStudy

        LesionStudy(lesions, verify=False)
    mar: MARMethod = create_method(method, **(options or {}))
    name = mar.name or method
    pairs: PairsSplit = open_split(data, split, config=config, revision=revision,
                                   cache_dir=data_cache_dir, require_manifest=verify_manifest)
    if pairs.source.manifest_sha256 is None:
        console.print(f"[yellow]warning[/] {escape(str(data))}: no manifest.json; the "
                      "results record no manifest sha256 and cannot be compared with "
                      "confidence", highlight=False)
    if not aapm and not pairs.has_gsi:
        from .data import DatasetError

        raise DatasetError(f"{pairs.where} has no GSI images, which protocol "
                           f"{protocol.version} scores against; score it with --protocol "
                           f"{AAPM_VERSION}")
    train = (open_split(data, train_split, config=config, revision=revision,
                        cache_dir=data_cache_dir) if train_split else None)

    torch.manual_seed(seed)
    ctx = PrepareContext(device=dev, train_data=train,
                         cache_dir=_method_cache_dir(name), seed=seed)
    t0 = time.perf_counter()
    try:
        mar.prepare(ctx)
    except (Exception, SystemExit) as e:  # a method's exit() must not end the run silently
        raise MethodRunError(f"method {name!r}: prepare() raised {type(e).__name__}: {e}") \
            from e
    prepare_s = time.perf_counter() - t0
    k = int(getattr(mar, "neighbour_slices", 0) or 0)

    if aapm:  # the AAPM challenge's metrics only: no LPIPS, no segmenter
        lpips, segmenter = None, None
    lpips_metric, lpips_reason = _lpips_metric(lpips, dev)
    has_ideal = pairs.has_ideal
    seg_model, seg_record = (_segmenter(segmenter, pairs, dev) if not aapm else
                             (None, SegmentationRecord(available=False, reason="not part of "
                                                       f"protocol {AAPM_VERSION}")))
    if seg_record.note:
        console.print(f"[yellow]warning[/] {escape(seg_record.note)}", highlight=False)

    cache = _reference_cache(reference_cache, pairs, config, split, protocol, lpips_metric,
                             seg_record)

    def scorer(reference: str) -> Scorer:
        return Scorer(protocol, lpips=lpips_metric, clinical=clinical, device=dev,
                      reference=reference, states=cache)

    anchors = None
    if aapm:  # one comparison, against the protocol's reference (benchmark.protocol.aapm_run)
        from .protocol.aapm_run import AAPMAnchors

        anchors = AAPMAnchors(protocol, split=pairs, device=dev, seed=seed)
        scorers = {anchors.comparison: Scorer(protocol, lpips=None, clinical=False, device=dev,
                                              reference=anchors.kind, states=cache,
                                              resources={"aapm": anchors})}
    else:
        scorers = {METHOD_VS_GSI: scorer("gsi")}
    if has_ideal and not aapm:
        scorers[METHOD_VS_IDEAL] = scorer("ideal")
        scorers[GSI_VS_IDEAL] = scorer("ideal")

    n_total = len(pairs) if limit is None else min(limit, len(pairs))
    # Everything is written into a staging folder next to out/ and moved into place only
    # when the run succeeded, so a failed run leaves the previous outputs as they were (or
    # nothing), never a mix of old files beside no results.json.
    stage = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{time.time_ns()}"
    stage.mkdir(parents=True)
    if anchors is not None:
        anchors.open(stage)
    try:
        writer = _PredictionWriter(stage / "predictions"
                                   / f"{_safe_name(split)}-00000-of-00001.parquet")
        picker = _FigurePicker(FIGURE_SLICES)
        slices: list[SliceRecord] = []
        reduce_s = score_s = 0.0
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, disable=not verbose, transient=False)
        try:
            with progress:
                task = progress.add_task(escape(f"{name} on {split}"), total=n_total)
                for batch in pairs.iter_batches(batch_size, limit, neighbour_slices=k):
                    pred_hu, dt = _reduce(mar, name, batch.input, dev)
                    reduce_s += dt
                    pred_i16 = pred_hu.numpy()[:, 0].astype(np.int16)
                    if save_predictions:
                        writer.write(batch.input.patient_id, batch.input.slice_index, pred_i16)
                    t0 = time.perf_counter()
                    records = (anchors.score_batch(scorers[anchors.comparison], batch, pred_hu)
                               if anchors is not None
                               else _score_batch(batch, pred_hu, scorers, cache))
                    if seg_model is not None:
                        _segment_batch(seg_model, batch, pred_hu, records, dev, cache,
                                       seg_record)
                    cache.release(set(batch.input.patient_id))
                    slices.extend(records)
                    score_s += time.perf_counter() - t0
                    if figure and not aapm:
                        _offer_figure(picker, batch, pred_i16, len(slices) - batch.input.batch_size)
                    progress.advance(task, batch.input.batch_size)
            predictions = writer.close(stage) if save_predictions else None
            aapm_files = anchors.finish(stage, name, figure) if anchors is not None else []
        except BaseException:
            writer.abort()
            if anchors is not None:
                anchors.abort()
            raise
        finally:
            cache.close()  # what was computed is kept, also when the run stopped early

        declared = metrics_for_protocol(protocol.version)
        missing: dict[str, str] = {}
        for sc in scorers.values():
            for k_, why in sc.missing.items():
                missing.setdefault(k_, why)
        # Every declared metric is defined in the file: computed, or missing with its reason.
        metric_defs = {k_: MetricDefinition.from_spec(spec_)
                       for k_, spec_ in declared.items()
                       if any(k_ in sc.metrics for sc in scorers.values()) or k_ in missing
                       or (spec_.group == "segmentation" and seg_model is not None)}
        if lpips_reason is not None and "lpips" in missing:
            missing["lpips"] = lpips_reason
        if not clinical and not aapm:
            for k_, spec in declared.items():
                if spec.group == "clinical":
                    missing[k_] = "clinical metrics disabled by the user (--no-clinical)"
        no_ideal = ("the split has no ideal images (real data: only simulated data has the "
                    "artifact-free ground truth)")
        comparisons: dict[str, ComparisonRecord] = (
            anchors.comparisons(scorers[anchors.comparison]) if anchors is not None else {})
        for key, (scored, reference) in COMPARISONS.items():
            if anchors is not None or key == METHOD_VS_REFERENCE:
                continue  # aapm-ctmar-2024 has one comparison; marbench-v1 no `reference`
            sc = scorers.get(key)
            n = sum(1 for s in slices if key in s.scores)
            if sc is None or n == 0:
                reason = no_ideal if not has_ideal else \
                    "none of the scored slices has an ideal image"
                comparisons[key] = ComparisonRecord(scored=scored, reference=reference,
                                                    available=False, reason=reason, n_slices=0)
            else:
                comparisons[key] = ComparisonRecord(scored=scored, reference=reference,
                                                    available=True, n_slices=n,
                                                    summary=_summaries(sc), missing=dict(missing))

        detect = None
        if lesions is not None:
            detect, detect_defs = _detect(lesions, mar, dev, batch_size)
            metric_defs.update(detect_defs)
        metric_order = list(declared)
        atomic_write_text(stage / "per_slice.csv", _per_slice_csv(slices, metric_order))
        fig_path = (_write_figure(picker.chosen(), slices, name, stage / "figure.png")
                    if figure and not aapm else
                    (stage / "figure.png" if aapm and "figure.png" in aapm_files else None))

        results = Results(
            created_utc=datetime.now(timezone.utc),  # noqa: UP017 (py3.10 has no datetime.UTC)
            protocol=ProtocolRecord(version=protocol.version,
                                    settings=(protocol.to_dict() if anchors is None else
                                              {**protocol.to_dict(), "run": anchors.settings()}),
                                    lpips_weights_fingerprint=(lpips_metric.weights_fingerprint
                                                               if lpips_metric else None)),
            dataset=DatasetRecord(
                source=pairs.source.source, repo_id=pairs.source.repo_id,
                revision=pairs.source.revision, path=str(pairs.source.folder), config=config,
                split=split, manifest_sha256=pairs.source.manifest_sha256,
                files=[DataFileRecord(path=f.path, sha256=f.sha256, bytes=f.bytes, rows=f.rows)
                       for f in pairs.files],
                n_slices_split=len(pairs), n_slices_scored=len(slices), limit=limit,
                has_ideal=has_ideal),
            method=MethodRecord(name=name, requested=method,
                                target=f"{type(mar).__module__}:{type(mar).__qualname__}",
                                version=str(getattr(mar, "version", "0")),
                                weights_sha256=getattr(mar, "weights_sha256", None),
                                neighbour_slices=k, options=mar.effective_options()),
            code=code_record(),
            hardware=hardware_record(dev),
            timing=TimingRecord(prepare_s=prepare_s, reduce_s=reduce_s, score_s=score_s,
                                total_s=time.perf_counter() - t_start,
                                reduce_ms_per_slice=1000.0 * reduce_s / max(len(slices), 1),
                                reference_states_reused=cache.hits,
                                reference_states_computed=cache.misses),
            metrics=metric_defs,
            comparisons=comparisons,
            per_slice=slices,
            predictions=predictions,
            segmentation=_segmentation_record(seg_record, slices),
            figure=None if fig_path is None else fig_path.relative_to(stage).as_posix(),
            detect=detect,
        )
        results.save(stage / "results.json")
        _publish(stage, out_dir)
    finally:  # after _publish the staging folder is gone; else it is removed
        shutil.rmtree(stage, ignore_errors=True)
    if verbose:
        console.print(summary_table(results))
        by_reason: dict[str, list[str]] = {}
        for key, why in missing.items():
            if key in results.metrics:  # only the protocol's own metrics
                by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            console.print(f"[yellow]missing[/] {', '.join(keys)}: {escape(why)}",
                          highlight=False)
        seg = results.segmentation
        if seg is not None and seg.available:
            parts = [f"{image} {_fmt(v.get('miou'), 3)}" for image, v in seg.summary.items()]
            console.print("segmentation mIoU (frozen segmenter, dataset level): "
                          + ", ".join(parts), highlight=False)
        elif seg is not None and not aapm:
            console.print(f"[yellow]missing[/] segmentation: {escape(seg.reason or '')}",
                          highlight=False)
        console.print(escape(cache.describe()) + (f" ({escape(cache.note)})" if cache.note
                                                   else ""), highlight=False)
        console.print(f"results: {escape(str(out_dir / 'results.json'))}", highlight=False)
    return results


def _detect(lesions: str | Path, mar: MARMethod, dev: torch.device, batch_size: int
            ) -> tuple[DetectRecord, dict[str, MetricDefinition]]:
    """The prepared method on a lesion study (:mod:`benchmark.detect`): the ``detect`` block
    and the definitions of the registry's ``detect`` metrics."""
    from .detect.study import detect_record
    from .metrics.registry import metrics_in_group

    t0 = time.perf_counter()
    block = detect_record(lesions, mar, device=str(dev), batch_size=batch_size, prepared=True)
    record = DetectRecord(**block, seconds=round(time.perf_counter() - t0, 2))
    return record, {k: MetricDefinition.from_spec(s)
                    for k, s in metrics_in_group("detect").items()}


#: Environment variable naming the default segmenter (model folder or Hub repo id).
SEGMENTER_ENV = "MARBENCH_SEGMENTER"


def _segmenter(source: str | Path | None, pairs: PairsSplit, dev: torch.device
               ) -> tuple[Any, SegmentationRecord]:
    """(segmenter or None, the record's skeleton: identity, or why it is missing)."""
    source = source or os.environ.get(SEGMENTER_ENV) or None
    if source is None:
        return None, SegmentationRecord(
            available=False, reason="no segmenter given (--segmenter DIR_OR_REPO or "
            f"${SEGMENTER_ENV}; train one with `marbench train segmenter`)")
    if not pairs.has_labels:
        return None, SegmentationRecord(
            available=False, reason="the split has no labels: the segmentation scores need "
            "the dataset's `labels` column")
    from .segmentation import load_segmenter, segmenter_identity

    seg = load_segmenter(source)
    seg = seg.to(dev).eval()
    ident = segmenter_identity(seg)
    note = None
    trained_on, scored = ident.get("dataset_manifest_sha256"), pairs.source.manifest_sha256
    # Comparability by content: a segmenter that records the content of the split it trained
    # on is on this data when this dataset's train split has that content (a rebuild with
    # another pseudonymisation key has another manifest but the same images).
    from .data import split_content_sha256

    trained_content = ident.get("train_content_sha256")
    folder = getattr(pairs.source, "folder", None)
    here = split_content_sha256(folder, "pairs", "train") if folder is not None else None
    if trained_content and here:
        trained_on, scored = trained_content, here
    if trained_on and scored and trained_on != scored:
        # Legitimate (a cross-scanner set, a Hub segmenter), but the scores then measure the
        # segmenter's domain gap too: say so in the run and in results.json.
        note = (f"the segmenter {source} was trained on another dataset, or another build of "
                f"it (manifest sha256 "
                f"{trained_on[:12]}…, this one {scored[:12]}…); its IoU is comparable only "
                "between runs scored with this same segmenter on this same data")
    return seg, SegmentationRecord(available=True, segmenter=ident, note=note)


def _segment_batch(seg: Any, batch: PairsBatch, pred_hu: torch.Tensor,
                   records: list[SliceRecord], dev: torch.device,
                   cache: ReferenceCache | None = None,
                   record: SegmentationRecord | None = None) -> None:
    """Per-class intersection / union counts of the segmenter on the method's output, GSI
    and (where present) the ideal image, against the labels, into ``records``. The counts on
    GSI and the ideal image are reference states (the same for every method): with a
    ``cache`` they are computed once per dataset revision and segmenter."""
    from .metrics.segmentation import count_rows, slice_counts

    if batch.labels is None or batch.has_labels is None:
        return
    sel = [i for i in range(len(records)) if bool(batch.has_labels[i])]
    if not sel:
        return
    t = torch.tensor(sel)
    labels = batch.labels[t]
    images = {"method": (sel, pred_hu[t]), "gsi": (sel, batch.gsi_hu[t])}
    if batch.ideal_hu is not None:
        both = [i for i in sel if bool(batch.has_ideal[i])]
        if both:
            images["ideal"] = (both, batch.ideal_hu[torch.tensor(both)])
    seg_id = (record.segmenter.get("weights_sha256") if record is not None else None) or ""

    def counts(idx: list[int], hu: torch.Tensor) -> list[dict[str, float]]:
        lab = labels if idx is sel else batch.labels[torch.tensor(idx)]
        with torch.no_grad():
            pred = seg.predict(hu.to(dev, torch.float32)).cpu()
        inter, union = slice_counts(pred, lab)
        return count_rows(inter, union)

    for image, (idx, hu) in images.items():
        if image == "method" or cache is None or not seg_id:
            rows = counts(idx, hu)
        else:
            keys = [(batch.input.patient_id[i], int(batch.input.slice_index[i])) for i in idx]
            state_key = f"segmentation-counts:{seg_id}"
            got = cache.get_many(state_key, image, keys)
            todo = [j for j, g in enumerate(got) if g is None]
            if todo:
                # The whole batch, as the uncached path does, so counts match it exactly.
                fresh = counts(idx, hu)
                cache.put_many(state_key, image, [keys[j] for j in todo],
                               [{k: np.asarray(v) for k, v in fresh[j].items()} for j in todo])
                rows = fresh
            else:
                rows = [{k: float(v) for k, v in g.items()} for g in got]  # type: ignore[union-attr]
        for i, row in zip(idx, rows, strict=True):
            if records[i].segmentation is None:
                records[i].segmentation = {}
            records[i].segmentation[image] = row


def _segmentation_record(skeleton: SegmentationRecord,
                         slices: list[SliceRecord]) -> SegmentationRecord:
    if not skeleton.available:
        return skeleton
    summary, by_implant, per_patient = segmentation_summaries(slices)
    n = sum(1 for s in slices if s.segmentation)
    if n == 0:
        return SegmentationRecord(available=False, segmenter=skeleton.segmenter,
                                  reason="none of the scored slices has labels")
    return skeleton.model_copy(update={"summary": summary, "by_implant": by_implant,
                                       "per_patient": per_patient, "n_slices": n})


#: What a run writes into its output folder.
RUN_OUTPUTS = ("results.json", "per_slice.csv", "figure.png", "predictions",
               "aapm_structures.parquet", "structures.png")


def _publish(stage: Path, out_dir: Path) -> None:
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


def _method_cache_dir(name: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "artifactgsi" / "methods" / _safe_name(name)


def _reduce(mar: MARMethod, name: str, inp: MARInput,
            dev: torch.device) -> tuple[torch.Tensor, float]:
    """Run ``reduce`` on ``dev`` -> ((B, 1, H, W) float32 HU rounded to integers, on CPU, s).

    Runs under ``torch.no_grad()``; a method that optimises at test time wraps its work in
    ``torch.enable_grad()``.
    """
    batch = inp.to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = mar.reduce(batch)
    except (Exception, SystemExit) as e:  # a method's exit() must not end the run silently
        slices = ", ".join(inp.describe_slice(i) for i in range(inp.batch_size))
        raise MethodRunError(f"method {name!r}: reduce() raised {type(e).__name__} on "
                             f"{slices}: {e}") from e
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    img = validate_output(name, batch, out)
    # Integer HU, as the dataset stores HU and the predictions file holds them: scores are
    # computed from exactly what is written (round half to even, int16 range).
    return img.detach().cpu().round().clamp(-32768, 32767), dt


def _score_batch(batch: PairsBatch, pred_hu: torch.Tensor, scorers: dict[str, Scorer],
                 cache: ReferenceCache | None = None) -> list[SliceRecord]:
    inp = batch.input
    b = inp.batch_size
    ids = [inp.describe_slice(i) for i in range(b)]
    keys = [(inp.patient_id[i], int(inp.slice_index[i])) for i in range(b)]
    scores: list[dict[str, dict[str, float]]] = [{} for _ in range(b)]
    memo = BatchMemo()  # the method's derived quantities, shared by its two comparisons

    def put(key: str, idx: list[int], rows: list[dict[str, float | str]]) -> None:
        for i, r in zip(idx, rows, strict=True):
            scores[i][key] = {m: float(v) for m, v in r.items() if m != "slice"}

    mask, spacing = inp.metal_mask, inp.pixel_spacing_mm
    put(METHOD_VS_GSI, list(range(b)),
        scorers[METHOD_VS_GSI].update(pred_hu, batch.gsi_hu, metal_mask=mask,
                                      pixel_spacing_mm=spacing, slice_ids=ids, keys=keys,
                                      memo=memo, rows=range(b), batch_size=b))
    if batch.ideal_hu is not None and METHOD_VS_IDEAL in scorers:
        sel = [i for i in range(b) if bool(batch.has_ideal[i])]
        t = torch.tensor(sel)
        ideal = batch.ideal_hu[t]
        kw = {"metal_mask": mask[t], "pixel_spacing_mm": spacing[t],
              "slice_ids": [ids[i] for i in sel], "keys": [keys[i] for i in sel]}
        put(METHOD_VS_IDEAL, sel, scorers[METHOD_VS_IDEAL].update(
            pred_hu[t], ideal, memo=memo, rows=sel, batch_size=b, **kw))
        put(GSI_VS_IDEAL, sel, _gsi_vs_ideal(scorers[GSI_VS_IDEAL], batch.gsi_hu[t], ideal,
                                             cache, **kw))
    return [SliceRecord(patient_id=inp.patient_id[i], slice_index=int(inp.slice_index[i]),
                        z_mm=batch.z_mm[i], implant_type=inp.implant_type[i],
                        metal_pixels=int(mask[i].sum()), scores=scores[i]) for i in range(b)]


def _gsi_vs_ideal(scorer: Scorer, gsi: torch.Tensor, ideal: torch.Tensor,
                  cache: ReferenceCache | None, *, keys: list[tuple[str, int]],
                  slice_ids: list[str], **kw: Any) -> list[dict[str, float | str]]:
    """GSI scored against the ideal image: the same for every method, so with a ``cache`` it
    is scored once per dataset revision (the whole batch, as the uncached path does)."""
    if cache is None or not keys:
        return scorer.update(gsi, ideal, keys=keys, slice_ids=slice_ids, **kw)
    names = list(scorer.metrics)
    state_key = "comparison:gsi_vs_ideal:" + ",".join(names)
    got = cache.get_many(state_key, "ideal", keys)
    if any(g is None for g in got):
        rows = scorer.update(gsi, ideal, keys=keys, slice_ids=slice_ids, **kw)
        todo = [j for j, g in enumerate(got) if g is None]
        cache.put_many(state_key, "ideal", [keys[j] for j in todo],
                       [{m: np.asarray(float(rows[j][m])) for m in names} for j in todo])
        return rows
    rows = [{"slice": sid, **{m: float(g[m]) for m in names}}  # type: ignore[index]
            for sid, g in zip(slice_ids, got, strict=True)]
    scorer.add_rows(rows)
    return rows


def _reference_cache(where: str | Path | None, pairs: PairsSplit, config: str, split: str,
                     protocol: Protocol, lpips_metric: LPIPSMetric | None,
                     seg_record: SegmentationRecord) -> ReferenceCache:
    """The reference cache of this dataset revision, split and protocol (in memory only when
    switched off or when the dataset has no manifest to key it)."""
    from .refcache import LIMIT_ENV, ReferenceCache, default_cache_root, source_fingerprint

    if where == "auto":
        root = default_cache_root()
    elif where is None or str(where).lower() == "off":
        root = None
    else:
        root = Path(where)
    manifest = pairs.source.manifest_sha256
    if manifest is None:
        root = None
    modules = {str(s.compute).partition(":")[0]
               for s in metrics_for_protocol(protocol.version, per_slice=True).values()}
    modules |= {"benchmark.metrics.protocol", "benchmark.metrics.compute",
                "benchmark.metrics.segmentation", __name__}
    try:
        gb = float(os.environ.get(LIMIT_ENV, "16"))
    except ValueError:
        raise ValueError(f"${LIMIT_ENV}={os.environ[LIMIT_ENV]!r}: give a size in GB") from None
    key = {"dataset_manifest_sha256": manifest, "config": config, "split": split,
           "protocol": protocol.to_dict(), "code": source_fingerprint(sorted(modules)),
           "lpips_weights": lpips_metric.weights_fingerprint if lpips_metric else None}
    return ReferenceCache(root, key, max_bytes=int(gb * 1e9))


def _offer_figure(picker: _FigurePicker, batch: PairsBatch, pred_i16: np.ndarray,
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
        picker.offer(_FigureSlice(key=key, patient_id=pid, slice_index=inp.slice_index[i],
                                  position=pos, images=images))


# ----------------------------------------------------------------------------- display


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
            txt = _fmt(s.mean, digits)
            if math.isfinite(s.std):
                txt += f" ± {_fmt(s.std, digits)}"
            if s.n_nan:
                txt += f" ({s.n_nan} undef.)"
            cells.append(txt)
        t.add_row(m, ("↑ " if d.higher_is_better else "↓ ") + d.unit, *cells)
    return t
