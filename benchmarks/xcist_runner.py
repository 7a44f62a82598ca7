"""Run XCIST (``gecatsim``) scans described by a JSON job file; the XCIST side of
``benchmarks/validate_simulator.py``.

Usage (inside the XCIST virtual environment, which ``make validate-sim`` creates):
    .venv-xcist/bin/python benchmarks/xcist_runner.py JOB.json

This file imports only numpy and gecatsim (never the project), so it runs in an environment
that has neither torch nor the project. The job file holds ``workdir`` (XCIST search path with
``material/``, ``spectrum/``, ``bowtie/``, ``phantom/`` subfolders written by the validation
script) and a list of ``scans``; each scan writes ``<workdir>/out/<name>.npz`` with ``prep``
(views x columns, log after XCIST's own corrections), ``scan`` and ``air`` (raw signals) and
``photons_centre`` (air-scan photons of the central column).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import numpy as np


def _kernel_module(workdir: str, col_mm: float, rows: int) -> str:
    """Write a scatter-kernel callback for ``feval``: XCIST's own kernel (tabulated for
    1 mm x 1 mm cells), summed over its ``rows`` central rows and resampled to ``col_mm``
    columns, so that a one-row scan of an object uniform along z gets the scatter that the
    central row of a ``rows``-row detector gets.

    XCIST's scatter model convolves the view as (columns, rows), its correction as (rows,
    columns); with one row the first reads the kernel's column ``c`` and the second its row
    ``c``. The kernel returned is a cross holding the same profile in both, so both use the
    model's kernel across the columns."""
    name = f"agsi_kernel_{int(round(col_mm * 1000))}_{rows}"
    code = f'''
import numpy as np
from gecatsim.pyfiles.Scatter_ConvolutionModel import get_scatter_kernel


def {name}(cfg):
    h = get_scatter_kernel().astype(np.float64)  # (49 columns, 65 rows), 1 mm cells, sum 1
    c0 = (h.shape[1] - 1) // 2
    lo = c0 - {rows} // 2
    col = h[:, max(0, lo): lo + {rows}].sum(1)  # the z-integral seen by the central row
    x1 = np.arange(h.shape[0]) - (h.shape[0] - 1) / 2  # mm
    cdf = np.concatenate([[0.0], np.cumsum(col)])
    edges1 = np.concatenate([x1 - 0.5, [x1[-1] + 0.5]])
    n = int(np.ceil(x1[-1] / {col_mm})) + 1
    x2 = np.arange(-n, n + 1) * {col_mm}
    e2 = np.concatenate([x2 - {col_mm} / 2, [x2[-1] + {col_mm} / 2]])
    k = np.diff(np.interp(e2, edges1, cdf))  # cell integrals of the 1 mm kernel
    cross = np.zeros((k.size, k.size))
    cross[:, n] = k
    cross[n, :] = k
    return cross.astype(np.float32)
'''
    path = os.path.join(workdir, f"{name}.py")
    with open(path, "w") as f:
        f.write(code)
    return name


def run_scan(spec: dict, workdir: str) -> None:
    import gecatsim as xc
    from gecatsim.pyfiles.CommonTools import load_C_lib, my_path, rawread

    my_path.add_search_path(workdir)
    ct = xc.CatSim()
    out = os.path.join(workdir, "out", spec["name"])
    ct.resultsName = out
    # Phantom: analytic objects (exact, no voxels).
    ct.phantom.callback = "Phantom_Analytic"
    ct.phantom.projectorCallback = "C_Projector_Analytic"
    ct.phantom.filename = spec["phantom"]
    ct.phantom.projectorNumThreads = 1
    # Geometry: one row of a third-generation curved detector, no quarter offset.
    g = spec["geometry"]
    ct.scanner.sid, ct.scanner.sdd = g["sid_mm"], g["sdd_mm"]
    ct.scanner.detectorColsPerMod = 1
    ct.scanner.detectorRowsPerMod = 1
    ct.scanner.detectorRowCount = 1
    ct.scanner.detectorColCount = g["cols"]
    ct.scanner.detectorColSize = g["col_mm"]
    ct.scanner.detectorRowSize = g.get("row_mm", 1.0)
    ct.scanner.detectorColOffset = 0.0
    ct.scanner.detectorRowOffset = 0.0
    ct.scanner.detectorColFillFraction = 1.0
    ct.scanner.detectorRowFillFraction = 1.0
    # Detector: no prefilter, absorbs every photon (as ArtifactGSI-Sim's).
    ct.scanner.detectorPrefilter = []
    ct.scanner.detectorDepth = 100.0
    ct.scanner.detectionGain = 1.0
    ct.scanner.eNoise = spec["e_noise"]
    ct.scanner.focalspotShape = "Uniform"
    ct.scanner.focalspotWidth = max(spec["focal_spot_mm"], 1e-3)
    ct.scanner.focalspotLength = max(spec["focal_spot_mm"], 1e-3)
    ct.scanner.targetAngle = 7.0
    # Protocol.
    views = g["views"]
    ct.protocol.viewsPerRotation = views
    ct.protocol.viewCount = spec.get("view_count", views)
    ct.protocol.startViewId = 0
    ct.protocol.stopViewId = ct.protocol.viewCount - 1
    ct.protocol.rotationTime = 1.0
    ct.protocol.startAngle = spec.get("start_angle_deg", 0.0)
    ct.protocol.rotationDirection = spec.get("rotation_direction", 1)
    ct.protocol.mA = spec["mA"]
    ct.protocol.spectrumFilename = spec["spectrum"]
    ct.protocol.spectrumUnit_mm = 1
    ct.protocol.spectrumUnit_mA = 1
    ct.protocol.bowtie = spec["bowtie"] or []
    ct.protocol.flatFilter = []  # in the spectrum already
    ct.protocol.maxPrep = -1
    ct.protocol.scanTypes = [1, 1, 1, 1]
    # Physics.
    ph = ct.physics
    ph.energyCount = spec.get("energy_count", 40)
    ph.colSampleCount = spec["detector_subsamples"]
    ph.rowSampleCount = 1
    ph.srcXSampleCount = spec["focal_subsamples"]
    ph.srcYSampleCount = 1
    ph.viewSampleCount = 1
    ph.enableQuantumNoise = int(spec["noise"])
    ph.enableElectronicNoise = int(spec["noise"])
    ph.scatterCallback = "Scatter_ConvolutionModel" if spec["scatter"] else ""
    if spec["scatter"]:
        ph.scatterKernelCallback = _kernel_module(workdir, g["col_mm"], spec["scatter_rows"])
        sys.path.insert(0, workdir)
        ph.scatterScaleFactor = 1.0
    ph.callback_pre_log = "Scatter_Correction" if spec["scatter"] and spec["scatter_correction"] \
        else ""
    ph.scatterCorrectionScaleFactor = 1.0
    ph.scatterCorrectionSaveView = 0
    if spec.get("bhc_mu_per_cm"):
        ph.callback_post_log = "Prep_BHC_Accurate"
        ph.EffectiveMu = spec["bhc_mu_per_cm"]
        ph.BHC_poly_order = 5
        ph.BHC_max_length_mm = 600
        ph.BHC_length_step_mm = 10
        # XCIST fits its per-column water correction with 60 air scans through water; the
        # fit depends only on the beam and the detector, so it is made once and reused.
        key = {k: spec[k] for k in ("geometry", "spectrum", "bowtie", "focal_spot_mm",
                                    "focal_subsamples", "detector_subsamples", "bhc_mu_per_cm",
                                    "energy_count")}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        cache = os.path.join(workdir, f"bhc-{digest}.npy")
        if not os.path.exists(cache):
            from gecatsim.pyfiles.Prep_BHC_Accurate import gen_BHC_vec

            cfg = ct.air_scan(doPrint=False)
            np.save(cache, gen_BHC_vec(cfg))
        ph.BHC_vec_fname = cache
    else:
        ph.callback_post_log = ""
    seed = int(spec.get("seed", 0))
    np.random.seed(seed)  # noqa: NPY002 -- XCIST draws its electronic noise from it
    clib = load_C_lib()
    clib.setall(seed * 10 + 10, seed + 1)
    ct.do_prep = 1
    t0 = time.perf_counter()
    ct.run_all()
    nv, nc = ct.protocol.viewCount, g["cols"]
    prep = rawread(out + ".prep", [nv, 1, nc], "float")[:, 0, :]
    scan = rawread(out + ".scan", [nv, 1, nc], "float")[:, 0, :]
    air = rawread(out + ".air", [1, 1, nc], "float")[0, 0]
    np.savez(out + ".npz", prep=prep, scan=scan, air=air,
             seconds=time.perf_counter() - t0)
    for ext in (".prep", ".scan", ".air", ".offset"):
        if os.path.exists(out + ext):
            os.remove(out + ext)


def main() -> None:
    job = json.load(open(sys.argv[1]))
    workdir = job["workdir"]
    os.makedirs(os.path.join(workdir, "out"), exist_ok=True)
    for spec in job["scans"]:
        done = os.path.join(workdir, "out", spec["name"] + ".npz")
        if os.path.exists(done):
            continue
        print(f"XCIST: {spec['name']}", flush=True)
        run_scan(spec, workdir)


if __name__ == "__main__":
    main()
