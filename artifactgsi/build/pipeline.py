"""The build driver: output folder rules, the pseudonymisation key, the patients (one task each,
on Dask workers if asked: :mod:`artifactgsi.workers`), resume from the cache, then
:func:`~artifactgsi.build.merge.finish`."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from .. import settings as _settings
from ..dicom_deid import pseudonym
from ..fileio import write_text_atomic
from ..register import RegistrationConfig
from ..schema import METAL_THRESHOLD_HU, PatientRecord
from ..workers import check_workers, run_tasks, uses_cluster
from . import patient as _patient
from .common import KEY_BYTES, WORK_DIR, WORK_FORMAT, BuildError, BuildReport, BuildSettings
from .merge import finish
from .raw_manifest import RawPatient, assign_splits, read_raw_manifest, unlisted_folders

#: Optional file of a raw tree describing how it was simulated (written by
#: ``artifactgsi simulate``); the card quotes it in a "Simulation" section.
SIMULATION_FILENAME = "simulation.json"


def _load_key(work: Path, secret: bytes | None, resume: bool, fingerprint: str
              ) -> tuple[bytes, int]:
    """Prepare ``work`` and return (key, number of cached patients usable)."""
    state_path = work / "state.json"
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("format") != WORK_FORMAT or state.get("fingerprint") != fingerprint:
            raise BuildError(f"{work}: the cached build used other raw data or settings; "
                             "rerun without resume (or with the same settings)")
        if secret is None:
            if not (work / "secret").is_file():
                raise BuildError(f"{work}: the interrupted build used a secret of yours; pass "
                                 "the same secret to resume it")
            key = (work / "secret").read_bytes()
        else:
            key = secret
        check = hmac.new(key, b"artifactgsi-key-check", hashlib.sha256).hexdigest()
        if check != state.get("key_check"):
            raise BuildError(f"{work}: the secret differs from the interrupted build's; pass "
                             "the same secret or rerun without resume")
        shutil.rmtree(work / "stage", ignore_errors=True)
        return key, len(list((work / "patients").glob("*.json")))
    if work.exists():
        shutil.rmtree(work)
    (work / "patients").mkdir(parents=True)
    key = secret if secret is not None else secrets.token_bytes(KEY_BYTES)
    if secret is None:
        fd = os.open(work / "secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    state = {"format": WORK_FORMAT, "fingerprint": fingerprint,
             "key_check": hmac.new(key, b"artifactgsi-key-check", hashlib.sha256).hexdigest()}
    write_text_atomic(state_path, json.dumps(state))
    return key, 0


def _check_out(out: Path, overwrite: bool) -> list[Path]:
    """Entries of a previous build to replace at commit; :class:`BuildError` if ``out`` holds
    anything else."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: exists and is not a folder")
    entries = [p for p in out.iterdir() if p.name != WORK_DIR] if out.exists() else []
    if not entries:
        return []
    manifest = out / _settings.MANIFEST_FILENAME
    is_build = False
    if manifest.is_file():
        try:
            is_build = json.loads(manifest.read_text()).get("format") == _settings.MANIFEST_FORMAT
        except (json.JSONDecodeError, UnicodeDecodeError):
            is_build = False
    if not overwrite or not is_build:
        what = "a previous build" if is_build else "other files"
        hint = "pass overwrite=True (--overwrite) to replace it" if is_build else \
            "choose an empty or new folder"
        raise BuildError(f"{out}: not empty ({what}: "
                         f"{', '.join(sorted(p.name for p in entries)[:5])}); {hint}")
    return entries


def read_simulation(raw: Path) -> dict[str, Any] | None:
    """``RAW/simulation.json`` (how a simulated raw tree was made), or ``None``."""
    path = Path(raw) / SIMULATION_FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BuildError(f"{path}: not valid JSON ({err}); delete it or simulate again") from None
    if not isinstance(data, dict):
        raise BuildError(f"{path}: must hold a JSON object")
    return data


def build_dataset(raw: Path, out: Path, workers: int = 1, resume: bool = False,
                  secret: bytes | None = None, *, seed: int = 0, test_fraction: float = 0.2,
                  metal_threshold_hu: float = METAL_THRESHOLD_HU,
                  registration: RegistrationConfig | None = None, rows_per_shard: int = 256,
                  license: str = "cc-by-4.0", pretty_name: str = "ArtifactGSI",
                  overwrite: bool = False, keep_work: bool = False, console=None,
                  scheduler: str | None = None) -> BuildReport:
    """Build the dataset in ``out`` from the raw tree ``raw``; see :mod:`artifactgsi.build`.

    Args:
        raw: raw layout folder (``manifest.csv`` + one folder per patient).
        out: output folder; must be new or empty (or hold only an interrupted build's
            ``.work`` with ``resume``, or a previous build with ``overwrite``).
        workers: patient processes in parallel on a local Dask cluster (each
            single-threaded; they exit if this process dies); 1 = in this process.
        scheduler: a running Dask scheduler's address or scheduler file: the patients run
            on its workers, which must see ``raw`` and ``out`` at the same paths. Any
            number of workers gives the same bytes (:mod:`artifactgsi.workers`).
        resume: reuse the patients cached in ``out/.work`` by an interrupted build with the
            same raw data and settings.
        secret: pseudonymisation key (bytes); default a random one for this build (then two
            builds give different pseudonyms; pass a secret for reproducible ids).
        seed, test_fraction: the patient-level train/test split.
        metal_threshold_hu: Eq. 8 threshold of ``metal_mask``.
        registration: slice matching / registration settings.
        rows_per_shard: rows per Parquet file (row groups of 16 rows).
        license, pretty_name: card metadata.
        overwrite: replace a previous build in ``out``.
        keep_work: keep ``out/.work`` (caches, and a random secret) after success.
        console: a ``rich`` console for progress and warnings (default: stderr). Warnings
            are printed once, there, and returned in the report.

    Raises:
        BuildError, DicomError, RegistrationError: naming the file / patient and the problem;
        ``out`` then holds no shard (only ``.work`` with finished patients, for ``resume``).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    raw, out = Path(raw), Path(out)
    console = console or Console(stderr=True)
    if isinstance(workers, int) and workers < 1:
        raise BuildError(f"workers must be >= 1, got {workers}")
    check_workers(workers, scheduler)
    if rows_per_shard < 1:
        raise BuildError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if secret is not None and (not isinstance(secret, bytes | bytearray) or not secret):
        raise BuildError("secret must be non-empty bytes")
    cfg = BuildSettings(seed=seed, test_fraction=test_fraction,
                        metal_threshold_hu=float(metal_threshold_hu),
                        registration=registration or RegistrationConfig(),
                        rows_per_shard=rows_per_shard, license=license,
                        pretty_name=pretty_name)
    patients = read_raw_manifest(raw)
    warnings = [f"{d}: a patient folder that manifest.csv does not list; it is not built (add "
                "a line for it to build it)" for d in unlisted_folders(raw, patients)]
    splits = assign_splits(patients, seed, test_fraction)
    simulation = read_simulation(raw)
    old_entries = _check_out(out, overwrite)
    created_out = not out.exists()
    work = out / WORK_DIR
    fingerprint = cfg.fingerprint((raw / "manifest.csv").read_bytes())
    key, _ = _load_key(work, None if secret is None else bytes(secret), resume, fingerprint)

    t0 = time.perf_counter()
    records: dict[str, PatientRecord] = {}
    todo: list[RawPatient] = []
    for p in patients:
        cached = _patient.load_cached(work, pseudonym(key, p.patient_id)) if resume else None
        if cached is not None and cached.inputs == _patient.inputs_fingerprint(p.folder):
            records[p.patient_id] = cached
            continue
        todo.append(p)
    resumed = len(records)
    try:
        with Progress(TextColumn("[bold]build"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} patients"), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console,
                      transient=False) as prog:
            task = prog.add_task("", total=len(patients), completed=resumed)
            if not uses_cluster(workers, scheduler):
                for p in todo:
                    prog.update(task, description=escape(p.patient_id))
                    # looked up at call time: tests interrupt a build by patching it
                    records[p.patient_id] = _patient.process_patient(p, key, cfg, work)
                    prog.advance(task)
            else:
                def done(i: int, rec: PatientRecord) -> None:
                    records[todo[i].patient_id] = rec
                    prog.update(task, description=escape(todo[i].patient_id))
                    prog.advance(task)

                # The key travels to the workers with each task (use TLS or a trusted
                # network for a remote cluster); the records come back, the arrays stay in
                # work/patients.
                run_tasks(_patient.process_in_worker,
                          [(p, key, cfg, str(work)) for p in todo],
                          [p.patient_id for p in todo], workers=workers,
                          scheduler=scheduler, on_done=done)
                # a worker killed mid-task leaves a temporary file; its task ran again
                for stale in (work / "patients").glob(".*.tmp*"):
                    stale.unlink(missing_ok=True)
        seconds_processing = time.perf_counter() - t0
        report = finish(patients, records, splits, cfg, raw, out, work, old_entries, warnings,
                        console, simulation)
    except BaseException:
        shutil.rmtree(work / "stage", ignore_errors=True)  # no partial shard stays behind
        cached_files = list((work / "patients").glob("*.json")) if work.exists() else []
        if cached_files:
            console.print(f"[yellow]build stopped[/]: {len(cached_files)} patients are cached "
                          f"in {escape(str(work))}; fix the problem and rerun with resume to "
                          "continue")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if created_out and out.exists() and not any(out.iterdir()):
                out.rmdir()
        raise
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    n_slices = sum(records[p.patient_id].n_ordinary for p in todo)
    report.seconds = time.perf_counter() - t0
    report.slices_per_s = n_slices / seconds_processing if todo and seconds_processing else 0.0
    report.resumed_patients = resumed
    return report
