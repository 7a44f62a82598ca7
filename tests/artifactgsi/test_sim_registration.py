"""Simulator -> builder: the registration recovers the simulator's known patient motion and
the slice matching finds the true slice correspondence (truth.json), on physics-simulated
ordinary / GSI series."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from artifactgsi.build import build_dataset
from artifactgsi.dicom import pseudonym
from artifactgsi.physics.geometry import ImageGrid
from artifactgsi.register import apply_affine, grid_points
from artifactgsi.simulate import SimConfig, plan_patients, simulate_dataset

CFG = SimConfig(patients=3, slices=8, size=96, seed=5, clean_patients=0, supersample=2)
SECRET = b"test-secret"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("simreg")
    simulate_dataset(CFG, root / "raw")
    build_dataset(root / "raw", root / "built", secret=SECRET)
    return root / "raw", root / "built"


def _rows(built: Path) -> list[dict]:
    rows = []
    for f in sorted((built / "pairs").glob("*.parquet")):
        rows += pq.read_table(f, columns=["patient_id", "slice_index", "ordinary_slice_index",
                                          "affine", "gsi"]).to_pylist()
    return rows


@pytest.mark.slow
def test_registration_recovers_the_simulated_motion(built):
    raw, out = built
    rows = _rows(out)
    by_pseudonym = {pseudonym(SECRET, p.patient_id): p for p in plan_patients(CFG)}
    matched = exact = 0
    errors_px = []
    for r in rows:
        plan = by_pseudonym[r["patient_id"]]
        truth = json.loads((raw / plan.patient_id / "truth.json").read_text())
        matched += 1
        exact += truth["gsi_slice_for_ordinary"][r["ordinary_slice_index"]] == r["slice_index"]
        g = truth["gsi_grid"]
        grid = ImageGrid(tuple(g["shape"]), g["pixel_mm"], tuple(g["centre_mm"]))
        pts = grid_points(grid)
        body = np.asarray(r["gsi"], np.int16).reshape(-1) > -500
        pose = truth["ordinary_pose"]
        a = math.radians(pose["angle_deg"])
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        # a GSI (patient) point p is seen in the ordinary scan at R p + t
        expected = pts[body] @ rot.T + np.array([pose["tx_mm"], pose["ty_mm"]])
        got = apply_affine(np.asarray(r["affine"]), pts[body])
        errors_px.append(np.linalg.norm(got - expected, axis=1).mean() / grid.pixel_mm)
    assert matched >= 0.8 * CFG.patients * CFG.slices  # overlap minus the z-shifted ends
    assert exact / matched > 0.98, (exact, matched)
    assert float(np.mean(errors_px)) < 0.5, np.round(errors_px, 2)
