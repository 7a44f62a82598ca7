"""Tiny synthetic raw trees (the raw layout) for tests and benchmarks of the DICOM / registration /
build pipeline, in milliseconds rather than the minutes of the physics simulator.

An analytic phantom is evaluated in patient coordinates (mm): a body ellipse with a fat
layer, two femur-like bones and a vertebra whose size and position change along z, a gas
bubble circling with z (so that every slice is distinct), and optionally a metal rod. The
"ordinary" series sees the patient moved by a known rigid pose and z shift, on its own field
of view, with noise and radial streaks around the metal; the "GSI" series sees it unmoved on
another field of view, with less noise and lower metal HU. Pixels average 3 x 3 sub-samples
(partial volume), so sub-pixel motion is visible to registration. Header values are
patient-like on purpose (``DOE^JANE`` ...) so tests can check that none reaches a dataset.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .physics.geometry import ImageGrid

IDENTITY = {
    "patient_name": "DOE^JANE",
    "birth_date": "19700101",
    "sex": "F",
    "study_date": "20240315",
    "study_time": "101500",
    "institution": "St Example Hospital",
    "referring_physician": "HOUSE^GREGORY^^DR",
    "accession_number": "ACC-998877",
}
METAL_CENTRE_MM = (45.0, 10.0)


@dataclass
class SyntheticPatient:
    """One patient of a synthetic raw tree (angles in degrees, lengths in mm)."""

    patient_id: str
    implant_type: str = "hip_prosthesis"
    body_region: str = "hip"
    split_hint: str = ""
    with_gsi: bool | None = None  # default: implant patients outside the generalization set
    pose: tuple[float, float, float] = (1.5, 3.0, -2.0)  # angle_deg, tx_mm, ty_mm
    z_shift_slices: int = 0  # the ordinary table range starts this many slices later
    z_motion_mm: float = 0.0  # the patient moved this far along +z between the scans
    gsi_fov_mm: float = 230.0
    gsi_centre_mm: tuple[float, float] = (4.0, -3.0)
    ordinary_fov_mm: float = 250.0
    ordinary_centre_mm: tuple[float, float] = (-2.0, 1.0)
    header_patient_id: str = "ID-123456"
    labels: bool = True
    ideal: bool = True

    @property
    def has_gsi(self) -> bool:
        if self.with_gsi is not None:
            return self.with_gsi
        return self.implant_type != "none" and self.split_hint != "generalization"


def _disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def phantom(x: np.ndarray, y: np.ndarray, z: float, metal: bool, metal_hu: float = 3000.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """(HU, label) of the phantom at patient points ``(x, y)`` mm on the plane ``z`` mm.

    Labels follow artifactgsi.schema.LABEL_NAMES: 1 metal, 4 left femur (patient left = +x),
    5 right femur.
    """
    hu = np.full(x.shape, -1000.0)
    lab = np.zeros(x.shape, np.uint8)
    body = (x / 95.0) ** 2 + (y / 75.0) ** 2 <= 1.0
    hu[body] = -100.0  # fat
    hu[(x / 85.0) ** 2 + (y / 65.0) ** 2 <= 1.0] = 40.0  # muscle
    for side, label in ((1.0, 4), (-1.0, 5)):
        cx, cy = side * 45.0, 10.0 + 4.0 * math.sin(z / 23.0)
        r = 13.0 + 4.0 * math.sin(z / 17.0 + side)
        cortex = _disc(x, y, cx, cy, r)
        hu[cortex] = 1300.0
        hu[_disc(x, y, cx, cy, 0.6 * r)] = 250.0
        lab[cortex] = label
    hu[_disc(x, y, 5.0 * math.sin(z / 29.0), 45.0, 9.0 + 2.0 * math.cos(z / 13.0))] = 700.0
    gx, gy = 25.0 * math.cos(z / 9.0), -20.0 + 12.0 * math.sin(z / 9.0)
    hu[_disc(x, y, gx, gy, 7.0)] = -850.0  # gas, circling along z
    if metal:
        m = _disc(x, y, *METAL_CENTRE_MM, 4.5 + 1.5 * math.sin(z / 11.0))
        hu[m] = metal_hu
        lab[m] = 1
    return hu, lab


def render(grid: ImageGrid, z_mm: Sequence[float], metal: bool, metal_hu: float = 3000.0,
           pose: tuple[float, float, float] = (0.0, 0.0, 0.0), noise_sd: float = 0.0,
           streak_hu: float = 0.0, rng: np.random.Generator | None = None,
           supersample: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(S, H, W)`` float HU and uint8 labels of the phantom seen by a scan.

    The scan sees the patient at ``pose``: scanner point ``q = R(angle) p + t`` for patient
    point ``p`` (the simulator's convention), so pixel centres ``q`` sample ``p = R^T (q - t)``.
    Labels are taken at pixel centres; HU average ``supersample``^2 sub-samples.
    """
    h, w = grid.shape
    off = ((np.arange(supersample) + 0.5) / supersample - 0.5) * grid.pixel_mm
    xs = (grid.x_mm().numpy()[:, None] + off[None, :]).ravel()
    ys = (grid.y_mm().numpy()[:, None] + off[None, :]).ravel()
    qx, qy = np.meshgrid(xs, ys)
    a = math.radians(pose[0])
    c, s = math.cos(a), math.sin(a)
    dx, dy = qx - pose[1], qy - pose[2]
    px, py = c * dx + s * dy, -s * dx + c * dy
    cx, cy = grid.x_mm().numpy(), grid.y_mm().numpy()
    qcx, qcy = np.meshgrid(cx, cy)
    dcx, dcy = qcx - pose[1], qcy - pose[2]
    pcx, pcy = c * dcx + s * dcy, -s * dcx + c * dcy
    # the metal's position in scanner coordinates (streaks are a scanner-frame artifact)
    mx = c * METAL_CENTRE_MM[0] - s * METAL_CENTRE_MM[1] + pose[1]
    my = s * METAL_CENTRE_MM[0] + c * METAL_CENTRE_MM[1] + pose[2]
    vols, labs = [], []
    for z in z_mm:
        hu, _ = phantom(px, py, float(z), metal, metal_hu)
        hu = hu.reshape(h, supersample, w, supersample).mean(axis=(1, 3))
        _, lab = phantom(pcx, pcy, float(z), metal, metal_hu)
        if metal and streak_hu:
            r = np.hypot(qcx - mx, qcy - my)
            theta = np.arctan2(qcy - my, qcx - mx)
            body = hu > -500
            hu = hu + body * streak_hu * np.cos(6 * theta) * np.exp(-r / 60.0) * (r > 6)
        if noise_sd and rng is not None:
            hu = hu + rng.normal(0.0, noise_sd, hu.shape)
        vols.append(hu)
        labs.append(lab)
    return np.stack(vols), np.stack(labs)


def write_synthetic_raw(raw: Path, patients: Sequence[SyntheticPatient], size: int = 64,
                        slices: int = 8, thickness_mm: float = 3.0, seed: int = 0,
                        z0_mm: float = -10.0) -> dict[str, dict]:
    """Write ``raw/manifest.csv`` and the patients' folders; returns each patient's truth.

    Truth per raw patient id: ``ordinary_pose`` (angle_deg, tx_mm, ty_mm; GSI point p is at
    ``R p + t`` in the ordinary series), ``z_motion_mm``, ``gsi_z_mm``, ``ordinary_z_mm``
    and ``gsi_slice_for_ordinary`` (``None`` where an ordinary slice has no GSI slice within
    half a slice), also written to ``truth.json``.
    """
    import SimpleITK as sitk

    from .dicom_write import SeriesMeta, write_ct_series

    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    truths = {}
    rows = []
    for k, p in enumerate(patients):
        rng = np.random.default_rng([seed, k])
        folder = raw / p.patient_id
        folder.mkdir(parents=True, exist_ok=True)
        z_g = z0_mm + thickness_mm * np.arange(slices)
        z_o = z_g + p.z_shift_slices * thickness_mm
        z_anat = z_o - p.z_motion_mm
        metal = p.implant_type != "none"
        grid_o = ImageGrid((size, size), p.ordinary_fov_mm / size, p.ordinary_centre_mm)
        grid_g = ImageGrid((size, size), p.gsi_fov_mm / size, p.gsi_centre_mm)
        ordinary, _ = render(grid_o, z_anat, metal, 8000.0, p.pose, noise_sd=15.0,
                             streak_hu=150.0, rng=rng)
        common = dict(IDENTITY, patient_id=p.header_patient_id,
                      study_uid=f"1.2.826.0.1.3680043.10.1010.{seed}.{k}.1",
                      frame_of_reference_uid=f"1.2.826.0.1.3680043.10.1010.{seed}.{k}.2",
                      manufacturer="GE MEDICAL SYSTEMS", model="Discovery CT750 HD",
                      slice_thickness_mm=thickness_mm, body_part="HIP")
        write_ct_series(np.rint(ordinary).astype(np.int16), z_o, grid_o,
                        SeriesMeta(**common, series_number=2, series_description="Routine",
                                   kvp=120.0, kev=None, convolution_kernel="STANDARD",
                                   series_uid=f"1.2.826.0.1.3680043.10.1010.{seed}.{k}.3"),
                        folder / "ordinary", overwrite=True)
        truth: dict = {"ordinary_pose": dict(zip(("angle_deg", "tx_mm", "ty_mm"), p.pose,
                                                 strict=True)),
                       "z_motion_mm": p.z_motion_mm, "ordinary_z_mm": z_o.tolist()}
        if p.has_gsi:
            gsi, labels = render(grid_g, z_g, metal, 3000.0, noise_sd=8.0, rng=rng)
            ideal, _ = render(grid_g, z_g, metal, 3000.0)
            write_ct_series(np.rint(gsi).astype(np.int16), z_g, grid_g,
                            SeriesMeta(**common, series_number=3,
                                       series_description="GSI MonoE 70keV", kvp=140.0,
                                       kev=70.0, convolution_kernel="STANDARD",
                                       series_uid=f"1.2.826.0.1.3680043.10.1010.{seed}.{k}.4"),
                            folder / "gsi", overwrite=True)
            for name, vol, dtype, wanted in (("labels", labels, np.uint8, p.labels),
                                             ("ideal", np.rint(ideal), np.int16, p.ideal)):
                if not wanted:
                    continue
                img = sitk.GetImageFromArray(vol.astype(dtype))
                x0, y0 = grid_g.origin_mm()
                img.SetOrigin((x0, y0, float(z_g[0])))
                img.SetSpacing((grid_g.pixel_mm, grid_g.pixel_mm, thickness_mm))
                sitk.WriteImage(img, str(folder / f"{name}.nii.gz"), useCompression=True)
            truth["gsi_z_mm"] = z_g.tolist()
            truth["gsi_slice_for_ordinary"] = [
                int(np.argmin(np.abs(z_g - z))) if np.abs(z_g - z).min() < 0.5 * thickness_mm
                else None for z in z_anat]
        (folder / "truth.json").write_text(json.dumps(truth, indent=1))
        truths[p.patient_id] = truth
        rows.append({"patient_id": p.patient_id, "implant_type": p.implant_type,
                     "body_region": p.body_region,
                     "scanner": "GE MEDICAL SYSTEMS Discovery CT750 HD",
                     "has_labels": int(p.has_gsi and p.labels), "split_hint": p.split_hint})
    with (raw / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return truths
