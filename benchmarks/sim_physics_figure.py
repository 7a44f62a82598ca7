"""Figure: one bilateral-hip slice (ordinary, GSI, ideal) on the ideal scanner and with the
scanner physics (bowtie, scatter with the scanner's correction, focal-spot / detector blur).

Usage: python benchmarks/sim_physics_figure.py [--size 256] [--out docs/img/sim_physics_hip.png]

The patient is the first procedural hip patient (seed 0, 1, ...) with two CoCr femoral heads;
the slice is at the heads' centres. Both rows use the same noise seed. Window: level 50 HU,
width 800 HU (soft tissue, where the dark band between the heads shows).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from artifactgsi.phantoms import MATERIALS, make_patient
from artifactgsi.physics.geometry import FanBeamGeometry, ImageGrid
from artifactgsi.physics.scan import Scanner
from artifactgsi.scanners import DEFAULT_SCANNER, SCANNER_PROFILES


def bilateral_hip(max_seed: int = 200):
    """The first hip patient with implants on both sides."""
    for seed in range(max_seed):
        p = make_patient(seed, "hip_prosthesis")
        if len(p.describe()["implant_sides"]) == 2:
            return p
    raise RuntimeError(f"no bilateral hip among seeds 0..{max_seed - 1}")


def scan_slice(patient, size: int, physics: bool, fov_mm: float = 440.0) -> dict[str, np.ndarray]:
    """Ordinary, GSI and ideal images (HU) of the patient's slice through the heads."""
    prof = SCANNER_PROFILES[DEFAULT_SCANNER]
    sc = Scanner(FanBeamGeometry.scaled(size), prof.ordinary,
                 physics=prof.physics() if physics else None)
    z = patient.focus_z_mm
    frac, _ = patient.rasterize(z, sc.geom.object_grid, supersample=3)
    used = [m for m in range(len(MATERIALS)) if frac[m].any()]
    mats = tuple(MATERIALS[m] for m in used)
    lines = sc.project(frac[None, used])
    grid = ImageGrid((size, size), fov_mm / size)
    gen = torch.Generator().manual_seed(1)
    return {"ordinary": sc.ordinary(lines, mats, grid, gen)[0, 0].numpy(),
            "GSI 100 keV": sc.gsi(lines, mats, grid, gen)[0, 0].numpy(),
            "ideal 100 keV": sc.monochromatic(lines, mats, grid)[0, 0].numpy()}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("docs/img/sim_physics_hip.png"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    patient = bilateral_hip()
    rows = {}
    for physics in (False, True):
        t0 = time.perf_counter()
        rows[physics] = scan_slice(patient, args.size, physics)
        print(f"{'scanner physics' if physics else 'ideal scanner'}: "
              f"{time.perf_counter() - t0:.1f} s")
    names = list(rows[False])
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
    for r, physics in enumerate((False, True)):
        for c, name in enumerate(names):
            ax = axes[r, c]
            ax.imshow(rows[physics][name], cmap="gray", vmin=50 - 400, vmax=50 + 400)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
        axes[r, 0].set_ylabel("ideal scanner" if not physics else
                              "bowtie + scatter + blur", fontsize=11)
    fig.suptitle(f"Bilateral CoCr hip (patient seed {patient.seed}), {args.size} px, "
                 "W 800 / L 50 HU", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
