"""ArtifactGSI-Sim: simulate paired ordinary / GSI CT series of procedural patients and write
them in the raw layout of a hospital export (see docs/dataset.md).

Per implant patient ``RAW/<id>/`` holds ``ordinary/*.dcm`` (120 kVp, water beam-hardening
corrected FBP), ``gsi/*.dcm`` (virtual monochromatic image of a rapid 80/140 kVp switching
scan), ``labels.nii.gz`` and ``ideal.nii.gz`` (noise- and artifact-free monochromatic image at
the GSI keV) and ``clean.nii.gz`` (the same anatomy without its implant, ordinary protocol),
all three on the GSI grid, and ``truth.json`` (the applied patient motion between the two
scans, the reconstruction grids and the true slice correspondence; never written into DICOM).
Clean patients have only ``ordinary/``. ``RAW/manifest.csv`` lists the patients.

The two series differ as on a real scanner: the patient moves slightly between the scans
(in-plane rotation and shift, and a shift along z), and each series is reconstructed on its
own field of view and centre.

The settings and the patients' plans are :mod:`artifactgsi.sim_config`, one patient's
simulation :mod:`artifactgsi.sim_patient`; this module writes them and runs the dataset.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .fileio import staged_dir
from .physics.geometry import FanBeamGeometry
from .scanners import DEFAULT_SCANNER
from .schema import MANIFEST_COLUMNS

# The settings, the plans and one patient's simulation are re-exported (``X as X``): they
# lived in this module, and callers import them from here.
from .sim_config import IMPLANT_CYCLE as IMPLANT_CYCLE
from .sim_config import MAX_PATIENTS as MAX_PATIENTS
from .sim_config import MAX_SIZE_PX as MAX_SIZE_PX
from .sim_config import MAX_SLICES as MAX_SLICES
from .sim_config import MAX_THICKNESS_MM as MAX_THICKNESS_MM
from .sim_config import SCANNER_MANUFACTURER as SCANNER_MANUFACTURER
from .sim_config import SCANNER_MODEL as SCANNER_MODEL
from .sim_config import SIM_SPLIT_HINTS as SIM_SPLIT_HINTS
from .sim_config import PatientPlan as PatientPlan
from .sim_config import PatientResult as PatientResult
from .sim_config import SimConfig as SimConfig
from .sim_config import check_device as check_device
from .sim_config import physics_record as physics_record
from .sim_config import plan_patients as plan_patients
from .sim_patient import _grid_json as _grid_json
from .sim_patient import _slice_positions as _slice_positions
from .sim_patient import make_scanners as make_scanners
from .sim_patient import simulate_patient as simulate_patient


def to_hu_int16(img: np.ndarray) -> np.ndarray:
    """Round to int16 HU within the CT range [-1024, 31743] (12/15-bit stored values)."""
    return np.clip(np.rint(img), -1024, 31743).astype(np.int16)


def write_patient(res: PatientResult, cfg: SimConfig, raw: Path) -> Path:
    """Write one patient's folder atomically (a temporary folder renamed at the end)."""
    import SimpleITK as sitk

    from .dicom_write import SeriesMeta, write_ct_series

    plan = res.plan
    final = raw / plan.patient_id
    tmp = raw / f".tmp-{plan.patient_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with staged_dir(tmp, final):
        study_uid = _uid(cfg.seed, plan.index, "study")
        frame_uid = _uid(cfg.seed, plan.index, "frame")
        common = dict(plan.identity, study_uid=study_uid, frame_of_reference_uid=frame_uid,
                      slice_thickness_mm=cfg.thickness_mm, body_part=_body_part(res.body_region))
        profile, protocol = cfg.profile(), cfg.ordinary_protocol()
        write_ct_series(to_hu_int16(res.ordinary), res.ordinary_z_mm, res.ordinary_grid,
                        SeriesMeta(**common, manufacturer=profile.manufacturer,
                                   model=profile.model, series_number=2,
                                   series_description=f"Routine {protocol.kvp:g}kVp",
                                   kvp=protocol.kvp, kev=None,
                                   convolution_kernel=profile.convolution_kernel,
                                   series_uid=_uid(cfg.seed, plan.index, "ordinary")),
                        tmp / "ordinary")
        if res.gsi is not None:
            kev = cfg.gsi.kev
            write_ct_series(to_hu_int16(res.gsi), res.gsi_z_mm, res.gsi_grid,
                            SeriesMeta(**common, manufacturer=SCANNER_MANUFACTURER,
                                       model=SCANNER_MODEL, series_number=3,
                                       series_description=f"GSI MonoE {kev:g}keV",
                                       kvp=cfg.gsi.kvp_high, kev=kev,
                                       convolution_kernel="STANDARD",
                                       series_uid=_uid(cfg.seed, plan.index, "gsi")),
                            tmp / "gsi")
            for name, vol, dtype in (("labels", res.labels, np.uint8),
                                     ("ideal", res.ideal, None), ("clean", res.clean, None)):
                arr = vol.astype(dtype) if dtype else to_hu_int16(vol)
                img = sitk.GetImageFromArray(arr)  # (S, H, W) -> x = W, y = H, z = S
                x0, y0 = res.gsi_grid.origin_mm()
                img.SetOrigin((x0, y0, float(res.gsi_z_mm[0])))
                img.SetSpacing((res.gsi_grid.pixel_mm, res.gsi_grid.pixel_mm, cfg.thickness_mm))
                sitk.WriteImage(img, str(tmp / f"{name}.nii.gz"), useCompression=True)
        truth = dict(res.truth, patient_id=plan.patient_id, implant_type=plan.implant_type,
                     body_region=res.body_region, phantom=res.description,
                     config_fingerprint=config_fingerprint(cfg))
        (tmp / "truth.json").write_text(json.dumps(truth, indent=1))
    return final


#: Settings added after the first release, left out of the fingerprint at their default
#: values, so that folders simulated before they existed still resume.
_LATER_DEFAULTS = {"scanner": DEFAULT_SCANNER, "split_hint": "", "implant_mix": None}
_LATER_ORDINARY_DEFAULTS = {"filter_al_mm": 3.0, "filter_cu_mm": 0.1}


def config_fingerprint(cfg: SimConfig) -> str:
    """sha256 of the settings that shape a patient's data (not the patient count)."""
    d = asdict(cfg)
    d["ordinary"] = asdict(cfg.ordinary_protocol())
    for k in ("patients", "clean_patients", "device", "batch", "preset"):
        d.pop(k)
    for k, v in _LATER_DEFAULTS.items():
        if d[k] == v:
            d.pop(k)
    for k, v in _LATER_ORDINARY_DEFAULTS.items():
        if d["ordinary"][k] == v:
            d["ordinary"].pop(k)
    # The scanner physics enter as the settings they use, so that changing a profile's bowtie,
    # scatter or blur changes the fingerprint; without them the ideal scanner's is unchanged.
    d.pop("scanner_physics")
    d.update(physics_record(cfg))
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]



def _uid(seed: int, index: int, what: str) -> str:
    """Deterministic DICOM UID of a simulated study / series / frame of reference."""
    from .dicom_write import uid_from

    return uid_from(f"artifactgsi-sim/{seed}/{index}/{what}")


def _body_part(region: str) -> str:
    return {"thoracic_spine": "TSPINE", "lumbar_spine": "LSPINE", "pelvis": "PELVIS",
            "hip": "HIP", "femur": "LEG", "knee": "KNEE"}.get(region, "")


#: File at the root of a simulated raw tree recording how it was made; the builder quotes it
#: in the dataset card.
SIMULATION_FILENAME = "simulation.json"


def simulation_record(cfg: SimConfig) -> dict:
    """The settings of a simulated raw tree (JSON-able; nothing identifying)."""
    return {
        "simulator": "ArtifactGSI-Sim",
        "config_fingerprint": config_fingerprint(cfg),
        "size_px": cfg.size, "slices": cfg.slices, "thickness_mm": cfg.thickness_mm,
        "scanner": cfg.scanner, "scanner_description": cfg.profile().description,
        "split_hint": cfg.split_hint,
        "preset": cfg.preset or None,
        "patients": cfg.patients, "clean_patients": cfg.clean_patients,
        "implant_mix": None if cfg.implant_mix is None else dict(zip(
            IMPLANT_CYCLE, cfg.implant_mix, strict=True)),
        "geometry": asdict(FanBeamGeometry.scaled(cfg.size)),
        "ordinary_geometry": asdict(cfg.profile().geometry(cfg.size)),
        "ordinary_protocol": asdict(cfg.ordinary_protocol()),
        "gsi_protocol": asdict(cfg.gsi),
        "gsi_metal_correction": asdict(cfg.gsi.metal_correction_setup()),
        **physics_record(cfg),
    }


def _write_simulation_record(raw: Path, cfg: SimConfig) -> None:
    from .fileio import write_text_atomic

    write_text_atomic(raw / SIMULATION_FILENAME,
                      json.dumps(simulation_record(cfg), indent=1, sort_keys=True) + "\n")


def _write_manifest(raw: Path, rows: list[dict]) -> None:
    tmp = raw / f".manifest.csv.tmp{os.getpid()}"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for r in sorted(rows, key=lambda r: r["patient_id"]):
            w.writerow(r)
    os.replace(tmp, raw / "manifest.csv")


def _manifest_row(cfg: SimConfig, plan: PatientPlan, body_region: str) -> dict:
    implant = plan.implant_type != "none"
    return {"patient_id": plan.patient_id, "implant_type": plan.implant_type,
            "body_region": body_region, "scanner": cfg.profile().scanner_label,
            "has_labels": int(implant and cfg.split_hint != "generalization"),
            "split_hint": cfg.split_hint if implant else "clean"}


def _run_one(args: tuple[SimConfig, PatientPlan, str]) -> dict:
    cfg, plan, raw = args
    torch.set_num_threads(1)  # one thread per worker process: no oversubscription
    res = simulate_patient(cfg, plan)
    write_patient(res, cfg, Path(raw))
    return _manifest_row(cfg, plan, res.body_region)


def simulate_dataset(cfg: SimConfig, raw: Path, workers: int = 1, resume: bool = True,
                     console=None, scheduler: str | None = None) -> dict:
    """Simulate the whole dataset into ``raw``; returns timing statistics.

    One task per patient (:func:`artifactgsi.workers.run_tasks`): in this process, on a
    local Dask cluster of ``workers`` processes, or on the Dask cluster at ``scheduler``
    (whose workers must see ``raw`` at the same path). Every patient depends only on the
    seed and its index and is written atomically, so any number of workers, in any order,
    writes the same bytes. Patients whose folder already exists with its ``truth.json`` are
    kept (``resume``): an interrupted run continues where it stopped and gives the same
    result.
    """
    from .workers import check_workers

    cfg.validate()
    check_workers(workers, scheduler)
    raw = Path(raw)
    # Folders this call creates are removed again if it fails before writing anything in them.
    created = [d for d in (raw, *raw.parents) if not d.exists()]
    try:
        raw.mkdir(parents=True, exist_ok=True)
        probe = raw / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        _remove_empty(created)
        raise ValueError(f"output folder {raw} is not writable: {e.strerror or e}") from None
    try:
        return _simulate_into(cfg, raw, workers, resume, console, scheduler)
    except BaseException:
        # Half-written patients of this run (also of worker processes ended by SIGTERM).
        _remove_partial(raw)
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders of ``folders`` (deepest first) that are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:  # not empty, or already gone: keep what is there
            break


def _remove_partial(raw: Path) -> None:
    """Delete temporary patient folders of interrupted or killed tasks (never complete)."""
    for stale in raw.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _simulate_into(cfg: SimConfig, raw: Path, workers: int, resume: bool, console,
                   scheduler: str | None = None) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .workers import run_tasks

    _remove_partial(raw)
    plans = plan_patients(cfg)
    rows, todo = [], []
    fingerprint = config_fingerprint(cfg)
    for p in plans:
        truth = raw / p.patient_id / "truth.json"
        if resume and truth.exists():
            t = json.loads(truth.read_text())
            if t.get("config_fingerprint") != fingerprint:
                raise ValueError(f"{truth}: this patient was simulated with other settings; "
                                 f"simulate into a new folder (or delete {raw})")
            rows.append(_manifest_row(cfg, p, t["body_region"]))
        else:
            todo.append(p)
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]simulate"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total} patients"), TimeRemainingColumn(), console=console,
                  transient=False) as prog:
        task = prog.add_task("patients", total=len(plans), completed=len(rows))
        prev = torch.get_num_threads()
        try:
            rows += run_tasks(_run_one, [(cfg, p, str(raw)) for p in todo],
                              [p.patient_id for p in todo], workers=workers,
                              scheduler=scheduler, on_done=lambda i, r: prog.advance(task))
        finally:
            torch.set_num_threads(prev)  # the serial path runs _run_one here
    # A worker killed mid-task leaves its temporary folder; its task was run again.
    _remove_partial(raw)
    _write_manifest(raw, rows)
    _write_simulation_record(raw, cfg)
    dt = time.perf_counter() - t0
    n_slices = sum(cfg.slices for _ in todo)
    return {"patients": len(plans), "simulated": len(todo), "seconds": dt,
            "slices_per_s": n_slices / dt if dt > 0 and todo else math.nan}
