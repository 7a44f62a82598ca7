"""Artifact level of the GSI virtual monochromatic image against keV, on ArtifactGSI-Sim
patients, beside the ordinary 120 kVp image; and soft-tissue contrast against keV.

For each implant patient (one slice through the implant), on the object grid:
- artifact = SD of (image - ideal image at the same keV) in the body within 40 mm of metal,
  metal itself excluded (dilated 3 px); the ordinary image is compared with the ideal image
  at its own effective energy (its clean, implant-free reconstruction stands in for it);
- contrast = mean HU of pure muscle minus pure fat, far from metal.

Usage: python benchmarks/bench_gsi_kev.py [--size 128] [--patients 6]
"""

from __future__ import annotations

import argparse
from dataclasses import replace  # noqa: E402  (kept near its use)

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from artifactgsi.phantoms import MATERIALS, make_patient
from artifactgsi.physics.geometry import FanBeamGeometry
from artifactgsi.physics.scan import Scanner
from artifactgsi.simulate import IMPLANT_CYCLE

KEVS = (60, 70, 80, 90, 100, 110, 120, 130, 140)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--patients", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(2)
    geom = FanBeamGeometry.scaled(args.size)
    sc = Scanner(geom)
    sc_plain = Scanner(geom, gsi_protocol=replace(sc.gsi_protocol, metal_correction="off"))
    sc_on = Scanner(geom, gsi_protocol=replace(sc.gsi_protocol, metal_correction="on"))
    grid = geom.object_grid
    yy, xx = np.meshgrid(grid.y_mm().numpy(), grid.x_mm().numpy(), indexing="ij")
    art = {k: [] for k in ("ordinary", *KEVS)}
    plain = {k: [] for k in KEVS}
    forced = {k: [] for k in KEVS}
    con = {k: [] for k in ("ordinary", *KEVS)}
    for i in range(args.patients):
        patient = make_patient(1000 + i, IMPLANT_CYCLE[i % 3])
        z = float(np.mean(patient.implant_z_range_mm))
        f_m, _ = patient.rasterize(z, grid)
        f_c, _ = patient.rasterize(z, grid, implant=False)
        stack = torch.stack([f_m, f_c])
        used = [m for m in range(len(MATERIALS)) if stack[:, m].any()]
        mats = tuple(MATERIALS[m] for m in used)
        lines = sc.project(stack[:, used])
        g = torch.Generator().manual_seed(i)
        f = f_m.numpy()
        metal = sum(f[MATERIALS.index(m)] for m in ("ti6al4v", "cocrmo", "steel316l")) > 0.5
        body = f.sum(0) > 0.5
        dist = ndimage.distance_transform_edt(~metal) * grid.pixel_mm
        ring = body & (dist > 3 * grid.pixel_mm) & (dist < 40)
        far = body & (dist > 60)
        muscle = far & (f[MATERIALS.index("soft_tissue")] > 0.99)
        fat = far & (f[MATERIALS.index("adipose")] > 0.99)
        ordinary = sc.ordinary(lines[:1], mats, grid, g)[0, 0].numpy()
        clean = sc.ordinary(lines[1:], mats, grid, g)[0, 0].numpy()
        art["ordinary"].append(np.std((ordinary - clean)[ring]))
        con["ordinary"].append(ordinary[muscle].mean() - ordinary[fat].mean())
        meas = sc.gsi_measurement(lines[:1], mats, g)
        for kev in KEVS:
            vmi = sc.vmi_image(meas, grid, kev)[0, 0].numpy()
            ideal = sc.monochromatic(lines[:1], mats, grid, kev)[0, 0].numpy()
            art[kev].append(np.std((vmi - ideal)[ring]))
            vmi_plain = sc_plain.vmi_image(meas, grid, kev)[0, 0].numpy()
            plain[kev].append(np.std((vmi_plain - ideal)[ring]))
            vmi_on = sc_on.vmi_image(meas, grid, kev)[0, 0].numpy()
            forced[kev].append(np.std((vmi_on - ideal)[ring]))
            con[kev].append(vmi[muscle].mean() - vmi[fat].mean())
    t = Table(title=f"GSI artifact level vs keV ({args.patients} patients, {args.size} px)")
    for c in ("image", "artifact SD (HU), default (auto)", "vs ordinary", "corr. off (HU)",
              "corr. on (HU)", "muscle - fat (HU)"):
        t.add_column(c, justify="right")
    ref = float(np.mean(art["ordinary"]))
    for k in ("ordinary", *KEVS):
        name = "ordinary 120 kVp" if k == "ordinary" else f"GSI {k} keV"
        a = float(np.mean(art[k]))
        p = "" if k == "ordinary" else f"{np.mean(plain[k]):.1f}"
        on = "" if k == "ordinary" else f"{np.mean(forced[k]):.1f}"
        t.add_row(name, f"{a:.1f}", f"{a / ref:.2f}", p, on, f"{np.nanmean(con[k]):.1f}")
    Console().print(t)
    t2 = Table(title="per patient: artifact SD (HU) of GSI, default (auto) / correction off")
    t2.add_column("patient")
    t2.add_column("ordinary", justify="right")
    for kev in (90, 100, 110, 120):
        t2.add_column(f"{kev} keV", justify="right")
    for i in range(args.patients):
        cells = [f"{art[k][i]:.0f} / {plain[k][i]:.0f}" for k in (90, 100, 110, 120)]
        t2.add_row(f"{i}: {IMPLANT_CYCLE[i % 3]}", f"{art['ordinary'][i]:.0f}", *cells)
    Console().print(t2)


if __name__ == "__main__":
    main()
