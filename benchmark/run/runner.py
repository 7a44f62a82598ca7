"""The run: :class:`RunOptions` (every setting besides the method and the data) and
:func:`run_benchmark`, in phases: open the method and the data, set up the scorers, score the
split batch by batch into a staging folder, assemble ``results.json``, publish."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import PairsSplit, open_split
from ..method import MARMethod, PrepareContext
from ..metrics import MARBENCH_V1, LPIPSMetric, Protocol, Scorer
from ..metrics.registry import metrics_for_protocol
from ..registry import create_method
from ..results import (
    COMPARISONS,
    GSI_VS_IDEAL,
    METHOD_VS_GSI,
    METHOD_VS_IDEAL,
    METHOD_VS_REFERENCE,
    ComparisonRecord,
    DataFileRecord,
    DatasetRecord,
    MethodRecord,
    MetricDefinition,
    ProtocolRecord,
    Results,
    SegmentationRecord,
    SliceRecord,
    TimingRecord,
    atomic_write_text,
)
from .calls import (
    MethodRunError,
    default_out_dir,
    method_cache_dir,
    reduce_batch,
    resolve_device,
    safe_name,
)
from .outputs import (
    FIGURE_SLICES,
    FigurePicker,
    PredictionWriter,
    fmt,
    offer_figure,
    per_slice_csv,
    publish,
    summary_table,
    write_figure,
)
from .provenance import code_record, hardware_record
from .scoring import (
    detect_block,
    load_segmenter_for,
    lpips_metric_for,
    reference_cache_for,
    score_batch,
    segment_batch,
    segmentation_record,
)


@dataclass(frozen=True)
class RunOptions:
    """Every setting of a run besides the method and the data (``marbench run``'s options).

    Attributes:
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
        patients: score only these patients' slices (of the first ``limit``): one task of a
            run sharded by patient (:mod:`benchmark.distributed`). The serial run's batches
            that hold them run whole, so every number is the serial run's; the other
            patients' slices in them are computed and dropped (``figure`` is not drawn).

    """

    split: str = "test"
    out: Path | str | None = None
    device: str | torch.device = "cpu"
    limit: int | None = None
    batch_size: int = 4
    save_predictions: bool = True
    lpips: str | Path | LPIPSMetric | None = "auto"
    config: str = "pairs"
    revision: str | None = None
    options: dict[str, Any] | None = None
    train_split: str | None = None
    seed: int = 0
    clinical: bool = True
    protocol: Protocol | Any = MARBENCH_V1
    figure: bool = True
    data_cache_dir: Path | str | None = None
    verbose: bool = True
    console: Any = None
    verify_manifest: bool = True
    segmenter: str | Path | None = None
    reference_cache: str | Path | None = "auto"
    lesions: str | Path | None = None
    patients: Collection[str] | None = None


def run_options(base: RunOptions | None = None, **settings: Any) -> RunOptions:
    """``base`` (default: the defaults) with ``settings`` replaced; an unknown name is a
    ``TypeError`` that lists the known ones."""
    known = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"run_benchmark: unknown setting(s) {unknown}; the settings are the "
                        f"fields of RunOptions: {sorted(known)}")
    return replace(base or RunOptions(), **settings)


def run_benchmark(method: str, data: str | Path, split: str | None = None,
                  out: Path | str | None = None, *, run: RunOptions | None = None,
                  **settings: Any) -> Results:
    """Run ``method`` over ``data``/``split``, score it, write ``out/``, return the results.

    Args:
        method: registered name (``marbench ls``) or ``"pkg.module:Class"``.
        data: built dataset folder or Hub dataset repo id (``org/name``).
        split, out: shorthands for the :class:`RunOptions` fields of the same names.
        run: the run's settings (:class:`RunOptions`); ``settings`` (its field names as
            keywords) replace fields of it.

    Raises:
        benchmark.registry.UnknownMethodError: unknown name (with "did you mean").
        benchmark.registry.UnknownOptionError: an option the method does not take.
        benchmark.data.DatasetError: no such dataset, config or split (lists what exists).
        benchmark.method.MethodOutputError: an output with the wrong shape / dtype or NaN,
            naming the method and the slices.
        MethodRunError: the method raised; the message names it and the slices.
    """

    if split is not None:
        settings["split"] = split
    if out is not None:
        settings["out"] = out
    return _Run(method, data, run_options(run, **settings)).execute()


class _Run:
    """One run, phase by phase (see :func:`run_benchmark`)."""

    def __init__(self, method: str, data: str | Path, o: RunOptions) -> None:
        from rich.console import Console

        from ..protocol import AAPM_VERSION, get_protocol

        self.t_start = time.perf_counter()
        self.method, self.data, self.o = method, data, o
        self.console = o.console or Console()
        self.protocol = get_protocol(o.protocol)
        self.aapm = self.protocol.version == AAPM_VERSION
        self.dev = resolve_device(o.device)
        if o.limit is not None and o.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {o.limit}")
        self.out_dir = Path(o.out) if o.out is not None else default_out_dir(method, o.split)
        try:  # recorded in results.json: refuse now rather than after the whole run
            json.dumps(o.options or {}, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"options must be JSON values (numbers, strings, lists, dicts): "
                             f"{e}") from None
        if o.lesions is not None:  # refuse a bad study folder now, not after the whole run
            from artifactgsi.lesion_study import LesionStudy

            LesionStudy(o.lesions, verify=False)

    def _warn(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning[/] {escape(text)}", highlight=False)

    # -- phase 1: the method and the data
    def open(self) -> None:
        from ..protocol import AAPM_VERSION

        o = self.o
        self.mar: MARMethod = create_method(self.method, **(o.options or {}))
        self.name = self.mar.name or self.method
        self.pairs: PairsSplit = open_split(self.data, o.split, config=o.config,
                                            revision=o.revision, cache_dir=o.data_cache_dir,
                                            require_manifest=o.verify_manifest)
        if self.pairs.source.manifest_sha256 is None:
            self._warn(f"{self.data}: no manifest.json; the results record no manifest "
                       "sha256 and cannot be compared with confidence")
        if not self.aapm and not self.pairs.has_gsi:
            from ..data import DatasetError

            raise DatasetError(f"{self.pairs.where} has no GSI images, which protocol "
                               f"{self.protocol.version} scores against; score it with "
                               f"--protocol {AAPM_VERSION}")
        train = (open_split(self.data, o.train_split, config=o.config, revision=o.revision,
                            cache_dir=o.data_cache_dir) if o.train_split else None)
        torch.manual_seed(o.seed)
        ctx = PrepareContext(device=self.dev, train_data=train,
                             cache_dir=method_cache_dir(self.name), seed=o.seed)
        t0 = time.perf_counter()
        try:
            self.mar.prepare(ctx)
        except (Exception, SystemExit) as e:  # a method's exit() must not end the run silently
            raise MethodRunError(f"method {self.name!r}: prepare() raised "
                                 f"{type(e).__name__}: {e}") from e
        self.prepare_s = time.perf_counter() - t0
        self.k = int(getattr(self.mar, "neighbour_slices", 0) or 0)

    # -- phase 2: the scorers, the segmenter and the reference cache
    def setup_scoring(self) -> None:
        from ..protocol import AAPM_VERSION

        o = self.o
        lpips, segmenter = (None, None) if self.aapm else (o.lpips, o.segmenter)
        self.lpips_metric, self.lpips_reason = lpips_metric_for(lpips, self.dev)
        self.has_ideal = self.pairs.has_ideal
        if self.aapm:  # the AAPM challenge's metrics only: no LPIPS, no segmenter
            self.seg_model = None
            self.seg_record = SegmentationRecord(available=False, reason="not part of "
                                                 f"protocol {AAPM_VERSION}")
        else:
            self.seg_model, self.seg_record = load_segmenter_for(segmenter, self.pairs,
                                                                 self.dev)
        if self.seg_record.note:
            self._warn(self.seg_record.note)
        self.cache = reference_cache_for(o.reference_cache, self.pairs, o.config, o.split,
                                         self.protocol, self.lpips_metric, self.seg_record)
        self.anchors = None
        if self.aapm:  # one comparison, against the protocol's reference
            from ..protocol.aapm_run import AAPMAnchors

            self.anchors = AAPMAnchors(self.protocol, split=self.pairs, device=self.dev,
                                       seed=o.seed)
            self.scorers = {self.anchors.comparison: Scorer(
                self.protocol, lpips=None, clinical=False, device=self.dev,
                reference=self.anchors.kind, states=self.cache,
                resources={"aapm": self.anchors})}
            return

        def scorer(reference: str) -> Scorer:
            return Scorer(self.protocol, lpips=self.lpips_metric, clinical=o.clinical,
                          device=self.dev, reference=reference, states=self.cache)

        self.scorers = {METHOD_VS_GSI: scorer("gsi")}
        if self.has_ideal:
            self.scorers[METHOD_VS_IDEAL] = scorer("ideal")
            self.scorers[GSI_VS_IDEAL] = scorer("ideal")

    # -- phase 3: the split, batch by batch
    def score(self, stage: Path) -> None:
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        o, name = self.o, self.name
        n_total = len(self.pairs) if o.limit is None else min(o.limit, len(self.pairs))
        batches = self.pairs.iter_batches(o.batch_size, o.limit, neighbour_slices=self.k)
        keep = None
        if o.patients is not None:
            # The serial run's batches that hold these patients' slices, whole: the method and
            # the metrics see what they see in the serial run (a result may depend on a batch's
            # other slices); the other patients' slices are computed and dropped.
            keep = set(o.patients)
            order = self.pairs.order[:n_total]
            chunks = [order[i:i + o.batch_size] for i in range(0, n_total, o.batch_size)]
            chunks = [c for c in chunks if any(self.pairs.slice_id(r)[0] in keep for r in c)]
            n_total = sum(len(c) for c in chunks)
            batches = (self.pairs.batch(c, self.k) for c in chunks)
        writer = PredictionWriter(stage / "predictions"
                                  / f"{safe_name(o.split)}-00000-of-00001.parquet")
        self.picker = FigurePicker(FIGURE_SLICES)
        self.slices: list[SliceRecord] = []
        self.reduce_s = self.score_s = 0.0
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, disable=not o.verbose, transient=False)
        anchors = self.anchors
        if anchors is not None:
            anchors.open(stage)
        try:
            with progress:
                task = progress.add_task(escape(f"{name} on {o.split}"), total=n_total)
                for batch in batches:
                    pred_hu, dt = reduce_batch(self.mar, name, batch.input, self.dev)
                    self.reduce_s += dt
                    pred_i16 = pred_hu.numpy()[:, 0].astype(np.int16)
                    ids, sidx = batch.input.patient_id, batch.input.slice_index
                    mine = None if keep is None else [i for i, p in enumerate(ids) if p in keep]
                    if o.save_predictions:
                        if mine is None:
                            writer.write(ids, sidx, pred_i16)
                        else:
                            writer.write([ids[i] for i in mine], [sidx[i] for i in mine],
                                         pred_i16[mine])
                    t0 = time.perf_counter()
                    records = (anchors.score_batch(self.scorers[anchors.comparison], batch,
                                                   pred_hu)
                               if anchors is not None
                               else score_batch(batch, pred_hu, self.scorers, self.cache))
                    if self.seg_model is not None:
                        segment_batch(self.seg_model, batch, pred_hu, records, self.dev,
                                      self.cache, self.seg_record)
                    self.cache.release(set(batch.input.patient_id))
                    self.slices.extend(records if mine is None else [records[i] for i in mine])
                    self.score_s += time.perf_counter() - t0
                    if o.figure and not self.aapm and mine is None:
                        offer_figure(self.picker, batch, pred_i16,
                                     len(self.slices) - batch.input.batch_size)
                    progress.advance(task, batch.input.batch_size)
            self.predictions = writer.close(stage) if o.save_predictions else None
            self.aapm_files = (anchors.finish(stage, name, o.figure) if anchors is not None
                               else [])
        except BaseException:
            writer.abort()
            if anchors is not None:
                anchors.abort()
            raise
        finally:
            self.cache.close()  # what was computed is kept, also when the run stopped early

    # -- phase 4: results.json
    def _metrics(self) -> tuple[dict[str, MetricDefinition], dict[str, str]]:
        """Every declared metric, computed or missing with its reason."""
        declared = metrics_for_protocol(self.protocol.version)
        missing: dict[str, str] = {}
        for sc in self.scorers.values():
            for k, why in sc.missing.items():
                missing.setdefault(k, why)
        defs = {k: MetricDefinition.from_spec(spec) for k, spec in declared.items()
                if any(k in sc.metrics for sc in self.scorers.values()) or k in missing
                or (spec.group == "segmentation" and self.seg_model is not None)}
        if self.lpips_reason is not None and "lpips" in missing:
            missing["lpips"] = self.lpips_reason
        if not self.o.clinical and not self.aapm:
            for k, spec in declared.items():
                if spec.group == "clinical":
                    missing[k] = "clinical metrics disabled by the user (--no-clinical)"
        return defs, missing

    def _comparisons(self, missing: dict[str, str]) -> dict[str, ComparisonRecord]:
        if self.anchors is not None:  # aapm-ctmar-2024 has one comparison
            return self.anchors.comparisons(self.scorers[self.anchors.comparison])
        no_ideal = ("the split has no ideal images (real data: only simulated data has the "
                    "artifact-free ground truth)")
        out: dict[str, ComparisonRecord] = {}
        for key, (scored, reference) in COMPARISONS.items():
            if key == METHOD_VS_REFERENCE:
                continue  # marbench-v1 has no `reference` comparison
            sc = self.scorers.get(key)
            n = sum(1 for s in self.slices if key in s.scores)
            if sc is None or n == 0:
                reason = no_ideal if not self.has_ideal else \
                    "none of the scored slices has an ideal image"
                out[key] = ComparisonRecord(scored=scored, reference=reference,
                                            available=False, reason=reason, n_slices=0)
            else:
                out[key] = ComparisonRecord(scored=scored, reference=reference,
                                            available=True, n_slices=n,
                                            summary=sc.summary(), missing=dict(missing))
        return out

    def assemble(self, stage: Path) -> Results:
        o, mar, pairs = self.o, self.mar, self.pairs
        metric_defs, self.missing = self._metrics()
        comparisons = self._comparisons(self.missing)
        detect = None
        if o.lesions is not None:
            detect, detect_defs = detect_block(o.lesions, mar, self.dev, o.batch_size)
            metric_defs.update(detect_defs)
        atomic_write_text(stage / "per_slice.csv",
                          per_slice_csv(self.slices,
                                        list(metrics_for_protocol(self.protocol.version))))
        fig_path = (write_figure(self.picker.chosen(), self.slices, self.name,
                                 stage / "figure.png")
                    if o.figure and not self.aapm else
                    (stage / "figure.png" if self.aapm and "figure.png" in self.aapm_files
                     else None))
        settings = self.protocol.to_dict()
        if self.anchors is not None:
            settings = {**settings, "run": self.anchors.settings()}
        n = len(self.slices)
        return Results(
            created_utc=datetime.now(timezone.utc),  # noqa: UP017 (py3.10 has no datetime.UTC)
            protocol=ProtocolRecord(version=self.protocol.version, settings=settings,
                                    lpips_weights_fingerprint=(
                                        self.lpips_metric.weights_fingerprint
                                        if self.lpips_metric else None)),
            dataset=DatasetRecord(
                source=pairs.source.source, repo_id=pairs.source.repo_id,
                revision=pairs.source.revision, path=str(pairs.source.folder),
                config=o.config, split=o.split, manifest_sha256=pairs.source.manifest_sha256,
                files=[DataFileRecord(path=f.path, sha256=f.sha256, bytes=f.bytes, rows=f.rows)
                       for f in pairs.files],
                n_slices_split=len(pairs), n_slices_scored=n, limit=o.limit,
                has_ideal=self.has_ideal),
            method=MethodRecord(name=self.name, requested=self.method,
                                target=f"{type(mar).__module__}:{type(mar).__qualname__}",
                                version=str(getattr(mar, "version", "0")),
                                weights_sha256=getattr(mar, "weights_sha256", None),
                                neighbour_slices=self.k, options=mar.effective_options()),
            code=code_record(),
            hardware=hardware_record(self.dev),
            timing=TimingRecord(prepare_s=self.prepare_s, reduce_s=self.reduce_s,
                                score_s=self.score_s,
                                total_s=time.perf_counter() - self.t_start,
                                reduce_ms_per_slice=1000.0 * self.reduce_s / max(n, 1),
                                reference_states_reused=self.cache.hits,
                                reference_states_computed=self.cache.misses),
            metrics=metric_defs,
            comparisons=comparisons,
            per_slice=self.slices,
            predictions=self.predictions,
            segmentation=segmentation_record(self.seg_record, self.slices),
            figure=None if fig_path is None else fig_path.relative_to(stage).as_posix(),
            detect=detect,
        )

    # -- phase 5: what the user sees
    def report(self, results: Results) -> None:
        from rich.markup import escape

        console = self.console
        console.print(summary_table(results))
        by_reason: dict[str, list[str]] = {}
        for key, why in self.missing.items():
            if key in results.metrics:  # only the protocol's own metrics
                by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            console.print(f"[yellow]missing[/] {', '.join(keys)}: {escape(why)}",
                          highlight=False)
        seg = results.segmentation
        if seg is not None and seg.available:
            parts = [f"{image} {fmt(v.get('miou'), 3)}" for image, v in seg.summary.items()]
            console.print("segmentation mIoU (frozen segmenter, dataset level): "
                          + ", ".join(parts), highlight=False)
        elif seg is not None and not self.aapm:
            console.print(f"[yellow]missing[/] segmentation: {escape(seg.reason or '')}",
                          highlight=False)
        note = f" ({escape(self.cache.note)})" if self.cache.note else ""
        console.print(escape(self.cache.describe()) + note, highlight=False)
        console.print(f"results: {escape(str(self.out_dir / 'results.json'))}",
                      highlight=False)

    def execute(self) -> Results:
        self.open()
        self.setup_scoring()
        # Everything is written into a staging folder next to out/ and moved into place only
        # when the run succeeded, so a failed run leaves the previous outputs as they were (or
        # nothing), never a mix of old files beside no results.json.
        out_dir = self.out_dir
        stage = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{time.time_ns()}"
        stage.mkdir(parents=True)
        try:
            self.score(stage)
            results = self.assemble(stage)
            results.save(stage / "results.json")
            publish(stage, out_dir)
        finally:  # after publish the staging folder is gone; else it is removed
            shutil.rmtree(stage, ignore_errors=True)
        if self.o.verbose:
            self.report(results)
        return results
