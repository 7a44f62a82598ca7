"""``marbench run`` sharded by patient: one task per test patient on Dask, one merged result.

:func:`run_distributed` is what ``marbench run --workers N`` (a local Dask cluster of N
single-threaded processes) and ``marbench run --scheduler ADDRESS`` (a running Dask cluster;
see :mod:`artifactgsi.workers`) call::

    results = run_distributed("li", "path/to/ArtifactGSI", out="results/li", workers=2)

Each task is :func:`benchmark.run.run_benchmark` on one patient's slices (the same method,
options, protocol, segmenter and data), written to its own run folder under
``OUT/../.<name>.parts/<patient>/`` (atomically, as every run). A task runs the serial run's
batches that hold its patient's slices, whole, and keeps its own slices: the method and the
metrics see exactly the serial run's batches, so no number can depend on the batch layout.
The merge then writes ``OUT`` as the serial run does: per-slice values in benchmark order,
every summary recomputed from them (:func:`benchmark.results.summarize` is exact and
order-independent), the predictions rewritten into one Parquet file in the serial run's
batches (the same bytes), the same figure, the same per-slice CSV. ``results.json`` equals the
serial run's except the fields that describe the run itself: ``created_utc``, ``hardware``
(the worker of the first patient) and ``timing`` (seconds summed over the tasks; ``total_s``
is the wall time). The protocol ``aapm-ctmar-2024`` and lesion studies score a split as a
whole and run serially only.

Workers that die are replaced and their patients run again (nothing half-written is kept:
each part is published by rename). A rerun with the same settings keeps the finished
patients (``resume``); the parts folder is removed when the merged run is written.
GPUs: one worker per GPU (``CUDA_VISIBLE_DEVICES`` per ``dask worker``) with ``--device
cuda``; memory-heavy methods on one multi-GPU machine run under ``accelerate launch`` as
training does (docs/scale.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from artifactgsi.fileio import write_text_atomic
from artifactgsi.workers import check_workers, run_tasks

from .errors import MARBenchError
from .results import (
    COMPARISONS,
    ComparisonRecord,
    Results,
    SegmentationRecord,
    SliceRecord,
    TimingRecord,
    atomic_write_text,
    summarize,
)


class PartsError(MARBenchError, RuntimeError):
    """The per-patient parts of a run do not fit together (other settings or data)."""


#: Options of :func:`benchmark.run.run_benchmark` that the parts share as given.
_SHARED = ("device", "limit", "batch_size", "lpips", "config", "revision", "options",
           "train_split", "seed", "clinical", "protocol", "data_cache_dir", "verify_manifest",
           "segmenter", "reference_cache")


def parts_dir(out_dir: Path) -> Path:
    """Where the per-patient runs of ``out_dir`` live until the merge (same file system)."""
    return out_dir.parent / f".{out_dir.name}.parts"


def _request_fingerprint(method: str, data: str | Path, split: str, manifest: str | None,
                         shared: dict[str, Any]) -> str:
    def plain(v: Any) -> Any:
        if hasattr(v, "to_dict"):
            return v.to_dict()
        return str(v) if isinstance(v, Path) else v

    blob = json.dumps({"method": method, "data": str(data), "split": split,
                       "manifest_sha256": manifest,
                       **{k: plain(v) for k, v in sorted(shared.items())}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _run_part(args: tuple[str, str, str, str, str, dict[str, Any]]) -> int:
    """One patient's run, in a worker (or this process); returns its slice count."""
    from rich.console import Console

    from .run import run_benchmark

    method, data, split, patient, out, shared = args
    quiet = Console(file=io.StringIO())
    res = run_benchmark(method, data, split=split, out=Path(out), patients=[patient],
                        figure=False, verbose=False, console=quiet, save_predictions=True,
                        **shared)
    return len(res.per_slice)


def run_distributed(method: str, data: str | Path, split: str = "test",
                    out: Path | str | None = None, *, workers: int = 2,
                    scheduler: str | None = None, resume: bool = True,
                    save_predictions: bool = True, figure: bool = True, verbose: bool = True,
                    console: Any = None, keep_parts: bool = False, **run_options: Any
                    ) -> Results:
    """Run ``method`` over ``data``/``split`` as one task per patient; merge into ``out``.

    Args:
        method, data, split, out, save_predictions, figure, verbose, console: as for
            :func:`benchmark.run.run_benchmark`.
        workers: local Dask worker processes (one thread each) when ``scheduler`` is None.
        scheduler: address or scheduler file of a running Dask cluster; its workers must see
            ``data`` (a folder) and ``out`` at the same paths.
        resume: keep the patients finished by an interrupted run with the same settings.
        keep_parts: keep the per-patient run folders after the merge.
        run_options: the other options of :func:`~benchmark.run.run_benchmark` (device,
            limit, batch_size, lpips, options, segmenter, ...), passed to every part.

    Raises:
        PartsError: parts that disagree (the data or the method changed between runs).
        artifactgsi.workers.TaskError: unreachable cluster, or a patient whose workers died
            repeatedly; any error of a part (a method error) is raised as in a serial run.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .data import open_split
    from .protocol import AAPM_VERSION, get_protocol
    from .run import default_out_dir

    if run_options.pop("lesions", None) is not None:
        raise PartsError("lesion detectability is measured over the whole lesion study: run "
                         "--lesions without --workers / --scheduler")
    unknown = set(run_options) - set(_SHARED)
    if unknown:
        raise TypeError(f"run_distributed: unknown option(s) {', '.join(sorted(unknown))}")
    if "protocol" in run_options:
        version = get_protocol(run_options["protocol"]).version
        if version == AAPM_VERSION:
            raise PartsError(f"protocol {AAPM_VERSION} scores the split as one case set (its "
                             "0-4 anchors and files are per run): run it without --workers / "
                             "--scheduler")
    check_workers(workers, scheduler)
    t_start = time.perf_counter()
    console = console or Console()
    out_dir = Path(out) if out is not None else default_out_dir(method, split)
    shared = {k: run_options[k] for k in _SHARED if k in run_options}
    limit = shared.get("limit")
    batch_size = shared.get("batch_size", 4)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = open_split(data, split, config=shared.get("config", "pairs"),
                       revision=shared.get("revision"), cache_dir=shared.get("data_cache_dir"),
                       require_manifest=shared.get("verify_manifest", True))
    rows = pairs.order[:limit] if limit is not None else pairs.order
    patients: list[str] = []
    expected: dict[str, list[int]] = {}
    for r in rows:
        pid, s = pairs.slice_id(r)
        if pid not in expected:
            patients.append(pid)
            expected[pid] = []
        expected[pid].append(s)

    root = parts_dir(out_dir)
    request = _request_fingerprint(method, data, split, pairs.source.manifest_sha256, shared)
    stamp = root / "request.json"
    if root.exists() and not (resume and stamp.is_file()
                              and json.loads(stamp.read_text()).get("request") == request):
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, json.dumps({"request": request, "method": method,
                                         "data": str(data), "split": split}) + "\n")
    for stale in root.glob(".*partial-*"):  # a part killed while it wrote
        shutil.rmtree(stale, ignore_errors=True)
    folder = {pid: root / _part_name(pid) for pid in patients}
    todo = [pid for pid in patients if not (folder[pid] / "results.json").is_file()]

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, disable=not verbose, transient=False) as prog:
        task = prog.add_task(escape(f"{method} on {split} (patients)"), total=len(patients),
                             completed=len(patients) - len(todo))
        run_tasks(_run_part, [(method, str(data), split, pid, str(folder[pid]), shared)
                              for pid in todo], todo, workers=workers, scheduler=scheduler,
                  on_done=lambda i, n: prog.advance(task))
    for stale in root.glob(".*partial-*"):  # left by a worker killed mid-part (run again)
        shutil.rmtree(stale, ignore_errors=True)

    results = merge_parts(pairs, patients, expected, folder, out_dir,
                          save_predictions=save_predictions, figure=figure,
                          batch_size=batch_size, t_start=t_start)
    if not keep_parts:
        shutil.rmtree(root, ignore_errors=True)
    if verbose:
        from .run import summary_table

        console.print(summary_table(results))
        console.print(f"results: {escape(str(out_dir / 'results.json'))} ({len(patients)} "
                      f"patients, {len(todo)} run now)", highlight=False)
    return results


def _part_name(patient_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in patient_id)
    if safe != patient_id or safe.startswith("."):  # unambiguous either way
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(patient_id.encode()).hexdigest()[:8]}"
    return safe


def _check_same(parts: list[Results], pids: list[str]) -> None:
    ref = parts[0]

    def identity(r: Results) -> dict[str, Any]:
        seg = r.segmentation
        return {"protocol": r.protocol.model_dump(mode="json"),
                "manifest_sha256": r.dataset.manifest_sha256,
                "files": [f.model_dump(mode="json") for f in r.dataset.files],
                "method": r.method.model_dump(mode="json"),
                "metrics": {k: v.model_dump(mode="json") for k, v in r.metrics.items()},
                "segmenter": None if seg is None else seg.segmenter,
                "code": r.code.model_dump(mode="json")}

    want = identity(ref)
    for r, pid in zip(parts[1:], pids[1:], strict=True):
        got = identity(r)
        diff = sorted(k for k in want if want[k] != got[k])
        if diff:
            raise PartsError(f"the part of patient {pid!r} differs from patient {pids[0]!r} "
                             f"in {', '.join(diff)}: the data, the method or the code changed "
                             "between runs; rerun without resume (--no-resume)")


def merge_parts(pairs: Any, patients: list[str], expected: dict[str, list[int]],
                folder: dict[str, Path], out_dir: Path, *, save_predictions: bool = True,
                figure: bool = True, batch_size: int = 4, t_start: float | None = None) -> Results:
    """Merge the per-patient runs ``folder[pid]`` into ``out_dir`` as the serial run writes it
    (see the module docstring); ``expected[pid]``: the slice indices each part must hold."""
    from .metrics.registry import metrics_for_protocol
    from .run.calls import safe_name
    from .run.outputs import (
        FIGURE_SLICES,
        FigurePicker,
        FigureSlice,
        PredictionWriter,
        per_slice_csv,
        publish,
        write_figure,
    )
    from .run.provenance import code_record
    from .run.scoring import segmentation_record

    t_start = time.perf_counter() if t_start is None else t_start
    parts = [Results.load(folder[pid]) for pid in patients]
    if not parts:
        raise PartsError(f"{out_dir}: no patient to merge")
    _check_same(parts, patients)
    slices: list[SliceRecord] = []
    for pid, r in zip(patients, parts, strict=True):
        got = [(s.patient_id, s.slice_index) for s in r.per_slice]
        if got != [(pid, s) for s in expected[pid]]:
            raise PartsError(f"{folder[pid]}: holds slices {got[:3]}... but patient {pid!r} "
                             f"should have {len(expected[pid])} slices; rerun without resume")
        slices.extend(r.per_slice)
    ref = parts[0]

    comparisons: dict[str, ComparisonRecord] = {}
    for key, (scored, reference) in COMPARISONS.items():
        recs = [r.comparisons[key] for r in parts if key in r.comparisons]
        if not recs:  # not a comparison of this protocol
            continue
        n = sum(1 for s in slices if key in s.scores)
        avail = [c for c in recs if c.available]
        if n == 0 or not avail:  # the split-level reason, the same in every part
            comparisons[key] = recs[0].model_copy(update={"n_slices": 0})
            continue
        template = avail[0]
        summary = {m: summarize([s.scores[key][m] for s in slices if key in s.scores],
                                st.higher_is_better) for m, st in template.summary.items()}
        comparisons[key] = ComparisonRecord(scored=scored, reference=reference,
                                            available=True, n_slices=n, summary=summary,
                                            missing=dict(template.missing))

    segmentation = ref.segmentation
    if segmentation is not None:
        with_model = [r.segmentation for r in parts if r.segmentation and
                      r.segmentation.segmenter]
        if with_model:
            skeleton = SegmentationRecord(available=True, segmenter=with_model[0].segmenter,
                                          note=with_model[0].note)
            segmentation = segmentation_record(skeleton, slices)

    stage = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{time.time_ns()}"
    stage.mkdir(parents=True)
    try:
        picker = FigurePicker(FIGURE_SLICES)
        for pos, s in enumerate(slices):  # the serial run's choice, from the same keys
            picker.offer(FigureSlice(key=(s.metal_pixels, -pos), patient_id=s.patient_id,
                                      slice_index=s.slice_index, position=pos, images={}))
        chosen = {c.position: c for c in picker.chosen()} if figure else {}
        predictions = None
        writer = PredictionWriter(stage / "predictions"
                                   / f"{safe_name(ref.dataset.split)}-00000-of-00001.parquet")
        try:
            buf: list[tuple[str, int, np.ndarray]] = []
            for pos, (pid, sidx, pred) in enumerate(_iter_predictions(parts, patients,
                                                                      folder)):
                if pos in chosen:
                    chosen[pos].images["method"] = pred.astype(np.float32)
                if save_predictions:
                    buf.append((pid, sidx, pred))
                    if len(buf) == batch_size:  # the serial run's batches: the same bytes
                        writer.write([b[0] for b in buf], [b[1] for b in buf],
                                     np.stack([b[2] for b in buf]))
                        buf = []
            if buf:
                writer.write([b[0] for b in buf], [b[1] for b in buf],
                             np.stack([b[2] for b in buf]))
            if save_predictions:
                predictions = writer.close(stage)
        except BaseException:
            writer.abort()
            raise
        fig_path = None
        if chosen:
            rows_at = {pairs.slice_id(r): r for r in pairs.order}
            for c in chosen.values():
                b = pairs.batch([rows_at[(c.patient_id, c.slice_index)]])
                c.images["ordinary"] = b.input.ordinary[0, 0].numpy().copy()
                c.images["gsi"] = b.gsi_hu[0, 0].numpy().copy()
                if b.ideal_hu is not None and bool(b.has_ideal[0]):
                    c.images["ideal"] = b.ideal_hu[0, 0].numpy().copy()
            fig_path = write_figure(picker.chosen(), slices, ref.method.name,
                                     stage / "figure.png")
        atomic_write_text(stage / "per_slice.csv",
                          per_slice_csv(slices, list(metrics_for_protocol(
                              ref.protocol.version))))

        n = len(slices)
        prepare_s = sum(r.timing.prepare_s for r in parts)
        reduce_s = sum(r.timing.reduce_s for r in parts)
        results = Results(
            created_utc=datetime.now(timezone.utc),  # noqa: UP017 (py3.10 has no datetime.UTC)
            protocol=ref.protocol,
            dataset=ref.dataset.model_copy(update={"n_slices_scored": n}),
            method=ref.method,
            code=code_record(),
            hardware=ref.hardware,  # where the first patient was scored
            timing=TimingRecord(prepare_s=prepare_s, reduce_s=reduce_s,
                                score_s=sum(r.timing.score_s for r in parts),
                                total_s=time.perf_counter() - t_start,
                                reduce_ms_per_slice=1000.0 * reduce_s / max(n, 1),
                                reference_states_reused=sum(
                                    r.timing.reference_states_reused for r in parts),
                                reference_states_computed=sum(
                                    r.timing.reference_states_computed for r in parts)),
            metrics=ref.metrics,
            comparisons=comparisons,
            per_slice=slices,
            predictions=predictions,
            segmentation=segmentation,
            figure=None if fig_path is None else fig_path.relative_to(stage).as_posix(),
        )
        results.save(stage / "results.json")
        publish(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return results


def _iter_predictions(parts: list[Results], patients: list[str], folder: dict[str, Path]
                      ) -> Iterator[tuple[str, int, np.ndarray]]:
    """(patient, slice, (H, W) int16 HU) of every part in order, one part in memory."""
    import pyarrow.parquet as pq

    for pid, r in zip(patients, parts, strict=True):
        if r.predictions is None:
            raise PartsError(f"{folder[pid]}: the part has no predictions; rerun without "
                             "resume")
        t = pq.read_table(folder[pid] / r.predictions.path)
        col = t.column("prediction").combine_chunks()
        if hasattr(col, "storage"):  # read as the datasets extension type
            col = col.storage
        n = t.num_rows
        if n == 0:
            continue
        rows = col.flatten()  # (n * H) image rows of W values
        h, w = col.value_lengths()[0].as_py(), rows.value_lengths()[0].as_py()
        arr = np.asarray(rows.flatten(), dtype=np.int16).reshape(n, h, w)
        for p, s, a in zip(t.column("patient_id").to_pylist(),
                           t.column("slice_index").to_pylist(), arr, strict=True):
            yield str(p), int(s), a


__all__ = ["PartsError", "merge_parts", "parts_dir", "run_distributed"]
